"""diffusers ``AutoencoderKL`` <-> ``AutoencoderKL`` here: its ``config.json`` <-> ``VAEConfig``, its state dict
(``diffusion_pytorch_model.safetensors``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``encoder.down_blocks.0.resnets.1.conv1.weight``
<-> ``encoder/down_blocks_0/resnets_1/conv1/kernel``, Conv2d ``OIHW`` <-> ``HWIO``). The mid-block attention's
pre-0.14 names (``query`` / ``key`` / ``value`` / ``proj_attn``) read as ``to_q`` / ``to_k`` / ``to_v`` /
``to_out.0``; the current names are written.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import DIFFUSERS_VERSION, StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig, vae_dummy_input

# Names of the mid-block attention in diffusers' pre-0.14 ``AttentionBlock`` (still accepted by diffusers' loader).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# The reference's ModuleList attributes (``encoder.down_blocks.0.resnets.1``, ``attentions.0.to_out.0``).
_CONTAINERS = frozenset({"down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers",
                         "to_out"})
# ``AutoencoderKL``'s default ``sample_size``.
_SAMPLE_SIZE = 32


def vae_param_shapes(config: VAEConfig):
    """The abstract params tree (``ShapeDtypeStruct`` leaves, logical axes boxed) of ``AutoencoderKL(config)``."""
    model = AutoencoderKL(config)
    return jax.eval_shape(model.init, jax.random.key(0), vae_dummy_input(config))["params"]


def _rename(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and "attentions" in key and parts[-2] in _LEGACY_ATTENTION:
        return ".".join(parts[:-2] + [_LEGACY_ATTENTION[parts[-2]], parts[-1]])
    return key


def config_from_json(d: dict) -> VAEConfig:
    """``VAEConfig.from_diffusers``: ``ValueError`` naming unknown keys and unsupported values."""
    return VAEConfig.from_diffusers(d)


def config_to_json(config: VAEConfig) -> dict:
    """The ``config.json`` ``AutoencoderKL.save_pretrained`` writes for this architecture. ``scaling_factor`` is the
    latent scale the pipeline divides by before decoding (the LDM stage's learnt one in a training export).
    ``sample_size`` is only the tile size of diffusers' optional tiled decoding (``VAEConfig`` does not record it):
    its default is written."""
    c = config
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": c.in_channels, "out_channels": c.out_channels, "down_block_types": list(c.down_block_types),
        "up_block_types": list(c.up_block_types), "block_out_channels": list(c.block_out_channels),
        "layers_per_block": c.layers_per_block, "act_fn": "silu", "latent_channels": c.latent_channels,
        "norm_num_groups": c.norm_num_groups, "sample_size": _SAMPLE_SIZE, "scaling_factor": c.scaling_factor,
        "shift_factor": c.shift_factor, "latents_mean": None, "latents_std": None, "force_upcast": True,
        "use_quant_conv": c.use_quant_conv,
        "use_post_quant_conv": c.use_post_quant_conv, "mid_block_add_attention": c.mid_block_add_attention,
    }


def to_flax(state_dict: Mapping[str, np.ndarray], config: VAEConfig, source: str = "vae") -> dict:
    """The reference's state dict (current or pre-0.14 attention names) -> a bare params tree."""
    return convert_state_dict(state_dict, vae_param_shapes(config), source=source, rename=_rename)


def to_torch(params, config: VAEConfig) -> StateDict:
    """A bare params tree -> the reference's state dict (current attention names, float32): the inverse of
    :func:`to_flax`."""
    return params_to_state_dict(params, _CONTAINERS)

