"""Model sizes for the full-size configs: the published AudioLDM 2 shapes, the large variant, and a family of T-UNet
sizes for scaling experiments, with parameter counts and training FLOPs computed without allocating or running a
model.

Published shapes are read from ``published/audioldm2-base/*.json`` (beside this file) through the converters' own
mappings (``UNetConfig.from_diffusers``, ``T5Config.from_transformers``, ...), so that a config file and a converted
checkpoint can never disagree about what "base" means. Variants are differences from base
(``published/README.md``):

- large: ``transformer_layers_per_block`` 2 and ``cross_attention_dim`` ``[[None, 768, 1024, None]] x 4`` (a fourth,
  self-attention-only Transformer2D after each ResNet); 718.0M UNet parameters against base's 346.9M;
- music: the same shapes as base.

The scaling family varies the UNet only (the conditioning networks are frozen or trained in other stages):

- ``width`` multiplies ``block_out_channels`` (128, 256, 384, 640), each rounded to a multiple of
  ``norm_num_groups`` (32) so that GroupNorm splits it; the head count stays the published 8 at every level, so
  the head width grows with the channels (8 divides every multiple of 32). The context widths (768 for LOA /
  GPT-2, 1024 for T5) are fixed by the conditioning networks and do not scale.
- ``depth`` multiplies ``layers_per_block`` (2): the number of ResNet + Transformer2D units per down block (up
  blocks have one more, as in every diffusers UNet); ``transformer_layers`` sets the transformer blocks inside
  each Transformer2D (1 in base, 2 in large).

Parameter counts come from ``jax.eval_shape`` of the init; FLOPs from XLA's cost analysis of the lowered (not
compiled, never executed) forward + backward of the denoising loss, on abstract inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from audioldm2_jax.convert.unet import unet_param_shapes as _unet_param_shapes
from audioldm2_jax.models.audiomae import AudioMAEConfig
from audioldm2_jax.models.clap import ClapConfig
from audioldm2_jax.models.gpt2 import GPT2Config
from audioldm2_jax.models.layers import use_attention
from audioldm2_jax.models.projection import ProjectionConfig
from audioldm2_jax.models.t5 import T5Config
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, context_dims
from audioldm2_jax.models.vae import VAEConfig
from audioldm2_jax.models.vocoder import VocoderConfig
from audioldm2_jax.train import config as config_lib

PUBLISHED_DIR = Path(__file__).resolve().parent / "published" / "audioldm2-base"
VARIANTS = ("base", "large", "music")

# One 10.24 s clip: 1024 mel frames -> VAE latents [256, 16, 8] (time, frequency, channels; NHWC).
CLIP_FRAMES = 1024
# Conditioning lengths of the FLOP counts: 8 LOA tokens (lambda = 8, what GPT-2 generates at inference) and a
# 32-token T5 caption (AudioCaps captions are 10-25 words).
LOA_TOKENS = 8
T5_TOKENS = 32

# name -> (width, depth); "base" is the published base UNet exactly.
SCALING_PRESETS: dict[str, tuple[float, float]] = {
    "xs": (0.25, 0.5),
    "s": (0.5, 0.5),
    "m": (0.75, 1.0),
    "base": (1.0, 1.0),
    "l": (1.5, 1.0),
    "xl": (2.0, 1.5),
}


# ----------------------------------------------------------------------------------------------------------------
# Published shapes
# ----------------------------------------------------------------------------------------------------------------


def read_published(filename: str, folder: str | Path | None = None) -> dict:
    """The raw published config dict ``filename`` (e.g. ``"unet.json"``)."""
    path = Path(folder or PUBLISHED_DIR) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such published config (expected the audioldm2-base config files)")
    return json.loads(path.read_text())


def large_unet(base):
    """The audioldm2-large UNet from the base one: two transformer blocks per Transformer2D and a fourth,
    self-attention-only Transformer2D after each ResNet."""
    n = len(base.block_out_channels)
    return dataclasses.replace(base, transformer_layers_per_block=(2,) * n,
                               cross_attention_dim=((None, 768, 1024, None),) * n)


def published_models(variant: str = "base", folder: str | Path | None = None) -> dict[str, Any]:
    """``{component: config dataclass}`` of a published variant: unet, vae, vocoder, audiomae, gpt2, t5, clap,
    projection."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS} (speech has its own config file)")
    clap = read_published("text_encoder.json", folder)
    # text_encoder.json describes laion/clap-htsat-unfused with its sizes; RoBERTa's layer-norm epsilon (1e-5) is
    # not in it, and transformers' ClapTextConfig default (1e-12) is not what the checkpoint was trained with.
    clap["text_config"] = dict(clap["text_config"], layer_norm_eps=1e-5)
    models = {
        "unet": UNetConfig.from_diffusers(read_published("unet.json", folder)),
        "vae": VAEConfig.from_diffusers(read_published("vae.json", folder)),
        "vocoder": VocoderConfig.from_transformers(read_published("vocoder.json", folder)),
        # ViT-B/16 over 1024 x 128 Kaldi fbanks, the last 3 of 12 blocks averaged into the features; the dataclass
        # defaults are that model (there is no config.json: the checkpoint is a .pth).
        "audiomae": AudioMAEConfig(),
        "gpt2": GPT2Config.from_transformers(read_published("language_model.json", folder)),
        "t5": T5Config.from_transformers(read_published("text_encoder_2.json", folder)),
        "clap": ClapConfig.from_transformers(clap),
        "projection": ProjectionConfig.from_diffusers(read_published("projection_model.json", folder)),
    }
    if variant == "large":
        models["unet"] = large_unet(models["unet"])
    return models


