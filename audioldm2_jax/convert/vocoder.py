"""transformers ``SpeechT5HifiGan`` <-> ``HifiGanVocoder``: its ``config.json`` <-> ``VocoderConfig``, its state dict
(``model.safetensors``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``resblocks.3.convs1.2.weight`` <->
``resblocks_3/convs1_2/kernel``, Conv1d ``(out, in, k)`` <-> ``(k, in, out)``). Special cases: the upsamplers'
ConvTranspose1d weights ``(in, out, k)`` <-> ``(k, in, out)``; the ``mean`` / ``scale`` buffers are parameters only
with ``normalize_before``.

Weight normalisation is folded here: checkpoints saved while ``weight_norm`` was applied hold ``weight_g`` /
``weight_v`` (``torch.nn.utils.weight_norm``) or ``parametrizations.weight.original0`` / ``original1``
(``torch.nn.utils.parametrizations.weight_norm``) instead of ``weight``; the plain weight is
``g * v / ||v||`` with the norm taken over every axis but the first (``dim=0``, torch's default).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import (TRANSFORMERS_VERSION, CheckpointError, StateDict, convert_state_dict,
                                           params_to_state_dict)
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig

_WEIGHT_NORM_PAIRS = ((".weight_g", ".weight_v"),
                      (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
# The reference's ModuleList attributes (``upsampler.0``, ``resblocks.3.convs1.2``).
_CONTAINERS = frozenset({"upsampler", "resblocks", "convs1", "convs2"})
# ``SpeechT5HifiGanConfig.initializer_range``: only the reference's random init reads it.
_INITIALIZER_RANGE = 0.01


def vocoder_param_shapes(config: VocoderConfig):
    """The abstract params tree (``ShapeDtypeStruct`` leaves, logical axes boxed) of ``HifiGanVocoder(config)``."""
    model = HifiGanVocoder(config)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, config.model_in_dim)))["params"]


def fold_weight_norm(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Replaces every weight-norm (magnitude, direction) pair by the plain ``<module>.weight`` it stands for."""
    out = dict(state_dict)
    for g_suffix, v_suffix in _WEIGHT_NORM_PAIRS:
        for g_key in [k for k in state_dict if k.endswith(g_suffix)]:
            module = g_key[: -len(g_suffix)]
            v_key = module + v_suffix
            if v_key not in state_dict:
                raise CheckpointError(f"{source}: {g_key} has no matching {v_key}")
            g = np.asarray(state_dict[g_key], np.float64)
            v = np.asarray(state_dict[v_key], np.float64)
            norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
            out[module + ".weight"] = (g.reshape(norm.shape) * v / norm).astype(np.float32)
            del out[g_key], out[v_key]
    return out


def _is_upsampler(path: tuple[str, ...]) -> bool:
    return path[0].startswith("upsampler_") and path[-1] == "kernel"


def _transform(path: tuple[str, ...], value: np.ndarray):
    # ConvTranspose1d stores [c_in, c_out, k]; ours is [k, c_in, c_out] (the default ConvNd rule would swap in/out).
    return np.transpose(value, (2, 0, 1)) if _is_upsampler(path) else None


def _transform_back(path: tuple[str, ...], value: np.ndarray):
    return np.transpose(value, (1, 2, 0)) if _is_upsampler(path) else None


def config_from_json(d: dict) -> VocoderConfig:
    """``VocoderConfig.from_transformers``: ``ValueError`` for a config the reference cannot run."""
    return VocoderConfig.from_transformers(d)


def config_to_json(config: VocoderConfig) -> dict:
    """The ``config.json`` ``SpeechT5HifiGan.save_pretrained`` writes for this architecture."""
    c = config
    return {
        "architectures": ["SpeechT5HifiGan"], "model_type": "speecht5_hifigan", "dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION, "initializer_range": _INITIALIZER_RANGE,
        "model_in_dim": c.model_in_dim, "sampling_rate": c.sampling_rate,
        "upsample_initial_channel": c.upsample_initial_channel, "upsample_rates": list(c.upsample_rates),
        "upsample_kernel_sizes": list(c.upsample_kernel_sizes), "resblock_kernel_sizes": list(c.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in c.resblock_dilation_sizes],
        "leaky_relu_slope": c.leaky_relu_slope, "normalize_before": c.normalize_before,
    }


def to_flax(state_dict: Mapping[str, np.ndarray], config: VocoderConfig, source: str = "vocoder") -> dict:
    """The reference's state dict (plain or weight-normalised convolutions) -> a bare params tree. The ``mean`` /
    ``scale`` buffers are kept only when ``normalize_before`` (the model has no use for them otherwise)."""
    state = fold_weight_norm(state_dict, source=source)

    def rename(key: str) -> str | None:
        if key in ("mean", "scale") and not config.normalize_before:
            return None
        return key

    return convert_state_dict(state, vocoder_param_shapes(config), source=source, rename=rename,
                              transform=_transform)


def to_torch(params, config: VocoderConfig) -> StateDict:
    """A bare params tree -> the reference's state dict (plain convolution weights, float32): the inverse of
    :func:`to_flax`. The reference always holds the ``mean`` / ``scale`` buffers; without ``normalize_before`` they
    are written at the values it initialises them to (zeros, ones), so that loading misses nothing."""
    state = params_to_state_dict(params, _CONTAINERS, transform=_transform_back)
    if not config.normalize_before:
        state["mean"] = np.zeros((config.model_in_dim,), np.float32)
        state["scale"] = np.ones((config.model_in_dim,), np.float32)
    return state

