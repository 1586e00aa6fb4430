"""Initialisations that make a random PyTorch reference a fair parity test (shared by tests and bench scripts)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

import flax.linen as nn
import jax
import numpy as np


def fan_in_vocoder(model) -> None:
    """A ``SpeechT5HifiGan`` re-initialised in place from torch's global generator: every convolution fan-in-scaled
    (transformers' normal(0, 0.01) init shrinks the signal at every layer, leaving a ~1e-6 output that a comparison
    would make on rounding noise), biases normal(0, 0.1), and non-trivial ``mean`` / ``scale`` buffers."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                w = module.weight
                fan_in = w.shape[0 if isinstance(module, torch.nn.ConvTranspose1d) else 1] * w.shape[2]
                w.normal_(0.0, 1.0 / fan_in ** 0.5)
                module.bias.normal_(0.0, 0.1)
        model.mean.copy_(torch.randn_like(model.mean))
        model.scale.copy_(1.0 + torch.rand_like(model.scale))


@contextlib.contextmanager
def without_package_init(package: str):
    """Imports of ``package``'s submodules inside skip its ``__init__``: ``panns_inference/__init__.py`` imports its
    ``config.py``, which downloads AudioSet's label CSV with wget into ``~/panns_data`` at import time (no network in
    tests, and the labels are not needed). A bare package object with the real search path stands in for the
    package while inside; ``sys.modules`` is restored on exit, so a later plain import gets the real package."""
    saved = {name: mod for name, mod in sys.modules.items() if name == package or name.startswith(package + ".")}
    for name in saved:
        del sys.modules[name]
    stub = types.ModuleType(package)
    stub.__path__ = list(importlib.util.find_spec(package).submodule_search_locations)
    sys.modules[package] = stub
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        sys.modules.update(saved)


def save_pth(state: dict, path) -> str:
    """A state dict of arrays saved as torch tensors (a ``.pth`` as the published weights are); returns the path."""
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)
    return str(path)


def random_extractor_params(module, inputs, seed):
    """Random parameters of a feature extractor (VGGish, CNN14) for ``module.init(key, *inputs)``: he-normal kernels, small random biases and BatchNorm affines, unit running statistics (``bn0``: statistics
    of dB log-mels, so the network sees inputs of unit scale), drawn in NumPy: initialising the 80 M-parameter CNN14
    through Flax would trace its whole forward pass. Drawn in float32 and scaled in place: float64 draws cast
    afterwards take 6x longer for VGGish's 72 M parameters (12 s against 2 s on the shared CPU)."""
    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"])

    def normal(shape, std, mean=0.0):
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(std)
        x += np.float32(mean)
        return x

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return normal(shape, np.sqrt(2.0 / np.prod(shape[:-1])))
        if name == "running_mean":
            return np.full(shape, -40.0 if path[0].key == "bn0" else 0.0, np.float32)
        if name == "running_var":
            return np.full(shape, 400.0 if path[0].key == "bn0" else 1.0, np.float32)
        if name == "scale":
            return normal(shape, 0.1, 1.0)
        return normal(shape, 0.05)

    return jax.tree_util.tree_map_with_path(draw, shapes)
