"""VGGish's own front end (AudioSet's VGGish, as torchvggish's ``vggish_input.waveform_to_examples`` computes it):
16 kHz waveform -> log-mel examples ``[E, 96, 64]`` for :mod:`audioldm2_jax.models.vggish`.

* STFT of the unpadded signal: 25 ms windows (400 samples, periodic Hann), 10 ms hop (160), 512-point FFT, the
  *magnitude* spectrum ``[T, 257]`` with ``T = 1 + (N - 400) // 160`` (no partial frames, no centring);
* 64 HTK mel bands from 125 to 7500 Hz (``1127 ln(1 + f / 700)``), triangles linear in *mel* (not in Hz, unlike
  librosa's and torchaudio's filters), the DC bin weighted zero, not area-normalised;
* ``log(mel + 0.01)``;
* non-overlapping 0.96 s examples: 96 frames with hop 96, incomplete ones dropped, ``E = 1 + (T - 96) // 96``
  (a 10 s clip: 998 frames, 10 examples). Clips shorter than :data:`MIN_SAMPLES` (0.975 s) give no example, as in
  the reference; the FAD tools pad short clips themselves before this step (``audioldm_eval`` to 2 s).

The reference computes in float64 (NumPy) and hands float32 examples to the network. :func:`waveform_to_examples`
does the same on the host; :func:`log_mel_examples` is the jit-able, batched float32 version for the device
(``[B, N] -> [B, E, 96, 64]``). Both frame, window and transform through the project's STFT
(:mod:`audioldm2_jax.audio.stft`), whose periodic Hann window and unscaled ``rfft`` of ``[k hop, k hop + 400)``
frames are the reference's ``stft_magnitude`` (the window's cosine argument is rounded in another order: a
difference of a float64 ulp).

Resampling is the caller's: the reference resamples other rates with ``resampy``; the FAD tools resample before
(``audioldm_eval`` with torchaudio), so this module takes 16 kHz audio only.
"""

from __future__ import annotations

import functools

import numpy as np

from audioldm2_jax.audio import stft

SAMPLE_RATE = 16000
WINDOW_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
FFT_LENGTH = 512  # the next power of two of the window
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_HOP = 96  # non-overlapping
# The shortest clip with one example: 96 frames of 400 samples every 160.
MIN_SAMPLES = WINDOW_LENGTH + (EXAMPLE_FRAMES - 1) * HOP_LENGTH

# The HTK mel scale in the natural-log form of VGGish's ``mel_features`` (1127 ln(1 + f / 700)).
_MEL_BREAK_HZ = 700.0
_MEL_Q = 1127.0


def hertz_to_mel(hz):
    """HTK mel of ``hz`` (Hz, any shape): ``1127 ln(1 + hz / 700)``."""
    return _MEL_Q * np.log(1.0 + np.asarray(hz, np.float64) / _MEL_BREAK_HZ)


@functools.lru_cache(maxsize=None)
def mel_matrix() -> np.ndarray:
    """``[257, 64]`` float64 (read-only): post-multiplies a magnitude spectrum ``[T, 257]`` into mel bands.

    Band ``i`` is a triangle on the mel axis from edge ``i`` through ``i + 1`` to ``i + 2`` of 66 edges equally
    spaced in mel between 125 and 7500 Hz, sampled at the bins' frequencies ``linspace(0, 8000, 257)``; the DC bin
    gets weight zero (HTK excludes it)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


def num_frames(num_samples: int) -> int:
    """STFT frames of ``num_samples`` samples, ``1 + (N - 400) // 160``; 0 below one window."""
    num_samples = int(num_samples)
    return 0 if num_samples < WINDOW_LENGTH else 1 + (num_samples - WINDOW_LENGTH) // HOP_LENGTH


