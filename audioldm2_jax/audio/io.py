"""Audio files in and out, and resampling.

Reading goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF, ...). What libsndfile
cannot decode is handed to ``librosa.load``, which tries audioread (ffmpeg / GStreamer / Core Audio, whichever
backend the machine has) -- that covers AAC/M4A where such a backend is installed.

Resampling uses soxr (the SoX resampler, "HQ" quality; installed with librosa): band-limited, fast (a 10 s
clip from 44.1 kHz in ~2 ms) and good to ~-100 dB aliasing. ``scipy.signal.resample_poly`` (Kaiser-windowed
polyphase) is the fallback when soxr is missing. Neither matches torchaudio's sinc resampler bit for bit; the
reference does not need it to (resampling happens once, before features are computed).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

from audioldm2_jax.audio.mel import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram


class AudioDecodeError(RuntimeError):
    """An audio file that could not be decoded into samples; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode audio file {self.path!r}: {reason}")


def read_audio(path) -> tuple[np.ndarray, int]:
    """Decodes an audio file.

    Returns:
      ``(wave, sample_rate)``: float32 ``[N]`` for mono files, ``[N, C]`` for multichannel ones, in [-1, 1] for
      integer formats (float formats keep their values, NaN included: callers check).
    Raises:
      AudioDecodeError: missing, empty, unreadable or zero-length file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioDecodeError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(path, "empty file (0 bytes)")
    import soundfile

    try:
        wave, sample_rate = soundfile.read(path, dtype="float32", always_2d=False)
    except Exception as soundfile_error:  # libsndfile refuses the format (or the file is corrupt)
        wave, sample_rate = _read_with_librosa(path, soundfile_error)
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 2 and wave.shape[1] == 1:
        wave = wave[:, 0]
    if wave.shape[0] == 0:
        raise AudioDecodeError(path, "no samples (zero-length audio)")
    if sample_rate <= 0:
        raise AudioDecodeError(path, f"invalid sample rate {sample_rate}")
    return wave, int(sample_rate)


def _read_with_librosa(path: str, soundfile_error: Exception) -> tuple[np.ndarray, int]:
    try:
        import warnings

        import librosa

        with warnings.catch_warnings():  # librosa warns that it falls back to audioread: expected here
            warnings.simplefilter("ignore")
            wave, sample_rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as fallback_error:
        raise AudioDecodeError(path, f"soundfile: {soundfile_error}; audioread fallback: "
                                     f"{type(fallback_error).__name__}: {fallback_error}") from fallback_error
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 2:  # librosa gives [C, N]
        wave = wave.T
    return wave, int(sample_rate)


def write_wav(path, wave, sr: int = 16000) -> None:
    """Writes 16-bit PCM WAV. ``wave``: float ``[N]`` or ``[N, C]`` in [-1, 1]; louder samples are clipped.

    Raises:
      ValueError: a NaN or infinite sample (nothing is written). A diverged model gives NaN; written as silence or
        full scale it would pass for a result.
    """
    import soundfile

    wave = np.asarray(wave, np.float32)
    if wave.ndim not in (1, 2):
        raise ValueError(f"write_wav expects [N] or [N, C], got shape {wave.shape}")
    bad = ~np.isfinite(wave)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0]) // (wave.shape[1] if wave.ndim == 2 else 1)
        raise ValueError(f"write_wav {os.fspath(path)!r}: {int(bad.sum())} of {wave.size} samples are not finite "
                         f"(NaN {int(np.isnan(wave).sum())}, inf {int(np.isinf(wave).sum())}; the first at sample "
                         f"{first}); refusing to write them as audio")
    # 32768 is the scale readers divide by (soundfile, torchaudio), so a write-read round trip is exact to half
    # a step; +1.0 itself clips to 32767.
    pcm = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    soundfile.write(os.fspath(path), pcm, int(sr), subtype="PCM_16", format="WAV")


def resampled_length(num_samples: int, sr_in: int, sr_out: int) -> int:
    """Length of a resampled signal: ``ceil(N * sr_out / sr_in)`` (what soxr and resample_poly both give)."""
    return int(math.ceil(num_samples * sr_out / sr_in))


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of ``[N]`` or ``[N, C]`` along the first axis (soxr HQ; scipy fallback).

    Returns float32 of length ``ceil(N * sr_out / sr_in)``.
    """
    wave = np.asarray(wave, np.float32)
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return wave
    try:
        import soxr

        out = soxr.resample(wave, sr_in, sr_out, quality="HQ")
    except ImportError:
        from scipy.signal import resample_poly

        ratio = Fraction(sr_out, sr_in)
        out = resample_poly(wave, ratio.numerator, ratio.denominator, axis=0)
    out = np.asarray(out, np.float32)
    target = resampled_length(wave.shape[0], sr_in, sr_out)
    if out.shape[0] > target:
        out = out[:target]
    elif out.shape[0] < target:
        pad = [(0, target - out.shape[0])] + [(0, 0)] * (out.ndim - 1)
        out = np.pad(out, pad)
    return out


def save_spectrogram_png(path: str | os.PathLike, waveform: np.ndarray, title: str = "") -> None:
    """The clip's 64-bin log-mel spectrogram (the model's own front end) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = log_mel_spectrogram(waveform)  # [T, 64]
    fig, ax = plt.subplots(figsize=(max(4.0, mel.shape[0] / 100), 3), dpi=100)
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
              extent=(0, mel.shape[0] * HOP_LENGTH / SAMPLE_RATE, 0, mel.shape[1]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    if title:
        ax.set_title(title[:80], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_edit_png(path, input_wave: np.ndarray, output_wave: np.ndarray, title: str = "") -> None:
    """The input's 64-bin log-mel spectrogram above the output's, on one time axis, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mels = [log_mel_spectrogram(w) for w in (input_wave, output_wave)]
    seconds = max(m.shape[0] for m in mels) * HOP_LENGTH / SAMPLE_RATE
    fig, axes = plt.subplots(2, 1, figsize=(max(4.0, seconds), 5), dpi=100, sharex=True)
    for ax, mel, name in zip(axes, mels, ("input", "output")):
        ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, mel.shape[0] * HOP_LENGTH / SAMPLE_RATE, 0, mel.shape[1]))
        ax.set_ylabel(f"{name}\nmel bin")
    axes[0].set_xlim(0, seconds)
    axes[1].set_xlabel("time (s)")
    if title:
        axes[0].set_title(title[:80], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
