"""Per-clip transforms: from a decoded record to a training example, or to a skip marker that says why not.

A record (what every source returns) is a dict::

    path           str, where the clip came from (a file, a shard index, ``procedural:<seed>:<i>``)
    waveform       float32 [N] or [N, C] (any sample rate), or None when decoding failed
    sample_rate    int
    captions       list[str] (may be empty)
    transcription  str ("" when none)
    labels         list[str] (may be empty)
    error          str, only when the source could not decode the clip
    attributes     dict of fixed-shape arrays (procedural clips only)

:class:`ClipTransform` turns it into an example: ``waveform`` float32 ``[N]`` (16 kHz, the clip length of the
config), ``log_mel`` ``[N // 160, 64]``, optionally ``fbank`` ``[1024, 128]`` (AudioMAE's normalised input),
``caption``, ``transcription`` and ``path`` (str), ``num_samples`` (before padding) and the ``attributes``.
Whatever it cannot use -- a decoding error, NaN or infinite samples, an implausible sample rate, an empty or
silent clip, no text at all -- becomes ``{SKIP_KEY: reason, "path": path}``, which the pipeline counts, reports
and drops. A transform never raises on bad data and never lets an unusable clip through.

The steps follow AudioLDM's reference preprocessing: crop (at the source rate, before the mixdown and the
resampling, which then work on the window only), mono, resample to 16 kHz, mean removal and peak normalisation to
0.5, zero padding at the end.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import numpy as np

from audioldm2_jax.audio import fbank as fbank_lib
from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.audio import mel as mel_lib

SKIP_KEY = "__skip__"
TARGET_SAMPLE_RATE = 16000
MIN_SAMPLE_RATE = 2000  # below this a "sample rate" is a broken header, not audio
MAX_SAMPLE_RATE = 768000


def skip(record_or_path: Any, reason: str) -> dict:
    """The marker of an unusable clip."""
    path = record_or_path.get("path", "?") if isinstance(record_or_path, dict) else str(record_or_path)
    return {SKIP_KEY: reason, "path": str(path)}


def is_skip(element: Any) -> bool:
    return isinstance(element, dict) and SKIP_KEY in element


def to_mono(wave: np.ndarray) -> np.ndarray:
    """``[N]`` or ``[N, C]`` -> ``[N]`` (channel mean)."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim == 2:  # a matrix-vector product: ~10x faster than mean(axis=1) on interleaved channels
        return wave @ np.full(wave.shape[1], 1.0 / wave.shape[1], np.float32) if wave.shape[1] > 1 else wave[:, 0]
    raise ValueError(f"a waveform is [N] or [N, C], got shape {wave.shape}")


