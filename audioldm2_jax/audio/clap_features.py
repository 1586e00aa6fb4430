"""CLAP's audio front end (transformers' ``ClapFeatureExtractor`` in its unfused ``rand_trunc`` / ``repeatpad``
mode), in NumPy, plus the 16 kHz -> 48 kHz resampling AudioLDM 2 applies before scoring waveforms.

waveform at 48 kHz -> cut to 10 s (longer clips: one crop) or tiled and zero-padded to 10 s (shorter clips)
-> centred STFT (reflect padding, periodic Hann 1024, hop 480) -> power -> Slaney mel (64 bins, 50-14000 Hz)
-> dB (10 log10, floor 1e-10) -> ``[T = 1001, 64]`` float32.

The reference crops over-long clips at a random offset drawn from NumPy's global generator; here the offset is an
argument (``crop_start``), so the same crop can be reproduced or chosen deterministically (default: the start).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClapFeatureConfig:
    """Front-end settings; the defaults are those of the AudioLDM 2 / clap-htsat-unfused preprocessor config."""

    sampling_rate: int = 48000
    feature_size: int = 64
    hop_length: int = 480
    fft_window_size: int = 1024
    max_length_s: int = 10
    frequency_min: float = 50.0
    frequency_max: float = 14000.0
    padding: str = "repeatpad"
    truncation: str = "rand_trunc"
    top_db: float | None = None

    def __post_init__(self):
        if self.truncation != "rand_trunc":
            raise ValueError(f"truncation={self.truncation!r}: only 'rand_trunc' is supported ('fusion' stacks 4 mel "
                             "crops for the fused CLAP model, which AudioLDM 2 does not use)")
        if self.padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"padding={self.padding!r}: expected 'repeatpad', 'repeat' or 'pad'")
        if self.frequency_min > self.frequency_max or self.frequency_max > self.sampling_rate / 2:
            raise ValueError(f"frequency_min={self.frequency_min} / frequency_max={self.frequency_max} must satisfy "
                             f"0 <= min <= max <= sampling_rate / 2 = {self.sampling_rate / 2}")
        if self.top_db is not None and self.top_db <= 0:
            raise ValueError(f"top_db={self.top_db} must be positive")

    @property
    def max_samples(self) -> int:
        return int(self.max_length_s * self.sampling_rate)

    @property
    def num_frames(self) -> int:
        return self.max_samples // self.hop_length + 1

    @classmethod
    def from_preprocessor_config(cls, d: Mapping) -> "ClapFeatureConfig":
        """From a ``preprocessor_config.json`` dict (``feature_extractor`` folder); missing keys take the defaults."""
        if d.get("feature_extractor_type", "ClapFeatureExtractor") != "ClapFeatureExtractor":
            raise ValueError(f"feature_extractor_type={d['feature_extractor_type']!r}: expected ClapFeatureExtractor")
        f = cls.__dataclass_fields__
        kw = {}
        for name in f:
            value = d.get(name, f[name].default)
            if name in ("sampling_rate", "feature_size", "hop_length", "fft_window_size"):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"{name}={value!r}: expected a positive int")
            elif name in ("max_length_s", "frequency_min", "frequency_max") or (name == "top_db" and value is not None):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ValueError(f"{name}={value!r}: expected a number")
            kw[name] = value
        if "n_fft" in d and d["n_fft"] != kw["fft_window_size"]:
            raise ValueError(f"n_fft={d['n_fft']} differs from fft_window_size={kw['fft_window_size']}")
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------------------
# Mel spectrogram
# ----------------------------------------------------------------------------------------------------------------


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), hz)


def slaney_mel_filters(sampling_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` float64 triangular filters on the Slaney mel scale, area-normalised
    (``librosa.filters.mel(norm="slaney")``, transposed)."""
    n_bins = n_fft // 2 + 1
    fft_freqs = np.linspace(0, sampling_rate // 2, n_bins)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]  # [n_bins, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def log_mel_spectrogram(waveform: np.ndarray, config: ClapFeatureConfig,
                        mel_filters: np.ndarray | None = None) -> np.ndarray:
    """One waveform ``[N]`` -> dB log-mel ``[1 + N // hop, n_mels]`` float32 (centred frames, reflect padding)."""
    n_fft, hop = config.fft_window_size, config.hop_length
    if mel_filters is None:
        mel_filters = slaney_mel_filters(config.sampling_rate, n_fft, config.feature_size, config.frequency_min,
                                         config.frequency_max)
    x = np.pad(np.asarray(waveform, np.float64), n_fft // 2, mode="reflect")
    num_frames = 1 + (x.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(x, (num_frames, n_fft), (x.strides[0] * hop, x.strides[0]))
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    # The reference keeps the spectrum in complex64 before taking the power; rounding it the same way keeps the
    # low-energy bins (which dominate in dB) bit-for-bit close.
    spectrum = np.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, power @ mel_filters)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    if config.top_db is not None:
        db = np.maximum(db, db.max() - config.top_db)
    return db.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Clip length and batching
# ----------------------------------------------------------------------------------------------------------------


def fit_to_length(waveform: np.ndarray, config: ClapFeatureConfig, crop_start: int = 0) -> np.ndarray:
    """Crops a clip longer than ``max_samples`` at ``crop_start``; repeats and / or zero-pads a shorter one."""
    waveform = np.asarray(waveform, np.float64)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {waveform.shape}")
    if waveform.size == 0:
        raise ValueError("empty waveform")
    target = config.max_samples
    if waveform.size > target:
        overflow = waveform.size - target
        if not 0 <= crop_start <= overflow:
            raise ValueError(f"crop_start={crop_start} outside [0, {overflow}] for a clip of {waveform.size} samples")
        return waveform[crop_start:crop_start + target]
    if waveform.size < target:
        if config.padding == "repeat":
            waveform = np.tile(waveform, target // waveform.size + 1)[:target]
        elif config.padding == "repeatpad":
            waveform = np.tile(waveform, target // waveform.size)
        waveform = np.pad(waveform, (0, target - waveform.size))
    return waveform


def random_crop_starts(lengths: Sequence[int], config: ClapFeatureConfig, rng: np.random.RandomState | None = None
                       ) -> list[int]:
    """Crop offsets drawn as the reference draws them (``randint(0, overflow + 1)`` per over-long clip, in order,
    from ``rng`` or NumPy's global generator); 0 for clips that fit."""
    draw = (rng or np.random).randint
    return [int(draw(0, n - config.max_samples + 1)) if n > config.max_samples else 0 for n in lengths]


def clap_input_features(waveforms: np.ndarray | Sequence[np.ndarray], config: ClapFeatureConfig | None = None,
                        crop_starts: Sequence[int] | None = None) -> np.ndarray:
    """48 kHz waveforms (``[B, N]`` or a list of ``[N_i]``) -> CLAP log-mel features ``[B, T, n_mels]`` float32
    (T = 1001 for 10 s). ``crop_starts`` (per clip) picks the crop of clips longer than 10 s; default 0.

    The reference returns ``[B, 1, T, n_mels]``; ``ClapModel.get_audio_features`` accepts either layout.
    """
    config = config or ClapFeatureConfig()
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    waveforms = list(waveforms)
    if crop_starts is None:
        crop_starts = [0] * len(waveforms)
    if len(crop_starts) != len(waveforms):
        raise ValueError(f"{len(crop_starts)} crop_starts for {len(waveforms)} waveforms")
    filters = slaney_mel_filters(config.sampling_rate, config.fft_window_size, config.feature_size,
                                 config.frequency_min, config.frequency_max)
    return np.stack([log_mel_spectrogram(fit_to_length(w, config, s), config, filters)
                     for w, s in zip(waveforms, crop_starts)])


def resample_for_clap(waveforms: np.ndarray, orig_sr: int = 16000, target_sr: int = 48000) -> np.ndarray:
    """``[..., N]`` -> ``[..., ceil(N * target_sr / orig_sr)]``, as ``librosa.resample`` with its default
    ``soxr_hq`` resampler (what AudioLDM 2 uses before scoring), calling soxr directly; keeps the input dtype."""
    import soxr

    waveforms = np.asarray(waveforms)
    if orig_sr == target_sr:
        return waveforms
    length = int(np.ceil(waveforms.shape[-1] * float(target_sr) / orig_sr))
    flat = waveforms.reshape(-1, waveforms.shape[-1])
    out = np.zeros((flat.shape[0], length), dtype=waveforms.dtype)
    for row, clip in enumerate(flat):
        resampled = soxr.resample(clip, orig_sr, target_sr, quality="soxr_hq")[:length]
        out[row, :resampled.shape[0]] = resampled  # librosa's fix_length: zero-pad / trim to the exact length
    return out.reshape(waveforms.shape[:-1] + (length,))
