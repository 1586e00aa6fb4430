"""diffusers ``AudioLDM2ProjectionModel`` <-> ``AudioLDM2ProjectionModel`` here: its ``config.json`` <->
``ProjectionConfig``, its state dict (``diffusion_pytorch_model.safetensors``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``projection.weight`` <->
``projection/kernel``, Linear ``(out, in)`` <-> ``(in, out)``); the learned SOS / EOS embeddings are vectors in
both. ``learnable_positional_embedding`` is ``(1, channels, length)`` in torch and ``(length, channels)`` here.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import DIFFUSERS_VERSION, StateDict, convert_state_dict, params_to_state_dict
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig, projection_dummy_inputs

_POSITIONS = ("learnable_positional_embedding",)


def projection_param_shapes(config: ProjectionConfig):
    model = AudioLDM2ProjectionModel(config)
    return jax.eval_shape(model.init, jax.random.key(0), *projection_dummy_inputs(config))["params"]


def _transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    if path == _POSITIONS:
        # torch keeps it (1, channels, length) to add to channel-first features; ours is (length, channels).
        value = np.asarray(value)
        return value[0].T if value.ndim == 3 and value.shape[0] == 1 else value
    return None


def _transform_back(path: tuple[str, ...], value: np.ndarray) -> np.ndarray | None:
    return value.T[None] if path == _POSITIONS else None


def config_from_json(d: dict) -> ProjectionConfig:
    """``ProjectionConfig.from_diffusers``: ``ValueError`` naming a missing or bad key."""
    return ProjectionConfig.from_diffusers(d)


def config_to_json(config: ProjectionConfig) -> dict:
    """The ``config.json`` ``AudioLDM2ProjectionModel.save_pretrained`` writes (with diffusers' spelling
    ``langauge_model_dim``). The reference builds the position table whenever ``use_learned_position_embedding``
    is not null, so "no table" is written as null."""
    c = config
    return {
        "_class_name": "AudioLDM2ProjectionModel", "_diffusers_version": DIFFUSERS_VERSION,
        "text_encoder_dim": c.text_encoder_dim, "text_encoder_1_dim": c.text_encoder_1_dim,
        "langauge_model_dim": c.language_model_dim,
        "use_learned_position_embedding": True if c.use_learned_position_embedding else None,
        "max_seq_length": c.max_seq_length,
    }


def to_flax(state_dict: Mapping[str, np.ndarray], config: ProjectionConfig, source: str = "projection model") -> dict:
    """The reference's state dict -> a bare params tree."""
    return convert_state_dict(state_dict, projection_param_shapes(config), source=source, transform=_transform)


def to_torch(params, config: ProjectionConfig) -> StateDict:
    """A bare params tree -> the reference's state dict (float32): the inverse of :func:`to_flax`."""
    return params_to_state_dict(params, frozenset(), transform=_transform_back)  # no ModuleList: no indices

