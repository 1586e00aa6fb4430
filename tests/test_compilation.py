"""The project's ahead-of-time compilation (``audioldm2_jax.compilation``): on CPU it compiles without XLA's YNNPACK
library fusions, computes the same values (a convolution + matrix product block against torch), leaves the choice
to ``XLA_FLAGS`` when the user made one, and falls back to XLA's defaults where an option is unknown."""

import numpy as np
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax import compilation

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 16, 8, 32)).astype(np.float32)  # NHWC
W = (RNG.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32)  # HWIO
P = (RNG.standard_normal((32, 24)) * 0.1).astype(np.float32)


def _block(x, w, p):
    """A 3x3 convolution, SiLU and a projection: the UNet's work that the library fusions take on CPU."""
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.silu(y) @ p


def _torch_block():
    y = torch.nn.functional.conv2d(torch.from_numpy(X).permute(0, 3, 1, 2), torch.from_numpy(W).permute(3, 2, 0, 1),
                                   padding=1)
    return (torch.nn.functional.silu(y).permute(0, 2, 3, 1) @ torch.from_numpy(P)).numpy()


def _lowered():
    return jax.jit(_block).lower(jnp.asarray(X), jnp.asarray(W), jnp.asarray(P))


def test_cpu_compiles_without_library_fusions_and_equals_torch():
    assert compilation.compiler_options("cpu") == compilation.CPU_COMPILER_OPTIONS
    compiled = compilation.compile_lowered(_lowered())
    assert "ynn" not in compiled.as_text()
    assert_close(compiled(X, W, P), _torch_block(), rel=1e-5)
    assert_close(compilation.compile_lowered(_lowered(), xla_defaults=True)(X, W, P), _torch_block(), rel=1e-5)


def test_options_left_to_xla_flags_and_other_backends(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
    assert compilation.compiler_options("cpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "")
    assert compilation.compiler_options("gpu") == {} and compilation.compiler_options("tpu") == {}


def test_unknown_option_falls_back_to_xla_defaults(monkeypatch):
    monkeypatch.setattr(compilation, "CPU_COMPILER_OPTIONS", {"xla_cpu_option_of_another_version": "1"})
    compiled = compilation.compile_lowered(_lowered())
    assert_close(compiled(X, W, P), _torch_block(), rel=1e-5)