def normalize_peak(wave: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Mean removal, then scaling to ``peak`` (AudioLDM: ``(x - mean) / (max|x| + 1e-8) * 0.5``)."""
    wave = wave - wave.mean()
    return (wave / (np.abs(wave).max() + 1e-8) * peak).astype(np.float32)


def pad_or_trim(wave: np.ndarray, length: int) -> np.ndarray:
    """Zero-pads at the end, or cuts, to ``length`` samples."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


def _peak(wave: np.ndarray) -> float:
    """Largest magnitude (over all channels); NaN counts as loud, so that the finiteness check sees the window."""
    if wave.size == 0:
        return 0.0
    peak = float(np.abs(wave).max())
    return np.inf if np.isnan(peak) else peak


def random_crop_avoiding_silence(wave: np.ndarray, length: int, rng: np.random.Generator | None,
                                 retries: int = 10, min_peak: float = 1e-4) -> tuple[np.ndarray, float]:
    """A window of ``length`` samples (``[N]`` or ``[N, C]``, along axis 0) whose peak exceeds ``min_peak``,
    trying up to ``retries`` random starts.

    Returns ``(window, peak)``; when every try is near-silent, the loudest window tried. ``rng=None`` takes the
    start of the clip (evaluation). Clips no longer than ``length`` come back whole.
    """
    if len(wave) <= length:
        return wave, _peak(wave)
    if rng is None:
        window = wave[:length]
        return window, _peak(window)
    best, best_peak = None, -1.0
    for _ in range(max(1, retries)):
        start = int(rng.integers(0, len(wave) - length + 1))
        window = wave[start:start + length]
        peak = _peak(window)
        if peak > best_peak:
            best, best_peak = window, peak
        if peak > min_peak:
            break
    return best, best_peak


def choose_caption(captions: Sequence[str], labels: Sequence[str], rng: np.random.Generator | None) -> str:
    """A random non-empty caption; else the labels joined by ", "; else ""."""
    usable = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if usable:
        return usable[int(rng.integers(len(usable)))] if rng is not None else usable[0]
    names = [str(label).strip() for label in labels if str(label).strip()]
    return ", ".join(names)


class ClipTransform(grain.transforms.RandomMap):
    """Record -> training example (or skip marker), see the module docstring.

    Args:
      clip_samples: output length at 16 kHz (``clip_seconds * 16000``; a multiple of 160 gives ``clip_samples //
        160`` mel frames).
      random_crop: random window (training) or the start of the clip (evaluation).
      crop_retries / silence_peak: windows whose peak is at most ``silence_peak`` count as near-silent and are
        re-drawn; a clip whose best window is still near-silent is skipped when ``drop_silent``.
      compute_log_mel / compute_fbank: host-side features (the jnp front ends can compute them on the device
        instead).
      require_text: skip clips with neither caption, labels nor transcription.
    """

    def __init__(self, clip_samples: int, random_crop: bool = True, crop_retries: int = 10,
                 silence_peak: float = 1e-4, drop_silent: bool = True, compute_log_mel: bool = True,
                 compute_fbank: bool = True, require_text: bool = True, peak: float = 0.5):
        if clip_samples <= mel_lib.PAD:
            raise ValueError(f"clip_samples={clip_samples} is too short for the mel front end")
        self.clip_samples = int(clip_samples)
        self.random_crop = random_crop
        self.crop_retries = crop_retries
        self.silence_peak = silence_peak
        self.drop_silent = drop_silent
        self.compute_log_mel = compute_log_mel
        self.compute_fbank = compute_fbank
        self.require_text = require_text
        self.peak = peak

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        try:
            return self._process(record, rng if self.random_crop else None)
        except Exception as error:  # noqa: BLE001 -- any failure on one clip must not stop the run
            return skip(record, f"{type(error).__name__}: {error}")

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> dict:
        return self.random_map(record, rng if rng is not None else np.random.default_rng(0))

    def _process(self, record: dict, rng: np.random.Generator | None) -> dict:
        if not isinstance(record, dict):
            return skip("?", f"not a record: {type(record).__name__}")
        if record.get("error"):
            return skip(record, str(record["error"]))
        wave = record.get("waveform")
        if wave is None:
            return skip(record, "no waveform")
        sample_rate = int(record.get("sample_rate") or 0)
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            return skip(record, f"implausible sample rate {sample_rate}")
        wave = np.asarray(wave)
        if wave.size == 0 or wave.shape[0] == 0:
            return skip(record, "zero-length audio")
        if wave.ndim > 2:
            return skip(record, f"waveform of shape {wave.shape} (expected [N] or [N, C])")
        wave = wave.astype(np.float32, copy=False)

        caption = choose_caption(record.get("captions") or [], record.get("labels") or [], rng)
        transcription = str(record.get("transcription") or "").strip()
        if self.require_text and not caption and not transcription:
            return skip(record, "no caption, labels or transcription")

        # crop first, at the source rate and before the mixdown (with a little margin for the resampler's edges):
        # everything after works on the window only, which matters for minutes-long files
        source_length = int(math.ceil(self.clip_samples * sample_rate / TARGET_SAMPLE_RATE))
        margin = 0 if sample_rate == TARGET_SAMPLE_RATE else 32
        window, peak = random_crop_avoiding_silence(wave, source_length + margin, rng, self.crop_retries,
                                                    self.silence_peak)
        if not np.all(np.isfinite(window)):
            return skip(record, f"{int(np.sum(~np.isfinite(window)))} non-finite samples (NaN/inf)")
        window = to_mono(window)
        peak = min(peak, _peak(window))  # channels in opposite phase can cancel in the mixdown
        if self.drop_silent and peak <= self.silence_peak:
            return skip(record, f"silent (peak {peak:.1e} <= {self.silence_peak:g} in {self.crop_retries} windows)")
        window = audio_io.resample(window, sample_rate, TARGET_SAMPLE_RATE)
        window = window[:self.clip_samples]
        content = len(window)
        waveform = pad_or_trim(normalize_peak(window, self.peak), self.clip_samples)

        example: dict[str, Any] = {
            "path": str(record.get("path", "")),
            "waveform": waveform,
            "caption": caption,
            "transcription": transcription,
            "num_samples": np.asarray(content, np.int32),  # before padding
        }
        if self.compute_log_mel:
            example["log_mel"] = mel_lib.log_mel_spectrogram(waveform)
        if self.compute_fbank:
            example["fbank"] = fbank_lib.audiomae_input(waveform)
        if "attributes" in record:
            example["attributes"] = record["attributes"]
        return example


def collate(examples: Sequence[dict]) -> dict:
    """Stacks examples into a batch: arrays along a new leading axis, strings into a ``np.str_`` array, nested
    dicts (``attributes``) recursively."""
    first = examples[0]
    batch = {}
    for key in first:
        values = [example[key] for example in examples]
        if isinstance(first[key], dict):
            batch[key] = collate(values)
        elif isinstance(first[key], str):
            batch[key] = np.asarray(values, dtype=np.str_)
        else:
            batch[key] = np.stack([np.asarray(v) for v in values])
    return batch
