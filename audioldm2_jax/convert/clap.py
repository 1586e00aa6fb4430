"""transformers ``ClapModel`` (the ``text_encoder`` of AudioLDM 2: laion/clap-htsat-unfused or -fused) <->
``ClapModel`` here: its ``config.json`` <-> ``ClapConfig``, its state dict (``model.safetensors``) <-> a bare Flax
params tree (``text_model``, ``text_projection``, ``audio_model``, ``audio_projection``, ``logit_scale_a`` /
``logit_scale_t``; the text tower alone when the state dict has no ``audio_model.*`` key).

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``text_model.encoder.layer.3.output.dense.weight``
<-> ``text_model/encoder/layer_3/output/dense/kernel``, Linear ``(out, in)`` <-> ``(in, out)``, Conv2d ``OIHW`` <->
``HWIO``). The buffers the reference derives (RoBERTa's position / token-type ids, Swin's relative
position index, BatchNorm's step counter) are recomputed here: skipped when read, written back for the reference.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.clap import ClapConfig, ClapModel, relative_position_index

# torch ModuleLists / Sequentials of ClapModel: the RoBERTa layers, the Swin stages and their blocks, the fusion
# block's attention branches.
CONTAINERS = frozenset({"layer", "layers", "blocks", "global_att", "local_att"})
# The towers AudioLDM 2 keeps (the trainer's ``ClapTextEncoder``): a state dict without any ``audio_model.*`` key is
# read as these alone.
TEXT_TOWER = ("text_model", "text_projection")

# Buffers the reference saves that are recomputed here (position / token-type ids, Swin's relative position
# index) and BatchNorm's step counter.
_DERIVED_BUFFERS = (
    "text_model.embeddings.position_ids",
    "text_model.embeddings.token_type_ids",
)
_DERIVED_SUFFIXES = (".relative_position_index", ".num_batches_tracked")


def _rename(key: str) -> str | None:
    if key in _DERIVED_BUFFERS or key.endswith(_DERIVED_SUFFIXES):
        return None
    return key


def abstract_params(config: ClapConfig):
    """The variables ``{"params": ...}`` of ``ClapModel(config)`` (both towers) with ``ShapeDtypeStruct`` leaves (no
    arrays are allocated)."""
    model = ClapModel(config)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    # Initialisation takes the audio shapes from the config alone (also for configs whose audio tower cannot run).
    feats = jax.ShapeDtypeStruct((1, 1, 1, config.audio.num_mel_bins), jnp.float32)
    return jax.eval_shape(lambda i, f: model.init(jax.random.PRNGKey(0), i, jnp.ones_like(i), f), ids, feats)


def config_from_json(d: dict) -> ClapConfig:
    """A transformers ``ClapModel`` ``config.json`` dict -> ``ClapConfig`` (``ValueError`` naming the key)."""
    return ClapConfig.from_transformers(d)


def config_to_json(config: ClapConfig) -> dict:
    """The ``config.json`` of the ``ClapModel`` with exactly this architecture (``ClapConfig.to_transformers``)."""
    return config.to_transformers()


def to_flax(state_dict: Mapping[str, np.ndarray], config: ClapConfig, source: str = "CLAP checkpoint") -> dict:
    """A ``ClapModel`` state dict -> the bare params tree: both towers, or, when the state dict has no
    ``audio_model.*`` key at all, the text tower alone (``text_model``, ``text_projection``; an audio projection or
    logit scales beside it are dropped with the audio side). Every missing, unexpected or misshaped key of the part
    read is a ``CheckpointError``."""
    shapes = abstract_params(config)["params"]
    if any(key.startswith("audio_model.") for key in state_dict):
        return convert_state_dict(state_dict, shapes, source=source, rename=_rename)
    text = tuple(name + "." for name in TEXT_TOWER)
    return convert_state_dict(state_dict, {name: shapes[name] for name in TEXT_TOWER}, source=source,
                              rename=lambda key: _rename(key) if key.startswith(text) else None)


def to_torch(params, config: ClapConfig) -> StateDict:
    """``ClapModel`` params (both towers, or the text tower alone) -> the state dict ``ClapModel.save_pretrained``
    writes for them, with the buffers the reference stores beside the weights (RoBERTa's position / token-type ids,
    Swin's relative position index, BatchNorm's step counter). A text-only tree gives ``text_model.*`` /
    ``text_projection.*`` keys only: transformers then initialises the audio tower and the logit scales."""
    out = params_to_state_dict(params, CONTAINERS)
    if "text_model.embeddings.position_embeddings.weight" in out:
        positions = config.text.max_position_embeddings
        out["text_model.embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None]
        out["text_model.embeddings.token_type_ids"] = np.zeros((1, positions), np.int64)
    for key, value in list(out.items()):
        if key.endswith(".relative_position_bias_table"):  # [(2w - 1)^2, heads]: the window w from its shape
            window = (round(value.shape[0] ** 0.5) + 1) // 2
            out[key[: -len("bias_table")] + "index"] = relative_position_index(window).astype(np.int64)
        elif key.endswith(".running_mean"):
            out[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out
