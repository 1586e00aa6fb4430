"""diffusers ``AudioLDM2UNet2DConditionModel`` checkpoint -> (``UNetConfig``, Flax params)."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs


def unet_param_shapes(config: UNetConfig):
    model = AudioLDM2UNet(config)
    return jax.eval_shape(model.init, jax.random.key(0), *unet_dummy_inputs(config))["params"]


def load_unet(folder: str | os.PathLike) -> tuple[UNetConfig, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin)."""
    folder = Path(folder)
    try:
        config = UNetConfig.from_diffusers(read_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    params = convert_state_dict(load_state_dict(folder), unet_param_shapes(config), source=str(folder))
    return config, params
