"""The shared STFT (audioldm2_jax.audio.stft) against torch.stft, an explicit DFT and scipy's / numpy's windows, on
the host (NumPy, float64) and on the device (JAX, float32, under jit and grad)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch

from audioldm2_jax.audio import stft
from conftest import assert_close


@pytest.mark.parametrize("n_fft,hop", [(64, 16), (50, 7)])
def test_centred_stft_equals_torch_stft(n_fft, hop):
    x = np.random.default_rng(0).standard_normal((2, 403))
    ours = stft.stft(x, stft.hann_window(n_fft), hop, pad=n_fft // 2)
    ref = torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True).numpy().swapaxes(-1, -2)
    assert ours.shape == ref.shape == (2, 1 + 403 // hop, n_fft // 2 + 1)
    assert_close(ours.real, ref.real, rel=1e-12, what="real part")
    assert_close(ours.imag, ref.imag, rel=1e-12, what="imaginary part")
    # center=False: the frames [k hop, k hop + n_fft) of the unpadded signal
    plain = torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                       center=False, return_complex=True).numpy().swapaxes(-1, -2)
    assert_close(np.abs(stft.stft(x, stft.hann_window(n_fft), hop)), np.abs(plain), rel=1e-12)


def test_zero_padded_fft_equals_the_dft_of_the_windowed_frames():
    """Kaldi's 400-sample frames in a 512-point FFT, against the DFT sum written out."""
    x = np.random.default_rng(1).standard_normal(1000)
    window = stft.hann_window(400, periodic=False)
    ours = stft.stft(x, window, 160, fft_length=512)
    count = 1 + (1000 - 400) // 160
    n, k = np.arange(400), np.arange(257)
    basis = np.exp(-2j * np.pi * np.outer(n, k) / 512)
    want = np.stack([(x[i * 160:i * 160 + 400] * window) @ basis for i in range(count)])
    assert ours.shape == want.shape == (count, 257)
    assert float(np.abs(ours - want).max()) <= 1e-12 * float(np.abs(want).max())


def test_hann_windows_match_scipy_and_numpy():
    np.testing.assert_allclose(stft.hann_window(1024), scipy.signal.get_window("hann", 1024), rtol=0, atol=1e-15)
    np.testing.assert_allclose(stft.hann_window(400, periodic=False), np.hanning(400), rtol=0, atol=1e-15)
    assert not stft.hann_window(16).flags.writeable


def test_jax_path_matches_numpy_and_is_differentiable():
    x = np.random.default_rng(2).standard_normal((3, 800))
    window = stft.hann_window(256)
    host = stft.stft(x, window, 64, pad=100)
    device = jax.jit(lambda v: stft.stft(v, window, 64, pad=100))(jnp.asarray(x, jnp.float32))
    assert device.dtype == jnp.complex64 and device.shape == host.shape
    assert_close(np.asarray(device).real, host.real, rel=1e-5)
    assert_close(np.asarray(device).imag, host.imag, rel=1e-5)
    # gradients flow through the framing (a gather) and the FFT: against the same energy as a DFT matrix product
    basis = np.exp(-2j * np.pi * np.outer(np.arange(256), np.arange(129)) / 256)
    energy = lambda v: jnp.sum(jnp.abs(stft.stft(v, window, 64)) ** 2)  # noqa: E731
    frames = np.arange(0, 800 - 255, 64)[:, None] + np.arange(256)[None, :]
    energy_ref = lambda v: jnp.sum(jnp.abs((v[frames] * window) @ basis) ** 2)  # noqa: E731
    v = jnp.asarray(x[0], jnp.float32)
    assert_close(jax.grad(energy)(v), jax.grad(energy_ref)(v), rel=1e-5, what="gradient")


def test_bad_inputs_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="fewer than one frame of 64"):
        stft.stft(np.zeros(40), stft.hann_window(64), 16)
    with pytest.raises(ValueError, match="window of 32 samples for frames of 64"):
        stft.windowed_rfft(np.zeros((3, 64)), stft.hann_window(32))
    with pytest.raises(ValueError, match="hop=0"):
        stft.frames(np.zeros(100), 10, 0)
