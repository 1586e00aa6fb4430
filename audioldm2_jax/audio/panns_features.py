"""The log-mel front end of the PANNs CNN14 audio tagger (torchlibrosa's ``Spectrogram`` + ``LogmelFilterBank`` as
``Cnn14`` configures them), used by the FD / KL / IS metrics.

At the 16 kHz settings of ``Cnn14_16k_mAP=0.438.pth``:

* centred frames: the waveform is reflect-padded by ``window_size // 2 = 256`` samples on each side and framed every
  160 samples without partial frames, so ``N`` samples give ``1 + N // 160`` frames (2 s = 32000 samples -> 201);
* periodic Hann window of 512 samples (``librosa.filters.get_window("hann", 512, fftbins=True)``), 512-point DFT,
  the *power* spectrum ``re^2 + im^2`` (torchlibrosa's ``power=2.0``);
* librosa's Slaney mel filter bank (area-normalised, Slaney mel scale), 64 bins from 50 to 8000 Hz;
* ``10 log10(max(mel, amin))`` with ``amin = 1e-10``, minus ``10 log10(max(amin, ref))`` with ``ref = 1`` (zero),
  no ``top_db`` clipping (``Cnn14`` passes ``top_db=None``).

torchlibrosa computes the DFT as two strided ``Conv1d`` with the DFT matrix times the window as kernels (stored in
the checkpoint as ``spectrogram_extractor.stft.conv_real`` / ``conv_imag``) and keeps the mel matrix as a parameter
(``logmel_extractor.melW``). Those are the same linear maps as the windowed real FFT of the shared STFT
(:mod:`audioldm2_jax.audio.stft`) and the Slaney filters of :mod:`audioldm2_jax.audio.clap_features`, so the front
end here recomputes them: an FFT is cheaper than a 512 x 257 x 2 matrix product per frame, and nothing of it is a
learned weight. The converter checks that a checkpoint's stored matrices are these (:func:`dft_kernels`,
:func:`mel_filters`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from audioldm2_jax.audio import stft
from audioldm2_jax.audio.clap_features import slaney_mel_filters

# Fixed by ``Cnn14`` itself (not constructor arguments): the dB conversion's floor and reference, no top_db.
AMIN = 1e-10
REF = 1.0


@dataclasses.dataclass(frozen=True)
class PannsFrontEnd:
    """torchlibrosa front-end settings; the defaults are the 16 kHz CNN14's (``Cnn14_16k_mAP=0.438.pth``). The
    32 kHz checkpoints use ``PannsFrontEnd(32000, 1024, 320, 64, 50, 14000)``."""

    sample_rate: int = 16000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0

    def __post_init__(self):
        if self.window_size < 2 or self.hop_size < 1 or self.mel_bins < 1:
            raise ValueError(f"PANNs front end: window_size={self.window_size}, hop_size={self.hop_size} and "
                             f"mel_bins={self.mel_bins} must be positive (window_size at least 2)")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"PANNs front end: need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, "
                             f"fmax={self.fmax}, sample_rate={self.sample_rate}")

    @property
    def pad(self) -> int:
        """Reflect padding on each side (``center=True``): ``window_size // 2``."""
        return self.window_size // 2

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples`` samples: ``1 + N // hop_size`` for an even window."""
        num_samples = int(num_samples)
        if num_samples <= self.pad:
            # torch's reflect padding (and NumPy's, here) needs more samples than it pads.
            raise ValueError(f"a waveform of {num_samples} samples is too short for the PANNs front end: reflect "
                             f"padding by {self.pad} needs more than {self.pad} samples")
        return stft.num_frames(num_samples, self.window_size, self.hop_size, pad=self.pad)


def window(front_end: PannsFrontEnd) -> np.ndarray:
    """Periodic Hann window ``[window_size]`` float64 (``librosa.filters.get_window("hann", n, fftbins=True)``)."""
    return stft.hann_window(front_end.window_size, periodic=True)


@functools.lru_cache(maxsize=None)
def mel_filters(front_end: PannsFrontEnd) -> np.ndarray:
    """``[window_size // 2 + 1, mel_bins]`` float32: ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T``, the
    layout of torchlibrosa's ``melW`` (read-only, built once per setting)."""
    f = front_end
    out = slaney_mel_filters(f.sample_rate, f.window_size, f.mel_bins, f.fmin, f.fmax).astype(np.float32)
    out.setflags(write=False)
    return out


def dft_kernels(front_end: PannsFrontEnd) -> tuple[np.ndarray, np.ndarray]:
    """torchlibrosa's STFT convolution kernels ``(conv_real, conv_imag)``, each ``[n_fft // 2 + 1, 1, n_fft]``
    float64: ``Re`` / ``Im`` of ``exp(-2 pi i k n / n_fft) * window[n]`` (what a checkpoint stores, in float32)."""
    n_fft = front_end.window_size
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    kernel = np.exp(-2j * np.pi * ((k * n) % n_fft) / n_fft) * window(front_end)[None, :]
    return kernel.real[:, None, :], kernel.imag[:, None, :]


def power_spectrogram(wave, front_end: PannsFrontEnd = PannsFrontEnd()):
    """``[..., N] -> [..., 1 + N // hop, window_size // 2 + 1]`` power spectrum (NumPy or JAX, in the input's real
    dtype): centred, reflect-padded frames, periodic Hann window."""
    front_end.num_frames(wave.shape[-1])  # a clear error for too-short input
    spectrum = stft.stft(wave, window(front_end), front_end.hop_size, pad=front_end.pad, pad_mode="reflect")
    return spectrum.real ** 2 + spectrum.imag ** 2


def log_mel(wave, front_end: PannsFrontEnd = PannsFrontEnd()):
    """Waveform ``[..., N]`` at ``front_end.sample_rate`` -> dB log-mel ``[..., 1 + N // hop, mel_bins]``.

    NumPy input is computed in float64 and returned as float32; JAX input (jit-able) in its own float dtype (float32
    for integer input). The mel projection multiplies at full precision: TPUs would otherwise round its operands to
    bfloat16, which moves low-energy bins by tenths of a dB.
    """
    xp = wave.__array_namespace__()
    if wave.ndim == 0:
        raise ValueError("PANNs log_mel expects a waveform [N] or [..., N], got a scalar")
    if isinstance(wave, np.ndarray):
        power = power_spectrogram(wave.astype(np.float64), front_end)
        mel = power @ mel_filters(front_end).astype(np.float64)
        return _power_to_db(np, mel).astype(np.float32)
    if not xp.issubdtype(wave.dtype, xp.floating):
        wave = wave.astype(xp.float32)
    power = power_spectrogram(wave, front_end)
    mel = xp.matmul(power, xp.asarray(mel_filters(front_end), power.dtype), precision="highest")
    return _power_to_db(xp, mel)


def _power_to_db(xp, mel):
    # torchlibrosa's power_to_db with top_db=None; the reference term is 0 for ref=1 but kept for its definition.
    return 10.0 * xp.log10(xp.maximum(mel, AMIN)) - 10.0 * np.log10(max(AMIN, REF))
