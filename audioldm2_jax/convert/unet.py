"""diffusers ``AudioLDM2UNet2DConditionModel`` checkpoint -> (``UNetConfig``, Flax params)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs


def unet_param_shapes(config: UNetConfig):
    model = AudioLDM2UNet(config)
    return jax.eval_shape(model.init, jax.random.key(0), *unet_dummy_inputs(config))["params"]


def _rename(key: str) -> str | None:
    # ``time_cond_proj_dim`` adds a projection of ``timestep_cond``, an input the pipeline never passes (the
    # reference skips it then): its weight has no counterpart here.
    return None if key == "time_embedding.cond_proj.weight" else key


def _transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    # ``use_linear_projection`` stores a Transformer2D's proj_in / proj_out as Linear (out, in): the same map as
    # the 1x1 convolution used here (the reference flattens the pixels before, resp. after, it).
    if path[-1] == "kernel" and len(path) >= 2 and path[-2] in ("proj_in", "proj_out") and value.ndim == 2:
        return np.asarray(value).T[None, None]
    return None


def load_unet(folder: str | os.PathLike) -> tuple[UNetConfig, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin)."""
    folder = Path(folder)
    try:
        config = UNetConfig.from_diffusers(read_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    params = convert_state_dict(load_state_dict(folder), unet_param_shapes(config), source=str(folder),
                                rename=_rename, transform=_transform)
    return config, params
