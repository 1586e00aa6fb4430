"""transformers ``SpeechT5HifiGan`` checkpoint -> (``VocoderConfig``, Flax params).

Weight normalisation is folded here: checkpoints saved while ``weight_norm`` was applied hold ``weight_g`` /
``weight_v`` (``torch.nn.utils.weight_norm``) or ``parametrizations.weight.original0`` / ``original1``
(``torch.nn.utils.parametrizations.weight_norm``) instead of ``weight``; the plain weight is
``g * v / ||v||`` with the norm taken over every axis but the first (``dim=0``, torch's default).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.convert.weights import (CheckpointError, convert_state_dict, load_state_dict, read_config,
                                           resolve_checkpoint)
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig

_WEIGHT_NORM_PAIRS = ((".weight_g", ".weight_v"),
                      (".parametrizations.weight.original0", ".parametrizations.weight.original1"))


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


def _transform(path: tuple[str, ...], value: np.ndarray):
    # ConvTranspose1d stores [c_in, c_out, k]; ours is [k, c_in, c_out] (the default ConvNd rule would swap in/out).
    if path[0].startswith("upsampler_") and path[-1] == "kernel":
        return np.transpose(value, (2, 0, 1))
    return None


def load_vocoder(folder: str | os.PathLike) -> tuple[VocoderConfig, dict]:
    """Reads ``folder/config.json`` and its weights written by ``SpeechT5HifiGan.save_pretrained``.

    The ``mean`` / ``scale`` buffers are kept only when ``normalize_before`` (the model has no use for them
    otherwise). Raises ``CheckpointError`` for a missing config or weights file, an unsupported config and weights
    that do not fit (every missing / unexpected / misshaped key).
    """
    folder = resolve_checkpoint(folder)
    try:
        config = VocoderConfig.from_transformers(read_config(folder))
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from err
    state = fold_weight_norm(load_state_dict(folder), source=str(folder))

    def rename(key: str) -> str | None:
        if key in ("mean", "scale") and not config.normalize_before:
            return None
        return key

    params = convert_state_dict(state, vocoder_param_shapes(config), source=str(folder), rename=rename,
                                transform=_transform)
    return config, params
