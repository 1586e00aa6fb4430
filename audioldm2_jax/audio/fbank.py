"""Kaldi log-mel filterbank features, the input of AudioMAE.

AudioMAE (and AudioLDM 2's AudioMAE conditioner) computes ``torchaudio.compliance.kaldi.fbank(wave,
htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
frame_shift=10)``. Spelled out, per the Kaldi definition that call follows:

* frames of 25 ms (400 samples) every 10 ms (160 samples), ``snip_edges=True``: only whole frames,
  ``1 + (N - 400) // 160`` of them;
* per frame: subtract the frame's mean (DC removal), then pre-emphasis ``x[i] -= 0.97 * x[i-1]`` with
  ``x[-1] := x[0]``, then the symmetric Hann window ``0.5 - 0.5 cos(2 pi n / 399)``, zero-padded to 512;
* power spectrum (257 bins), 128 triangular filters equally spaced on the HTK mel scale
  ``1127 ln(1 + f / 700)`` between 20 Hz and 8 kHz (triangles in the mel domain, no area normalisation);
* ``log(max(energy, FLT_EPSILON))``. ``htk_compat`` only moves the energy column, which ``use_energy=False``
  leaves out, so it changes nothing here.

AudioMAE then zero-pads or crops the features to 1024 frames and normalises them with the AudioSet statistics:
``(x + 4.2677393) / (4.5689974 * 2)``.

Input is the waveform in [-1, 1] (not scaled to int16, as torchaudio.load gives it). Only 16 kHz is accepted:
the mel edges and the normalisation statistics belong to that rate.
"""

from __future__ import annotations

import functools

import numpy as np

from audioldm2_jax.audio import stft

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
PADDED_LENGTH = 512  # frame length rounded up to a power of two
NUM_MEL_BINS = 128
LOW_FREQ = 20.0
PREEMPHASIS = 0.97
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's floor, 1.1920929e-07
TARGET_FRAMES = 1024
NORM_MEAN = -4.2677393
NORM_STD = 4.5689974


def _check_sample_rate(sample_rate: int) -> None:
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"the Kaldi fbank front end of AudioMAE takes 16000 Hz audio, got sample_rate="
                         f"{sample_rate}; resample first (audioldm2_jax.audio.io.resample)")


def num_frames(num_samples: int) -> int:
    """Frames of a clip of ``num_samples`` samples (``snip_edges=True``): ``1 + (N - 400) // 160``."""
    if num_samples < FRAME_LENGTH:
        raise ValueError(f"a clip of {num_samples} samples is shorter than one 25 ms fbank window "
                         f"({FRAME_LENGTH} samples at 16 kHz); pad it first")
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel_scale(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def mel_banks(num_mel_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Kaldi's triangular mel filters ``[num_mel_bins, 257]`` (float64; the Nyquist bin has weight 0)."""
    num_fft_bins = PADDED_LENGTH // 2
    nyquist = sample_rate / 2.0
    mel_low, mel_high = _mel_scale(LOW_FREQ), _mel_scale(nyquist)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    index = np.arange(num_mel_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    bin_mel = _mel_scale(np.arange(num_fft_bins) * (sample_rate / PADDED_LENGTH))[None, :]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    banks = np.concatenate([weights, np.zeros((num_mel_bins, 1))], axis=1)
    banks.setflags(write=False)
    return banks


def kaldi_hanning_window() -> np.ndarray:
    """Kaldi's "hanning" window: the *symmetric* Hann window of 400 samples."""
    return stft.hann_window(FRAME_LENGTH, periodic=False)


def power_spectrum(wave):
    """``[..., N] -> [..., 1 + (N - 400) // 160, 257]``: Kaldi's per-frame DC removal, pre-emphasis, window and
    512-point power spectrum (NumPy or JAX, in the input's dtype)."""
    num_frames(wave.shape[-1])  # a clear error for a clip shorter than one frame
    xp = wave.__array_namespace__()
    frames = stft.frames(wave, FRAME_LENGTH, FRAME_SHIFT)
    frames = frames - frames.mean(axis=-1, keepdims=True)
    previous = xp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    spectrum = stft.windowed_rfft(frames - PREEMPHASIS * previous, kaldi_hanning_window(), PADDED_LENGTH)
    return xp.real(spectrum) ** 2 + xp.imag(spectrum) ** 2


def kaldi_fbank(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """Raw Kaldi log-fbank of a mono clip (NumPy, float64 internally).

    Args:
      wave: ``[N]`` float waveform in [-1, 1] at 16 kHz, ``N >= 400``.
    Returns:
      float32 ``[1 + (N - 400) // 160, num_mel_bins]``.
    """
    _check_sample_rate(sample_rate)
    wave = np.asarray(wave, np.float64)
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform [N], got shape {wave.shape} "
                         "(use kaldi_fbank_jnp for batches)")
    energies = power_spectrum(wave) @ mel_banks(num_mel_bins, sample_rate).T
    return np.log(np.maximum(energies, LOG_FLOOR)).astype(np.float32)


def kaldi_fbank_jnp(wave: "jax.Array", sample_rate: int = SAMPLE_RATE,
                    num_mel_bins: int = NUM_MEL_BINS) -> "jax.Array":
    """Raw Kaldi log-fbank on the device: jit-able, batched, float32.

    Args:
      wave: ``[..., N]`` float waveform at 16 kHz (``N`` static under jit).
    Returns:
      ``[..., 1 + (N - 400) // 160, num_mel_bins]`` float32.
    """
    import jax  # imported here: the NumPy path (host input workers) never loads JAX
    import jax.numpy as jnp

    _check_sample_rate(sample_rate)
    power = power_spectrum(jnp.asarray(wave, jnp.float32))
    banks = jnp.asarray(mel_banks(num_mel_bins, sample_rate).T, jnp.float32)
    energies = jnp.matmul(power, banks, precision=jax.lax.Precision.HIGHEST)  # full fp32 on TPU too
    return jnp.log(jnp.maximum(energies, LOG_FLOOR))


def pad_or_crop_frames(features, target_frames: int = TARGET_FRAMES):
    """Zero-pads (at the end) or crops ``[..., F, bins]`` to ``target_frames`` frames (NumPy or jnp)."""
    count = features.shape[-2]
    if count >= target_frames:
        return features[..., :target_frames, :]
    pad = [(0, 0)] * (features.ndim - 2) + [(0, target_frames - count), (0, 0)]
    if isinstance(features, np.ndarray):
        return np.pad(features, pad)
    import jax.numpy as jnp

    return jnp.pad(features, pad)


def normalize(features):
    """AudioMAE's AudioSet normalisation ``(x + 4.2677393) / (4.5689974 * 2)``."""
    return (features - NORM_MEAN) / (NORM_STD * 2.0)


def audiomae_input(wave: np.ndarray, target_frames: int = TARGET_FRAMES,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """AudioMAE's input for one clip (NumPy): fbank, zero-pad / crop to ``target_frames``, normalise.

    Args:
      wave: ``[N]`` float waveform at 16 kHz.
    Returns:
      float32 ``[target_frames, 128]``.
    """
    features = pad_or_crop_frames(kaldi_fbank(wave, sample_rate), target_frames)
    return normalize(features).astype(np.float32)


def audiomae_input_jnp(wave: "jax.Array", target_frames: int = TARGET_FRAMES,
                       sample_rate: int = SAMPLE_RATE) -> "jax.Array":
    """AudioMAE's input on the device: ``[..., N]`` -> ``[..., target_frames, 128]`` float32 (jit-able)."""
    return normalize(pad_or_crop_frames(kaldi_fbank_jnp(wave, sample_rate), target_frames))
