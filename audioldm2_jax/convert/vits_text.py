"""transformers ``VitsModel`` checkpoint (``text_encoder_2`` of the AudioLDM 2 speech models) -> the phoneme text
encoder's ``(VitsTextConfig, params)``. Only ``text_encoder.*`` weights are read; the rest of VITS is skipped."""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, find_weights, load_state_dict, \
    read_config, resolve_checkpoint
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder

PREFIX = "text_encoder."


def abstract_params(config: VitsTextConfig):
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    model = VitsTextEncoder(config)
    return jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i, jnp.ones_like(i)), ids)


def convert_vits_text_state_dict(state_dict: Mapping[str, np.ndarray], config: VitsTextConfig,
                                 source: str = "VITS checkpoint") -> dict:
    """A ``VitsModel`` state dict (or one of its text encoder alone, without the prefix) -> ``{"params": ...}``."""
    if any(key.startswith(PREFIX) for key in state_dict):
        state_dict = {key[len(PREFIX):]: value for key, value in state_dict.items() if key.startswith(PREFIX)}
    return {"params": convert_state_dict(state_dict, abstract_params(config), source=source)}


def load_vits_text(folder_or_hub_id: str | os.PathLike, config: VitsTextConfig | None = None
                   ) -> tuple[VitsTextConfig, dict]:
    """Reads ``config.json`` and the ``text_encoder.*`` weights of a transformers ``VitsModel`` folder."""
    folder = resolve_checkpoint(folder_or_hub_id)
    if config is None:
        try:
            config = VitsTextConfig.from_transformers(read_config(folder))
        except ValueError as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    weights = find_weights(folder)
    return config, convert_vits_text_state_dict(load_state_dict(weights), config, source=str(weights))