def set_models(c, models: Mapping[str, Any]) -> None:
    """Writes ``{component: dataclass}`` into ``c.model``."""
    for name, instance in models.items():
        config_lib.set_model_config(c, name, instance)


# ----------------------------------------------------------------------------------------------------------------
# The scaling family
# ----------------------------------------------------------------------------------------------------------------


def _multiple(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def scaled_unet(width: float = 1.0, depth: float = 1.0, transformer_layers: int | None = None, base=None):
    """The base UNet (or ``base``) with ``width`` x the channels and ``depth`` x the ResNet / Transformer2D units
    per block; ``transformer_layers`` (default: unchanged) transformer blocks in each Transformer2D."""
    base = base or UNetConfig.from_diffusers(read_published("unet.json"))
    for key, value in (("width", width), ("depth", depth)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"UNet scaling: {key}={value!r} must be a positive number")
    if transformer_layers is not None and (int(transformer_layers) != transformer_layers or transformer_layers < 1):
        raise ValueError(f"UNet scaling: transformer_layers={transformer_layers!r} must be a positive integer")
    groups = base.norm_num_groups
    channels = tuple(_multiple(ch * width, groups) for ch in base.block_out_channels)
    bad = [ch for ch, heads in zip(channels, base.num_heads) if ch % heads]
    if bad:
        raise ValueError(f"UNet scaling: width={width} gives channels {channels}; {bad} not divisible by the head "
                         f"counts {base.num_heads}")
    layers = tuple(max(1, int(round(n * depth))) for n in base.layers_per_block)
    tlayers = base.transformer_layers_per_block if transformer_layers is None else \
        (int(transformer_layers),) * len(channels)
    return dataclasses.replace(base, block_out_channels=channels, layers_per_block=layers,
                               transformer_layers_per_block=tlayers)


def preset_unet(name: str):
    if name == "large":
        return large_unet(scaled_unet())
    if name not in SCALING_PRESETS:
        raise ValueError(f"UNet preset {name!r} is not one of {sorted(SCALING_PRESETS) + ['large']}")
    width, depth = SCALING_PRESETS[name]
    return scaled_unet(width, depth)


def unet_to_diffusers(config) -> dict:
    """``UNetConfig`` -> the keyword arguments of diffusers' ``AudioLDM2UNet2DConditionModel`` (for independent
    parameter counts and the PyTorch side of the benches)."""
    return dict(
        in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=list(config.block_out_channels), down_block_types=list(config.down_block_types),
        up_block_types=list(config.up_block_types), mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=list(config.layers_per_block),
        cross_attention_dim=[list(dims) for dims in config.cross_attention_dim],
        transformer_layers_per_block=list(config.transformer_layers_per_block),
        attention_head_dim=list(config.num_heads),  # diffusers' name for the head count
        norm_num_groups=config.norm_num_groups, norm_eps=config.norm_eps, flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=int(config.freq_shift), time_embedding_dim=config.time_embedding_dim,
        mid_block_scale_factor=config.mid_block_scale_factor, downsample_padding=config.downsample_padding,
        conv_in_kernel=config.conv_in_kernel, conv_out_kernel=config.conv_out_kernel,
        timestep_post_act=config.timestep_post_act, time_embedding_act_fn=config.time_embedding_act_fn,
        act_fn="silu", sample_size=CLIP_FRAMES // 4)


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts and FLOPs (abstract: nothing is allocated or run)
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def unet_param_shapes(config):
    """The UNet's parameter tree as ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape`` of its init; cached: tracing
    a full-size init takes seconds)."""
    return _unet_param_shapes(config)


def unet_param_count(config) -> int:
    """Parameters of the UNet ``config``."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(unet_param_shapes(config))))


def unet_abstract_inputs(config, batch: int = 1, frames: int = CLIP_FRAMES, loa_tokens: int = LOA_TOKENS,
                         t5_tokens: int = T5_TOKENS, dtype=None) -> dict:
    """``jax.ShapeDtypeStruct`` inputs of one denoising step: ``sample [B, frames/4, 16, C]``, ``timesteps [B]``,
    ``context [B, loa_tokens, D0]`` (LOA), ``context_1 [B, t5_tokens, D1]`` and its mask (T5; absent for a
    single-stream UNet)."""
    dtype = dtype or jnp.float32
    if frames % 4:
        raise ValueError(f"frames={frames} must be a multiple of 4 (the VAE halves time twice)")
    d0, d1 = context_dims(config)
    spec = jax.ShapeDtypeStruct
    out = {"sample": spec((batch, frames // 4, 16, config.in_channels), dtype),
           "timesteps": spec((batch,), jnp.int32),
           "context": spec((batch, loa_tokens, d0), dtype)}
    if d1 is not None:
        out["context_1"] = spec((batch, t5_tokens, d1), dtype)
        out["context_1_mask"] = spec((batch, t5_tokens), jnp.int32)
    return out


def unet_loss_fn(model):
    """``loss(params, inputs, target)``: the MSE of the UNet's prediction against ``target`` (the denoising loss
    of one sampled timestep; the schedule's arithmetic is negligible next to the UNet)."""
    def loss(params, inputs, target):
        pred = model.apply({"params": params}, inputs["sample"], inputs["timesteps"], inputs["context"], None,
                           inputs.get("context_1"), inputs.get("context_1_mask"))
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))

    return loss


