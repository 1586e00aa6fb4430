"""transformers GPT-2 checkpoint (AudioLDM 2's ``language_model``) -> (``GPT2Config``, Flax params).

``GPT2Model`` and every class that nests it under ``transformer.`` (``GPT2LMHeadModel``, ``GPT2DoubleHeadsModel``,
``GPT2ForSequenceClassification``, ``GPT2ForTokenClassification``, ``GPT2ForQuestionAnswering``) load; their heads
are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, convert_state_dict, load_state_dict, read_config
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, gpt2_dummy_inputs

# Causal-mask buffers that older transformers versions saved beside the weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")
# Heads of the GPT-2 classes: none is used for LOA generation (lm_head is tied to wte anyway).
_HEADS = ("lm_head.", "multiple_choice_head.", "score.", "classifier.", "qa_outputs.")
# Cross-attention layers (add_cross_attention=true) run only on encoder states, which AudioLDM 2 never passes.
_CROSS_ATTENTION = (".crossattention.", ".ln_cross_attn.")


def gpt2_param_shapes(config: GPT2Config):
    return jax.eval_shape(GPT2Model(config).init, jax.random.key(0), *gpt2_dummy_inputs(config))["params"]


def _renamer(config: GPT2Config):
    def rename(key: str) -> str | None:
        if key.startswith(_HEADS):
            return None
        if key.startswith("transformer."):
            key = key[len("transformer."):]
        if key.endswith(_BUFFERS):
            return None
        if config.add_cross_attention and any(part in key for part in _CROSS_ATTENTION):
            return None
        return key

    return rename


def _keep_conv1d_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    # Every GPT-2 projection is an HF Conv1D, whose weight is stored (in, out) already: no transpose.
    return np.asarray(value) if path[-1] == "kernel" else None


def gpt2_state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: GPT2Config,
                              source: str = "GPT-2") -> dict:
    return convert_state_dict(state_dict, gpt2_param_shapes(config), source=source, rename=_renamer(config),
                              transform=_keep_conv1d_layout)


def load_gpt2(folder: str | os.PathLike) -> tuple[GPT2Config, dict]:
    """Reads ``folder/config.json`` and its weights (safetensors or .bin), in any of the key layouts above."""
    folder = Path(folder)
    try:
        config = GPT2Config.from_transformers(read_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    return config, gpt2_state_dict_to_params(load_state_dict(folder), config, source=str(folder))
