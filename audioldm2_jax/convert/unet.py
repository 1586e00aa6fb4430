"""diffusers ``AudioLDM2UNet2DConditionModel`` <-> ``AudioLDM2UNet``: its ``config.json`` <-> ``UNetConfig``, its
state dict (``diffusion_pytorch_model.safetensors``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``down_blocks.0.attentions.1.proj_in.weight``
<-> ``down_blocks_0/attentions_1/proj_in/kernel``; Linear ``(out, in)`` <-> ``(in, out)``, Conv2d ``OIHW`` <->
``HWIO``). Special cases: with ``use_linear_projection`` a Transformer2D's ``proj_in`` / ``proj_out`` is a Linear
in torch and a 1x1 convolution here; ``time_embedding.cond_proj.weight`` (``time_cond_proj_dim``) has no
counterpart and is skipped.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import DIFFUSERS_VERSION, StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs

# The reference's ModuleList / Sequential attributes (``down_blocks.0``, ``ff.net.2``); every other ``name_<digit>``
# (``linear_1``, ``time_emb_proj``) is an attribute of that name.
_CONTAINERS = frozenset({"down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
                         "transformer_blocks", "to_out", "net"})


def unet_param_shapes(config: UNetConfig):
    model = AudioLDM2UNet(config)
    return jax.eval_shape(model.init, jax.random.key(0), *unet_dummy_inputs(config))["params"]


def _rename(key: str) -> str | None:
    # ``time_cond_proj_dim`` adds a projection of ``timestep_cond``, an input the pipeline never passes (the
    # reference skips it then): its weight has no counterpart here.
    return None if key == "time_embedding.cond_proj.weight" else key


def _is_projection(path: tuple[str, ...]) -> bool:
    return path[-1] == "kernel" and len(path) >= 2 and path[-2] in ("proj_in", "proj_out")


def _transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    # ``use_linear_projection`` stores a Transformer2D's proj_in / proj_out as Linear (out, in): the same map as
    # the 1x1 convolution used here (the reference flattens the pixels before, resp. after, it).
    if _is_projection(path) and value.ndim == 2:
        return np.asarray(value).T[None, None]
    return None


def config_from_json(d: dict) -> UNetConfig:
    """``UNetConfig.from_diffusers``: ``ValueError`` naming the key for what this port does not implement."""
    return UNetConfig.from_diffusers(d)


def _per_block(values: tuple[int, ...]) -> int | list[int]:
    # One int when every block has the same value, as the published configs write it (the reference repeats it).
    return values[0] if len(set(values)) == 1 else list(values)


def config_to_json(config: UNetConfig) -> dict:
    """The ``config.json`` ``AudioLDM2UNet2DConditionModel.save_pretrained`` writes for this architecture: every
    ``__init__`` argument, the ones this port does not implement at the values that build none of it."""
    c = config
    return {
        "_class_name": "AudioLDM2UNet2DConditionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": list(c.sample_size) if isinstance(c.sample_size, tuple) else c.sample_size,
        "in_channels": c.in_channels, "out_channels": c.out_channels, "flip_sin_to_cos": c.flip_sin_to_cos,
        "freq_shift": c.freq_shift, "down_block_types": list(c.down_block_types),
        "mid_block_type": "UNetMidBlock2DCrossAttn", "up_block_types": list(c.up_block_types),
        "only_cross_attention": False, "block_out_channels": list(c.block_out_channels),
        "layers_per_block": _per_block(c.layers_per_block), "downsample_padding": c.downsample_padding,
        "mid_block_scale_factor": c.mid_block_scale_factor, "act_fn": "silu", "norm_num_groups": c.norm_num_groups,
        "norm_eps": c.norm_eps,
        # One list per block (an empty one builds no Transformer2D; a plain block's entry is never read).
        "cross_attention_dim": [list(dims) for dims in c.cross_attention_dim],
        "transformer_layers_per_block": _per_block(c.transformer_layers_per_block),
        "attention_head_dim": _per_block(c.num_heads),  # diffusers' name for the head count
        "num_attention_heads": None, "use_linear_projection": c.use_linear_projection, "class_embed_type": None,
        "num_class_embeds": None, "upcast_attention": False, "resnet_time_scale_shift": "default",
        "time_embedding_type": "positional", "time_embedding_dim": c.time_embedding_dim,
        "time_embedding_act_fn": c.time_embedding_act_fn, "timestep_post_act": c.timestep_post_act,
        "time_cond_proj_dim": None, "conv_in_kernel": c.conv_in_kernel, "conv_out_kernel": c.conv_out_kernel,
        "projection_class_embeddings_input_dim": None, "class_embeddings_concat": False,
    }


def to_flax(state_dict: Mapping[str, np.ndarray], config: UNetConfig, source: str = "unet") -> dict:
    """The reference's state dict -> a bare params tree (``CheckpointError`` naming every key that does not fit)."""
    return convert_state_dict(state_dict, unet_param_shapes(config), source=source, rename=_rename,
                              transform=_transform)


def to_torch(params, config: UNetConfig) -> StateDict:
    """A bare params tree -> the reference's state dict (float32; proj_in / proj_out as Linear when
    ``config.use_linear_projection``): the inverse of :func:`to_flax`."""

    def transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
        if config.use_linear_projection and _is_projection(path):
            return value[0, 0].T  # (1, 1, in, out) -> Linear (out, in)
        return None

    return params_to_state_dict(params, _CONTAINERS, transform=transform)

