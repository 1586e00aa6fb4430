"""A family of T-UNet sizes for scaling experiments: the base recipe (``configs/audioldm2_base.py``) with the UNet's
width and depth multiplied. Only the UNet changes; the VAE, AudioMAE, T5, CLAP, GPT-2 and vocoder stay base's, so
every size trains on the same latents and conditions.

    python train.py --config configs/scaling.py:ldm,preset=s,data=/data/train.jsonl,pretrained=/ckpt/audioldm2 \\
        --workdir runs/scaling/s/ldm
    python train.py --config configs/scaling.py:ldm,width=0.5,depth=2,steps=200000,data=/data/train.jsonl \\
        --workdir runs/scaling/w0.5_d2_t1/ldm

``get_config("<stage>[,key=value...]")``: the options of ``configs/audioldm2_base.py`` (``root``, default
``runs/audioldm2-base``, is where the shared VAE / AudioMAE / GPT-2 / vocoder exports are), and

- ``preset``: a named size (:data:`audioldm2_jax.configs.sizes.SCALING_PRESETS`: ``xs, s, m, base, l, xl``);
- ``width``: multiplies ``block_out_channels`` (128, 256, 384, 640), rounded to multiples of 32; the 8 heads per
  level stay, so the head width scales with the channels;
- ``depth``: multiplies ``layers_per_block`` (2): ResNet + Transformer2D units per block;
- ``transformer_layers``: transformer blocks inside each Transformer2D (1; large has 2);
- ``scaling_root``: where this size's runs are (default ``runs/scaling/<tag>``, tag = the preset name or
  ``w<width>_d<depth>_t<transformer_layers>``): the joint stage starts its UNet from ``scaling_root/ldm``.

``width`` / ``depth`` / ``transformer_layers`` override the preset's values. Parameter counts and training FLOPs
of the family: ``python bench/config_sizes.py`` (:func:`audioldm2_jax.configs.sizes.size_rows`). Sizes past base need
more memory than one accelerator may have: shard with ``--config.mesh.fsdp=N``.
"""

from __future__ import annotations

import os

from audioldm2_jax.configs import audioldm2_base as base
from audioldm2_jax.configs import common
from audioldm2_jax.configs import sizes

SCALING_OPTIONS = ("preset", "width", "depth", "transformer_layers", "scaling_root")


def unet_from_options(options: dict[str, str]):
    """``(UNetConfig, tag)`` of the size the options name."""
    preset = options.get("preset", "base")
    if preset not in sizes.SCALING_PRESETS:
        raise ValueError(f"preset={preset!r} is not one of {tuple(sizes.SCALING_PRESETS)}")
    width, depth = sizes.SCALING_PRESETS[preset]
    try:
        width = float(options.get("width", width))
        depth = float(options.get("depth", depth))
        tlayers = int(options.get("transformer_layers", 1))
    except ValueError as err:
        raise ValueError(f"scaling options {options}: width / depth must be numbers, transformer_layers an "
                         f"integer ({err})") from err
    config = sizes.scaled_unet(width, depth, tlayers)
    custom = any(k in options for k in ("width", "depth", "transformer_layers"))
    tag = f"w{width:g}_d{depth:g}_t{tlayers}" if custom else preset
    return config, tag


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg, base.OPTIONS + SCALING_OPTIONS)
    unet, tag = unet_from_options(options)
    models = sizes.published_models("base")
    models["unet"] = unet
    c = base.build(stage, options, variant="base", models=models)
    if stage == "joint":
        c.init.unet = os.path.join(options.get("scaling_root", f"runs/scaling/{tag}"), "ldm", "export")
    return c
