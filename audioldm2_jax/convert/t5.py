"""transformers T5 checkpoint (AudioLDM 2's ``text_encoder_2`` is a ``T5EncoderModel``) -> (``T5Config``, Flax params).

The encoder of any T5 class loads: ``T5EncoderModel``, ``T5Model`` / ``T5ForConditionalGeneration`` /
``T5ForQuestionAnswering`` (decoder and heads skipped), and the classification classes that nest the model under
``transformer.`` (``T5ForSequenceClassification``, ``T5ForTokenClassification``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, t5_dummy_inputs

# Parts of the T5 classes that the encoder does not use.
_SKIPPED = ("decoder.", "lm_head.", "classification_head.", "classifier.", "qa_outputs.")


def t5_param_shapes(config: T5Config):
    return jax.eval_shape(T5EncoderModel(config).init, jax.random.key(0), *t5_dummy_inputs())["params"]


def _rename(key: str) -> str | None:
    if key.startswith(_SKIPPED):
        return None
    return key


def t5_state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: T5Config, source: str = "T5") -> dict:
    """A T5 state dict (any of the classes above) -> the encoder's params tree."""
    if any(key.startswith("transformer.") for key in state_dict):
        # The classification classes: the model under `transformer.`, their heads beside it.
        state_dict = {key[len("transformer."):]: value for key, value in state_dict.items()
                      if key.startswith("transformer.")}
    state_dict = dict(state_dict)
    # The encoder looks tokens up in `encoder.embed_tokens`. With tied embeddings (the default) it is the same table
    # as `shared`, and a checkpoint may hold either key or both; a model built with tie_word_embeddings=false keeps
    # two different tables, and the encoder's own is the one that counts.
    own = state_dict.pop("encoder.embed_tokens.weight", None)
    if own is not None:
        state_dict["shared.weight"] = own
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
