"""The 64-bin log-mel spectrogram of the VAE, the LDM and the HiFi-GAN vocoder.

This is AudioLDM's training-time front end, reproduced exactly:

* 16 kHz mono waveform, STFT with ``n_fft = win_length = 1024`` (periodic Hann window, as ``torch.hann_window``)
  and hop 160 (10 ms);
* the signal is reflect-padded by ``(1024 - 160) / 2 = 432`` samples on each side and the STFT is taken with
  ``center=False``, so that ``N`` samples give ``N // 160`` frames (10.24 s = 163840 samples = 1024 frames);
* the *magnitude* (not power) spectrum is projected on librosa's Slaney-normalised mel basis (64 bins, 0-8000 Hz);
* ``log(max(x, 1e-5))``.

Two implementations with one definition: :func:`log_mel_spectrogram` (NumPy, float64 internally, for the host
side of the input pipeline) and :func:`log_mel_spectrogram_jnp` (jit-able, float32, batched, for computing the
features on the accelerator).
"""

from __future__ import annotations

import functools

import numpy as np

from audioldm2_jax.audio import stft

SAMPLE_RATE = 16000
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 160
N_MELS = 64
F_MIN = 0.0
F_MAX = 8000.0
LOG_FLOOR = 1e-5
# Reflect padding on each side: makes the frame count N // hop (the reference pads (n_fft - hop) / 2).
PAD = (N_FFT - HOP_LENGTH) // 2


def num_frames(num_samples: int) -> int:
    """Number of mel frames for ``num_samples`` samples: ``1 + (N + 2 * 432 - 1024) // 160`` (= ``N // 160``)."""
    num_samples = int(num_samples)
    if num_samples <= PAD:
        raise ValueError(f"a waveform of {num_samples} samples is too short for the mel front end: reflect "
                         f"padding needs more than {PAD} samples ({PAD / SAMPLE_RATE * 1000:.0f} ms)")
    return 1 + (num_samples + 2 * PAD - N_FFT) // HOP_LENGTH


@functools.lru_cache(maxsize=None)
def mel_basis() -> np.ndarray:
    """librosa's Slaney mel filterbank ``[64, 513]`` (float32, as the reference stores it), built once."""
    import librosa  # imported lazily: librosa pulls numba, slow to import

    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX)
    basis = np.asarray(basis, np.float32)
    basis.setflags(write=False)
    return basis


def hann_window() -> np.ndarray:
    """Periodic Hann window of length 1024 (``torch.hann_window`` default, ``scipy.signal.get_window('hann')``)."""
    return stft.hann_window(WIN_LENGTH)


def spectrum(wave):
    """``[..., N] -> [..., N // 160, 513]`` complex: the reflect-padded STFT of the front end (NumPy or JAX, in the
    input's dtype)."""
    _check_length(wave.shape[-1])
    return stft.stft(wave, hann_window(), HOP_LENGTH, pad=PAD)


def _check_length(num_samples: int) -> None:
    num_frames(num_samples)  # raises a clear error for too-short input


def log_mel_spectrogram(wave: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram on the host (NumPy).

    Args:
      wave: float waveform at 16 kHz, ``[N]`` or ``[..., N]``.
    Returns:
      float32 ``[..., T, 64]`` with ``T = N // 160``.
    """
    wave = np.asarray(wave, np.float64)
    if wave.ndim == 0:
        raise ValueError("log_mel_spectrogram expects a waveform [N] or [B, N], got a scalar")
    magnitude = np.abs(spectrum(wave))  # [..., T, 513]
    mel = magnitude @ mel_basis().T.astype(np.float64)  # [..., T, 64]
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def log_mel_spectrogram_jnp(wave: "jax.Array") -> "jax.Array":
    """Log-mel spectrogram on the device: jit-able, any leading batch dimensions, float32.

    Args:
      wave: ``[..., N]`` float waveform at 16 kHz (``N`` static under jit).
    Returns:
      ``[..., N // 160, 64]`` float32.
    """
    import jax  # imported here: the NumPy path (host input workers) never loads JAX
    import jax.numpy as jnp

    magnitude = jnp.abs(spectrum(jnp.asarray(wave, jnp.float32)))
    # HIGHEST: TPUs otherwise multiply in bf16, which moves the log-mel by ~1e-2.
    mel = jnp.matmul(magnitude, jnp.asarray(mel_basis().T), precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))
