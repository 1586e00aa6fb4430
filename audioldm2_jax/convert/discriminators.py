"""Discriminator checkpoints (PatchGAN, HiFi-GAN MPD / MSD) from PyTorch: plain, weight-normed or spectral-normed
convolutions -> Flax params of ``models/discriminators.py``."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from audioldm2_jax.convert.weights import convert_state_dict, plain_params, torch_key_to_path

# Names torch >= 2.1 gives weight-norm parametrisations (g, v).
_WN_NEW = (".parametrizations.weight.original0", ".parametrizations.weight.original1")


def convert_torch_discriminator(state_dict: Mapping[str, Any], expected: Mapping, *,
                                source: str = "discriminator") -> dict:
    """A PyTorch discriminator state dict -> Flax params shaped like ``expected`` (``jax.eval_shape`` of init).

    Conv weights may be plain (``weight``), weight-normed (``weight_g`` / ``weight_v``, or the parametrisation
    API's ``parametrizations.weight.original0`` / ``original1``) or spectral-normed (``weight_orig`` with its
    power-iteration vectors ``weight_u`` / ``weight_v``: folded to ``weight_orig / sigma``, ``sigma = u^T W v``,
    what torch uses in eval mode). Each becomes what the Flax layer has: ``kernel``, or ``kernel_g`` /
    ``kernel_v`` (a weight-normed torch layer keeps its ``g`` and ``v``; other weights ``W`` give ``v = W``,
    ``g = ||W||``). Keys are otherwise renamed mechanically (``convs.0`` -> ``convs_0``); BatchNorm buffers and
    any other mismatch are reported by ``convert_state_dict``'s ``CheckpointError``.
    """


    sd = {k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
          for k, v in state_dict.items()}
    expected_flat = traverse_util.flatten_dict(plain_params(expected))
    out: dict[str, np.ndarray] = {}
    done: set[str] = set()

    def emit(prefix: str, weight: np.ndarray | None, g: np.ndarray | None = None, v: np.ndarray | None = None):
        path = torch_key_to_path(prefix)
        if path + ("kernel_g",) in expected_flat:
            if g is None:
                g, v = np.sqrt(np.sum(np.square(weight.astype(np.float64)), axis=tuple(range(1, weight.ndim)))), weight
            out[prefix + ".kernel_g"] = np.asarray(g, np.float32).reshape(-1)
            out[prefix + ".kernel_v"] = v
        else:
            if weight is None:
                norm = np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=tuple(range(1, v.ndim)), keepdims=True))
                weight = (g.reshape(norm.shape) * v / norm).astype(np.float32)
            out[prefix + ".weight"] = weight

    for key in sd:
        if key.endswith(".weight_orig"):
            prefix = key[: -len(".weight_orig")]
            w, u, v = sd[key], sd.get(prefix + ".weight_u"), sd.get(prefix + ".weight_v")
            if u is None or v is None:
                raise ValueError(f"{source}: spectral-normed {prefix} lacks weight_u / weight_v")
            w64 = w.astype(np.float64)
            sigma = float(u.astype(np.float64) @ (w64.reshape(w.shape[0], -1) @ v.astype(np.float64)))
            emit(prefix, (w64 / sigma).astype(np.float32))
            done |= {key, prefix + ".weight_u", prefix + ".weight_v"}
    for key in sd:
        if key in done:
            continue
        if key.endswith(".weight_g") or key.endswith(_WN_NEW[0]):
            old = key.endswith(".weight_g")
            prefix = key[: -len(".weight_g")] if old else key[: -len(_WN_NEW[0])]
            v_key = prefix + (".weight_v" if old else _WN_NEW[1])
            if v_key not in sd:
                raise ValueError(f"{source}: weight-normed {prefix} lacks {v_key}")
            emit(prefix, None, sd[key], sd[v_key])
            done |= {key, v_key}
    for key, value in sd.items():
        if key in done:
            continue
        if key.endswith(".weight") and value.ndim >= 3:
            emit(key[: -len(".weight")], value)
        else:
            out[key] = value

    def transform(path, value):
        if path[-1] == "kernel_v":  # torch ConvNd (out, in, *k) -> (*k, in, out)
            return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
        return None

    return convert_state_dict(out, expected, source=source, transform=transform)
