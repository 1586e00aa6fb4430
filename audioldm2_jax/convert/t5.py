"""transformers ``T5EncoderModel`` checkpoint (AudioLDM 2's ``text_encoder_2``) -> (``T5Config``, Flax params)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, t5_dummy_inputs


def t5_param_shapes(config: T5Config):
    return jax.eval_shape(T5EncoderModel(config).init, jax.random.key(0), *t5_dummy_inputs())["params"]


def _rename(key: str) -> str | None:
    # A full T5 (encoder-decoder) checkpoint also loads: its decoder and LM head are not used here.
    if key.startswith(("decoder.", "lm_head.")):
        return None
    return key


def t5_state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: T5Config, source: str = "T5") -> dict:
    state_dict = dict(state_dict)
    # The token table is tied: checkpoints hold `shared.weight`, `encoder.embed_tokens.weight` or both.
    tied = state_dict.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in state_dict and tied is not None:
        state_dict["shared.weight"] = tied
    return convert_state_dict(state_dict, t5_param_shapes(config), source=source, rename=_rename)


def load_t5(folder: str | os.PathLike) -> tuple[T5Config, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin)."""
    folder = Path(folder)
    try:
        config = T5Config.from_transformers(read_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    return config, t5_state_dict_to_params(load_state_dict(folder), config, source=str(folder))
