"""Test setup: 8 simulated CPU devices (set before JAX starts) and the shared comparison helper."""

import os

# Tests run tiny models where XLA:CPU's compile time dominates: skip LLVM's expensive optimisations (3-4x faster
# compiles; numerics are unchanged, only the generated code is slower).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# XLA:CPU compiles threefry-based initialisers very slowly (minutes for a small UNet); the RngBitGenerator
# implementation compiles in seconds. Tests never depend on the particular random stream.
jax.config.update("jax_default_prng_impl", "unsafe_rbg")


def assert_close(ours, ref, rel: float = 1e-4, what: str = "output"):
    """Max abs error within ``rel`` of the reference's scale (max |ref|), the project's parity criterion."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(ours - ref).max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel:g} x scale {scale:.3e}"
    return err / scale


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(2)
    except ImportError:  # the reference is only needed by parity tests
        pass
    yield
