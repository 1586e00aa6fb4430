"""diffusers ``AutoencoderKL`` checkpoint -> (``VAEConfig``, Flax params)."""

from __future__ import annotations

import os

import jax

from audioldm2_jax.convert.weights import (CheckpointError, convert_state_dict, load_state_dict, read_config,
                                           resolve_checkpoint)
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig, vae_dummy_input

# Names of the mid-block attention in diffusers' pre-0.14 ``AttentionBlock`` (still accepted by diffusers' loader).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def vae_param_shapes(config: VAEConfig):
    """The abstract params tree (``ShapeDtypeStruct`` leaves, logical axes boxed) of ``AutoencoderKL(config)``."""
    model = AutoencoderKL(config)
    return jax.eval_shape(model.init, jax.random.key(0), vae_dummy_input(config))["params"]


def _rename(key: str) -> str:
    parts = key.split(".")
    if len(parts) >= 2 and "attentions" in key and parts[-2] in _LEGACY_ATTENTION:
        return ".".join(parts[:-2] + [_LEGACY_ATTENTION[parts[-2]], parts[-1]])
    return key


def load_vae(folder: str | os.PathLike) -> tuple[VAEConfig, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin) written by ``AutoencoderKL.save_pretrained``.

    Raises ``CheckpointError`` for a missing config or weights file, an unsupported config (naming the key) and
    weights that do not fit the config (every missing / unexpected / misshaped key).
    """
    folder = resolve_checkpoint(folder)
    config_path = folder / "config.json"
    try:
        config = VAEConfig.from_diffusers(read_config(folder))
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{config_path}: {err}") from err
    params = convert_state_dict(load_state_dict(folder), vae_param_shapes(config), source=str(folder),
                                rename=_rename)
    return config, params