def num_examples(num_samples: int) -> int:
    """0.96 s examples of ``num_samples`` samples at 16 kHz, ``1 + (T - 96) // 96`` with ``T`` = :func:`num_frames`;
    0 for clips shorter than :data:`MIN_SAMPLES`."""
    frames = num_frames(num_samples)
    return 0 if frames < EXAMPLE_FRAMES else 1 + (frames - EXAMPLE_FRAMES) // EXAMPLE_HOP


def _check_rate(sample_rate: int) -> None:
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"VGGish features take {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample first")


def log_mel(wave):
    """``[..., N] -> [..., T, 64]`` log-mel frames ``log(|STFT| @ mel_matrix + 0.01)``, ``T`` = :func:`num_frames`
    (at least 1), in the input's array module and float dtype (NumPy float64 on the host, ``jax.numpy`` float32 on
    the device)."""
    if wave.ndim == 0 or wave.shape[-1] < WINDOW_LENGTH:
        raise ValueError(f"a waveform of shape {wave.shape} is shorter than one VGGish window "
                         f"({WINDOW_LENGTH} samples, 25 ms)")
    xp = wave.__array_namespace__()
    magnitude = xp.abs(stft.stft(wave, stft.hann_window(WINDOW_LENGTH), HOP_LENGTH, fft_length=FFT_LENGTH))
    mel = magnitude @ xp.asarray(mel_matrix(), magnitude.dtype)
    return xp.log(mel + LOG_OFFSET)


def frames_to_examples(log_mel_frames):
    """``[..., T, 64] -> [..., E, 96, 64]``: consecutive non-overlapping blocks of 96 frames, the incomplete last
    one dropped (``E = 1 + (T - 96) // 96``, 0 when ``T < 96``)."""
    frames = log_mel_frames.shape[-2]
    count = 0 if frames < EXAMPLE_FRAMES else 1 + (frames - EXAMPLE_FRAMES) // EXAMPLE_HOP
    # Hop = length: the examples tile the first count * 96 frames, so a reshape is the framing.
    kept = log_mel_frames[..., : count * EXAMPLE_FRAMES, :]
    return kept.reshape(log_mel_frames.shape[:-2] + (count, EXAMPLE_FRAMES, log_mel_frames.shape[-1]))


def waveform_to_examples(wave, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One mono clip on the host, as torchvggish's ``waveform_to_examples`` (float64 inside).

    Args:
      wave: ``[N]`` float waveform at 16 kHz (nominally in [-1, 1]).
      sample_rate: must be 16000 (resample before: the reference's resampler is a choice of the caller here).
    Returns:
      float32 ``[E, 96, 64]``, ``E`` = :func:`num_examples` ``(N)``; ``[0, 96, 64]`` for clips shorter than
      :data:`MIN_SAMPLES`.
    """
    _check_rate(sample_rate)
    wave = np.asarray(wave, np.float64)
    if wave.ndim != 1:
        raise ValueError(f"waveform_to_examples takes one mono clip [N], got shape {wave.shape} (downmix and pass "
                         "clips one at a time, or use log_mel_examples for a batch of equal lengths)")
    if num_examples(wave.shape[0]) == 0:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32)
    return frames_to_examples(log_mel(wave)).astype(np.float32)


def log_mel_examples(waves):
    """A batch of equal-length clips, float32: jit-able on the device (``jax.numpy`` arrays and tracers, ``N``
    static under jit); a NumPy input is computed on the host in float32.

    Args:
      waves: ``[..., N]`` float waveforms at 16 kHz, ``N >= MIN_SAMPLES``.
    Returns:
      ``[..., E, 96, 64]`` float32, ``E`` = :func:`num_examples` ``(N)``.
    """
    if waves.ndim == 0 or num_examples(waves.shape[-1]) == 0:
        raise ValueError(f"log_mel_examples needs clips of at least {MIN_SAMPLES} samples (0.975 s at 16 kHz) for "
                         f"one example, got shape {waves.shape}")
    xp = waves.__array_namespace__()
    return frames_to_examples(log_mel(xp.astype(waves, xp.float32)))
