"""The short-time Fourier transform behind every front end and spectral loss of the project: the log-mel
(:mod:`audioldm2_jax.audio.mel`), the Kaldi fbank, the CLAP features, the vocoder stage's mel and STFT losses, and
the procedural dataset's estimators.

One definition for NumPy and JAX: the functions take the array module from their input (``x.__array_namespace__()``:
``numpy`` for host arrays, ``jax.numpy`` for device arrays and tracers), so the host input workers never import JAX
and the device path stays jit-able and differentiable. Frames are ``[k hop, k hop + frame_length)`` of the (padded)
signal, without partial frames: ``1 + (N + 2 pad - frame_length) // hop`` of them. Each caller forms its own
magnitude or power from the complex spectrum (``|z|``, ``|z|^2``, a gradient-safe ``sqrt(re^2 + im^2 + eps)``, the
reference's complex64 rounding).

Not ``jax.scipy.signal.stft`` / ``scipy.signal.ShortTimeFFT``: both scale the spectrum (by ``1 / sum(window)`` or
the PSD factor, undone only up to rounding), return ``[..., freq, time]``, and centre frames at ``k hop`` with their
own boundary extensions, while the references these front ends match (librosa / torch with ``center=False`` after
an explicit reflect pad, Kaldi's ``snip_edges``, HF's CLAP extractor in complex64) frame, window and transform
unscaled, and their parity tests compare at the reference's own rounding (the CLAP features to 1e-6).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def hann_window(length: int, periodic: bool = True) -> np.ndarray:
    """Hann window ``0.5 - 0.5 cos(2 pi n / M)``, float64 ``[length]`` (read-only): ``M = length`` when ``periodic``
    (``torch.hann_window``, ``scipy.signal.get_window("hann")``), ``M = length - 1`` otherwise (symmetric:
    ``numpy.hanning``, Kaldi's "hanning")."""
    if length < 2:
        raise ValueError(f"a Hann window needs at least 2 samples, got {length}")
    n = np.arange(length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (length if periodic else length - 1))
    window.setflags(write=False)
    return window


def num_frames(num_samples: int, frame_length: int, hop: int, pad: int = 0) -> int:
    """Frames of ``num_samples`` samples padded by ``pad`` on each side: ``1 + (N + 2 pad - frame_length) // hop``."""
    padded = int(num_samples) + 2 * int(pad)
    if padded < frame_length:
        raise ValueError(f"{num_samples} samples (padded by {pad} on each side) are fewer than one frame of "
                         f"{frame_length}")
    if hop < 1:
        raise ValueError(f"hop={hop} must be a positive number of samples")
    return 1 + (padded - frame_length) // hop


def frames(x, frame_length: int, hop: int):
    """``[..., N] -> [..., 1 + (N - frame_length) // hop, frame_length]``: frame ``k`` is samples
    ``[k hop, k hop + frame_length)`` (NumPy: a strided view, no copy; JAX: one gather)."""
    count = num_frames(x.shape[-1], frame_length, hop)
    if isinstance(x, np.ndarray):
        return np.lib.stride_tricks.sliding_window_view(x, frame_length, axis=-1)[..., ::hop, :]  # count frames
    index = hop * np.arange(count)[:, None] + np.arange(frame_length)[None, :]
    return x[..., index]


def windowed_rfft(framed, window: np.ndarray, fft_length: int | None = None):
    """``[..., F, L]`` frames times ``window`` ``[L]`` (cast to the frames' dtype), then the real FFT of
    ``fft_length`` points (default ``L``; more zero-pads each frame): ``[..., F, fft_length // 2 + 1]`` complex."""
    xp = framed.__array_namespace__()
    if window.shape != framed.shape[-1:]:
        raise ValueError(f"window of {window.shape[0]} samples for frames of {framed.shape[-1]}")
    return xp.fft.rfft(framed * xp.asarray(window, framed.dtype), n=fft_length, axis=-1)


def stft(x, window: np.ndarray, hop: int, pad: int = 0, pad_mode: str = "reflect", fft_length: int | None = None):
    """Complex STFT ``[..., N] -> [..., 1 + (N + 2 pad - L) // hop, fft_length // 2 + 1]`` with the frame length
    ``L = len(window)``: ``x`` padded by ``pad`` samples on each side (``numpy.pad`` mode ``pad_mode``), framed
    without centring (``torch.stft(center=False)``), windowed and transformed. ``center=True`` is ``pad=L // 2``."""
    xp = x.__array_namespace__()
    if pad:
        x = xp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode=pad_mode)
    return windowed_rfft(frames(x, window.shape[0], hop), window, fft_length)
