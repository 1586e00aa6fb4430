"""diffusers ``AudioLDM2ProjectionModel`` checkpoint -> (``ProjectionConfig``, Flax params)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig, projection_dummy_inputs


def projection_param_shapes(config: ProjectionConfig):
    model = AudioLDM2ProjectionModel(config)
    return jax.eval_shape(model.init, jax.random.key(0), *projection_dummy_inputs(config))["params"]


def _transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    if path == ("learnable_positional_embedding",):
        # torch keeps it (1, channels, length) to add to channel-first features; ours is (length, channels).
        value = np.asarray(value)
        return value[0].T if value.ndim == 3 and value.shape[0] == 1 else value
    return None


def projection_state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: ProjectionConfig,
                                    source: str = "projection model") -> dict:
    return convert_state_dict(state_dict, projection_param_shapes(config), source=source, transform=_transform)


def load_projection(folder: str | os.PathLike) -> tuple[ProjectionConfig, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin)."""
    folder = Path(folder)
    try:
        config = ProjectionConfig.from_diffusers(read_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    return config, projection_state_dict_to_params(load_state_dict(folder), config, source=str(folder))
