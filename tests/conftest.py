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


# Subprocesses the tests start (train.py, launches) inherit os.environ: a test that left XLA's start-up flags
# changed would give every later subprocess of its worker another device count, and so other numerics.
_XLA_FLAGS_AT_START = os.environ.get("XLA_FLAGS")


@pytest.fixture(autouse=True)
def _xla_flags_unchanged():
    yield
    now = os.environ.get("XLA_FLAGS")
    if now != _XLA_FLAGS_AT_START:
        if _XLA_FLAGS_AT_START is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = _XLA_FLAGS_AT_START
        pytest.fail(f"the test left XLA_FLAGS={now!r} (was {_XLA_FLAGS_AT_START!r}); later subprocesses would "
                    "inherit it")


def assert_close(ours, ref, rel: float = 1e-4, what: str = "output"):
    """Max abs error within ``rel`` of the reference's scale (max |ref|), the project's parity criterion."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(ours - ref).max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3e} > {rel:g} x scale {scale:.3e}"
    return err / scale


def perturb_every_tensor(model, seed: int, vector_std: float = 0.3) -> None:
    """Adds seeded noise to every floating tensor of a torch reference's ``state_dict()``, so that a parity test sees
    every parameter (transformers initialises biases to zero and norm scales to one: a wrong mapping of those would
    pass): ``N(0, 1/fan_in)`` on matrices and kernels (a fan-in init's scale, activations stay O(1)),
    ``N(0, vector_std^2)`` on vectors."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                std = tensor[0].numel() ** -0.5 if tensor.ndim >= 2 else vector_std
                tensor.add_(std * torch.randn(tensor.shape, generator=generator))


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(2)
    except ImportError:  # the reference is only needed by parity tests
        pass
    yield
