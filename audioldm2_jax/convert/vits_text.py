"""transformers ``VitsModel`` (``text_encoder_2`` of the AudioLDM 2 speech models) <-> its phoneme text encoder,
``VitsTextEncoder`` here: the ``config.json`` <-> ``VitsTextConfig``, the ``text_encoder.*`` part of the state dict
(``model.safetensors``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` after the ``text_encoder.`` prefix
(``text_encoder.encoder.layers.1.attention.q_proj.weight`` <-> ``encoder/layers_1/attention/q_proj/kernel``, Linear
``(out, in)`` <-> ``(in, out)``, Conv1d ``(out, in, k)`` <-> ``(k, in, out)``). The rest of VITS (flow, duration
predictor, decoder) is skipped when read and not written: transformers initialises it when loading.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder

PREFIX = "text_encoder."
# torch ModuleLists of the text encoder (`encoder.layers.3...`).
CONTAINERS = frozenset({"layers"})


def abstract_params(config: VitsTextConfig):
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    model = VitsTextEncoder(config)
    return jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i, jnp.ones_like(i)), ids)


def config_from_json(d: dict) -> VitsTextConfig:
    """A transformers ``VitsModel`` ``config.json`` dict -> ``VitsTextConfig`` (``ValueError`` naming the key)."""
    return VitsTextConfig.from_transformers(d)


def config_to_json(config: VitsTextConfig) -> dict:
    """A complete ``VitsModel`` ``config.json`` around this text encoder (``VitsTextConfig.to_transformers``)."""
    return config.to_transformers()


def to_flax(state_dict: Mapping[str, np.ndarray], config: VitsTextConfig, source: str = "VITS checkpoint") -> dict:
    """A ``VitsModel`` state dict (or its text encoder's alone, without the prefix) -> the bare text-encoder params
    tree; ``CheckpointError`` naming every missing, unexpected or misshaped key."""
    if any(key.startswith(PREFIX) for key in state_dict):
        state_dict = {key[len(PREFIX):]: value for key, value in state_dict.items() if key.startswith(PREFIX)}
    return convert_state_dict(state_dict, abstract_params(config), source=source)


def to_torch(params, config: VitsTextConfig) -> StateDict:
    """Text-encoder params -> its ``text_encoder.*`` keys of a ``VitsModel`` state dict (float32, torch layouts).
    The rest of VITS has no weights here: transformers initialises it when loading."""
    del config  # the params tree alone fixes every key and shape
    return params_to_state_dict(params, CONTAINERS, rename=lambda key: PREFIX + key)