@functools.lru_cache(maxsize=64)
def unet_train_flops(config, frames: int = CLIP_FRAMES, loa_tokens: int = LOA_TOKENS, t5_tokens: int = T5_TOKENS,
                     backward: bool = True) -> float:
    """FLOPs per example of the UNet's forward + backward (``backward=False``: forward only) on one clip of
    ``frames`` mel frames, from XLA's cost analysis of the lowered step (batch 1, float32; nothing is compiled or
    executed). Counts every HLO op (matmuls and convolutions, and the element-wise work of norms, activations and
    softmax); the optimizer update is not included."""
    model = AudioLDM2UNet(config)
    params = unet_param_shapes(config)
    inputs = unet_abstract_inputs(config, 1, frames, loa_tokens, t5_tokens)
    target = inputs["sample"]
    loss = unet_loss_fn(model)
    fn = jax.value_and_grad(loss) if backward else loss
    with use_attention("xla"):  # the batched attention everywhere: the per-head loop of CPUs would be counted once
        analysis = jax.jit(fn).lower(params, inputs, target).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    if not analysis or not analysis.get("flops"):
        raise RuntimeError(f"XLA's cost analysis gave no FLOP count for the UNet step ({analysis!r})")
    return float(analysis["flops"])


def size_rows(names=None, frames: int = CLIP_FRAMES) -> list[dict]:
    """One row per preset (default: the scaling family, then the published large): name, width, depth,
    transformer layers, channels, UNet parameters, GFLOP per example forward + backward."""
    names = list(names or list(SCALING_PRESETS) + ["large"])
    rows = []
    for name in names:
        config = preset_unet(name)
        width, depth = SCALING_PRESETS.get(name, (1.0, 1.0))
        rows.append(dict(name=name, width=width, depth=depth,
                         transformer_layers=config.transformer_layers_per_block[0],
                         channels=config.block_out_channels, layers_per_block=config.layers_per_block[0],
                         params=unet_param_count(config),
                         gflop=unet_train_flops(config, frames=frames) / 1e9))
    return rows


__all__ = ["CLIP_FRAMES", "LOA_TOKENS", "PUBLISHED_DIR", "SCALING_PRESETS", "T5_TOKENS", "VARIANTS", "large_unet",
           "preset_unet", "published_models", "read_published", "scaled_unet", "set_models", "size_rows",
           "unet_abstract_inputs", "unet_loss_fn", "unet_param_count", "unet_param_shapes", "unet_to_diffusers",
           "unet_train_flops"]
