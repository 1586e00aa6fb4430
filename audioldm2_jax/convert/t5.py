"""transformers T5 encoder (AudioLDM 2's ``text_encoder_2``, a ``T5EncoderModel``) <-> ``T5EncoderModel`` here: its
``config.json`` <-> ``T5Config``, its state dict (``model.safetensors``) <-> a bare Flax params tree (``shared``,
``encoder``).

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights`
(``encoder.block.3.layer.1.DenseReluDense.wo.weight`` <-> ``encoder/block_3/layer_1/DenseReluDense/wo/kernel``,
Linear ``(out, in)`` <-> ``(in, out)``). The encoder of any T5 class reads: ``T5EncoderModel``, ``T5Model`` /
``T5ForConditionalGeneration`` / ``T5ForQuestionAnswering`` (decoder and heads skipped), and the classification
classes that nest the model under ``transformer.`` (``T5ForSequenceClassification``, ``T5ForTokenClassification``).
The token table is ``encoder.embed_tokens.weight`` when the state dict has it, else ``shared.weight``;
``shared.weight`` is written.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, t5_dummy_inputs

# torch ModuleLists of the encoder (`encoder.block.3.layer.1...`); `wi_0` / `wi_1` are attribute names.
CONTAINERS = frozenset({"block", "layer"})
# Parts of the T5 classes that the encoder does not use.
_SKIPPED = ("decoder.", "lm_head.", "classification_head.", "classifier.", "qa_outputs.")


def t5_param_shapes(config: T5Config):
    return jax.eval_shape(T5EncoderModel(config).init, jax.random.key(0), *t5_dummy_inputs())["params"]


def _rename(key: str) -> str | None:
    if key.startswith(_SKIPPED):
        return None
    return key


def config_from_json(d: dict) -> T5Config:
    """A transformers ``config.json`` dict -> ``T5Config`` (``ValueError`` naming the key when it is not usable)."""
    return T5Config.from_transformers(d)


def config_to_json(config: T5Config) -> dict:
    """The ``config.json`` of the ``T5EncoderModel`` with exactly this encoder (see ``T5Config.to_transformers``)."""
    return config.to_transformers()


def to_flax(state_dict: Mapping[str, np.ndarray], config: T5Config, source: str = "T5") -> dict:
    """A T5 state dict (any T5 class) -> the bare encoder params tree (``shared``, ``encoder``); ``CheckpointError``
    naming every missing, unexpected or misshaped key."""
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


def to_torch(params, config: T5Config) -> StateDict:
    """Encoder params -> the state dict ``T5EncoderModel.save_pretrained`` writes: ``shared.weight`` (the tied
    ``encoder.embed_tokens.weight`` is not stored) and ``encoder.*``, float32, torch layouts."""
    del config  # the params tree alone fixes every key and shape
    return params_to_state_dict(params, CONTAINERS)
