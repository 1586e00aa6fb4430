"""CLAP's audio front end (transformers' ``ClapFeatureExtractor``) in NumPy, plus the 16 kHz -> 48 kHz resampling
AudioLDM 2 applies before scoring waveforms.

Two modes, as the reference's ``truncation``:

- ``rand_trunc`` (AudioLDM 2's clap-htsat-unfused): a clip longer than ``max_length_s`` is cut at one random offset,
  a shorter one is tiled and / or zero-padded (``padding``); one log-mel on the Slaney mel scale -> ``[1, T, F]``.
- ``fusion`` (transformers' default): the log-mel uses HTK mel filters (no area normalisation). A clip longer than
  the window keeps its whole mel: the 4 views are the full mel squeezed (bilinear) to the window's T frames and 3
  random T-frame crops, one drawn from each third of the possible offsets (front, middle, back); a shorter clip is
  padded as above and its mel repeated 4 times -> ``[4, T, F]``. ``is_longer`` flags the clips that were fused; when
  no clip of a batch is, the reference flags one at random.

Both: centred STFT (reflect padding, periodic Hann, ``fft_window_size``, ``hop_length``) -> power -> mel -> dB
(10 log10, floor 1e-10). T = ``max_length_s * sampling_rate // hop_length + 1`` (1001 for 10 s at 48 kHz, hop 480).

The reference draws its random choices from NumPy's global generator; here they are explicit (:func:`draw_crops`
with any ``RandomState``, the ``np.random`` module itself included, or given offsets), drawn in the reference's
order: per clip in batch order, then the "one clip is longer" index.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from audioldm2_jax.audio import stft

# transformers' ClapFeatureExtractor defaults: what a preprocessor_config.json that omits a key means.
REFERENCE_DEFAULTS: dict[str, Any] = dict(
    sampling_rate=48000, feature_size=64, hop_length=480, fft_window_size=1024, max_length_s=10, frequency_min=0.0,
    frequency_max=14000.0, padding="repeatpad", truncation="fusion", top_db=None)

# The reference squeezes the whole mel to the window with a hard-coded 64 mel bins before stacking it with the crops.
_FUSION_MEL_BINS = 64


@dataclasses.dataclass(frozen=True)
class ClapFeatureConfig:
    """Front-end settings. The dataclass defaults are AudioLDM 2's (clap-htsat-unfused preprocessor config:
    ``rand_trunc``, 50-14000 Hz); :meth:`from_preprocessor_config` fills keys a file omits with transformers' own
    defaults (:data:`REFERENCE_DEFAULTS`: ``fusion``, 0-14000 Hz), as the reference does.

    ``padding``: "repeat" tiles and cuts, "repeatpad" tiles whole copies then zero-pads, anything else zero-pads
    (the reference's rule). ``top_db`` is kept for round trips but never applied: the reference's extractor does
    not pass it to its dB conversion.
    """

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
        for name in ("sampling_rate", "feature_size", "hop_length", "fft_window_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        if not isinstance(self.max_length_s, (int, np.integer)) or isinstance(self.max_length_s, bool) or \
                self.max_length_s <= 0:
            # The reference slices frames with max_length_s * sampling_rate // hop_length: a float breaks it.
            raise ValueError(f"max_length_s={self.max_length_s!r}: expected a positive int (seconds)")
        if self.frequency_min > self.frequency_max:
            raise ValueError(f"frequency_min={self.frequency_min} > frequency_max={self.frequency_max}")
        if not isinstance(self.padding, str) or not isinstance(self.truncation, str):
            raise ValueError(f"padding={self.padding!r} / truncation={self.truncation!r}: expected strings")

    @property
    def max_samples(self) -> int:
        return int(self.max_length_s * self.sampling_rate)

    @property
    def num_frames(self) -> int:
        return self.max_samples // self.hop_length + 1

    @property
    def fusion(self) -> bool:
        return self.truncation == "fusion"

    @property
    def num_views(self) -> int:
        """Mel views per clip: 4 for ``fusion``, else 1."""
        return 4 if self.fusion else 1

    @classmethod
    def from_preprocessor_config(cls, d: Mapping) -> "ClapFeatureConfig":
        """From a ``preprocessor_config.json`` dict (``feature_extractor`` folder); missing keys take transformers'
        ``ClapFeatureExtractor`` defaults. Keys the reference stores but never reads (``n_fft``, ``chunk_length_s``,
        ``nb_max_frames``, ...) are ignored as it ignores them."""
        if d.get("feature_extractor_type", "ClapFeatureExtractor") != "ClapFeatureExtractor":
            raise ValueError(f"feature_extractor_type={d['feature_extractor_type']!r}: expected ClapFeatureExtractor")
        kw = {}
        for name in cls.__dataclass_fields__:
            value = d.get(name, REFERENCE_DEFAULTS[name])
            if name in ("max_length_s", "frequency_min", "frequency_max") or (name == "top_db" and value is not None):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ValueError(f"{name}={value!r}: expected a number")
            kw[name] = value
        return cls(**kw)

    def to_preprocessor_config(self) -> dict:
        """The ``preprocessor_config.json`` ``ClapFeatureExtractor.save_pretrained`` writes for these settings (the
        inverse of :meth:`from_preprocessor_config`), with the keys it derives (``nb_frequency_bins``,
        ``nb_max_samples``) and its padding defaults."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return dict(feature_extractor_type="ClapFeatureExtractor", **fields,
                    nb_frequency_bins=self.fft_window_size // 2 + 1, nb_max_samples=self.max_samples,
                    padding_side="right", padding_value=0.0, return_attention_mask=False)


# ----------------------------------------------------------------------------------------------------------------
# Mel filters and the log-mel spectrogram
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


def _triangles(sampling_rate: int, n_fft: int, edges: np.ndarray) -> np.ndarray:
    """``[n_fft // 2 + 1, len(edges) - 2]`` triangles rising from ``edges[i]`` to ``edges[i+1]`` and falling to
    ``edges[i+2]`` (Hz), sampled at the FFT bin frequencies."""
    fft_freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]  # [n_bins, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling))


def slaney_mel_filters(sampling_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` float64 triangular filters on the Slaney mel scale, area-normalised
    (``librosa.filters.mel(norm="slaney")``, transposed): the ``rand_trunc`` filters."""
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    return _triangles(sampling_rate, n_fft, edges) * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def htk_mel_filters(sampling_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` float64 triangular filters on the HTK mel scale (``2595 log10(1 + f / 700)``),
    not normalised (torchaudio's ``melscale_fbanks`` defaults): the ``fusion`` filters."""
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    edges = 700.0 * (np.power(10, np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    return _triangles(sampling_rate, n_fft, edges)


def mel_filters(config: ClapFeatureConfig) -> np.ndarray:
    """The filter bank the reference uses in ``config``'s mode: HTK for ``fusion``, Slaney otherwise."""
    make = htk_mel_filters if config.fusion else slaney_mel_filters
    return make(config.sampling_rate, config.fft_window_size, config.feature_size, config.frequency_min,
                config.frequency_max)


def log_mel_spectrogram(waveform: np.ndarray, config: ClapFeatureConfig,
                        mel_filters: np.ndarray | None = None) -> np.ndarray:
    """One waveform ``[N]`` -> dB log-mel ``[1 + N // hop, n_mels]`` float32 (centred frames, reflect padding).
    ``mel_filters`` default: the Slaney bank (``rand_trunc``)."""
    n_fft, hop = config.fft_window_size, config.hop_length
    if mel_filters is None:
        mel_filters = slaney_mel_filters(config.sampling_rate, n_fft, config.feature_size, config.frequency_min,
                                         config.frequency_max)
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, built as the reference builds it
    # Centred frames (reflect padding). The reference keeps the spectrum in complex64 before taking the power;
    # rounding it the same way keeps the low-energy bins (which dominate in dB) bit-for-bit close.
    spectrum = stft.stft(np.asarray(waveform, np.float64), window, hop, pad=n_fft // 2).astype(np.complex64)
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, power @ mel_filters)
    return (10.0 * np.log10(mel)).astype(np.float32)


def bilinear_resize_frames(mel: np.ndarray, frames: int) -> np.ndarray:
    """``[T, F]`` float32 -> ``[frames, F]``: ``F.interpolate(mode="bilinear", align_corners=False)`` along time
    (the frequency axis keeps its size, where bilinear is the identity), in float32 as torch computes it on CPU."""
    mel = np.asarray(mel, np.float32)
    n_in = mel.shape[0]
    scale = np.float32(n_in) / np.float32(frames)
    # Source position (d + 1/2) * scale - 1/2 with one rounding, as torch's kernel gets it from a fused multiply-add
    # (the float64 product of two float32 values is exact); rounding the product first moves long clips' weights.
    centres = np.arange(frames, dtype=np.float32) + np.float32(0.5)
    src = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    # The interpolation likewise rounds the second product and fuses the first into the sum.
    second = (mel[i1] * w1[:, None]).astype(np.float32)
    return (mel[i0].astype(np.float64) * w0[:, None] + second).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Random choices
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClapCrops:
    """The reference's random choices for one batch.

    ``starts[i]``: for ``rand_trunc``, the sample offset of clip i's crop (0 when it fits); for ``fusion``, the
    ``(front, middle, back)`` mel-frame offsets of its 3 crops, or None when the clip is not fused.
    ``forced_longer``: in ``fusion`` mode, the clip flagged ``is_longer`` when no clip is (else None).
    """

    starts: tuple
    forced_longer: int | None = None


def _fusion_frames(length: int, config: ClapFeatureConfig) -> tuple[int, int]:
    """``(total_frames, chunk_frames)`` of a clip's full mel and of the window."""
    return 1 + length // config.hop_length, config.num_frames


def is_fused(length: int, config: ClapFeatureConfig) -> bool:
    """Whether ``fusion`` squeezes and crops a clip of ``length`` samples: longer than the window, and by at least one
    hop (a clip within one hop of the window keeps its whole mel, 4 times, unflagged)."""
    if length <= config.max_samples:
        return False
    total, chunk = _fusion_frames(length, config)
    return total != chunk


def fusion_crop_ranges(total_frames: int, chunk_frames: int) -> list[np.ndarray]:
    """The reference's 3 candidate ranges of crop offsets: the offsets ``0 .. total - chunk`` split in 3 nearly equal
    runs (``np.array_split``); an empty run (fewer than 3 offsets) becomes ``[0]``."""
    ranges = np.array_split(np.arange(total_frames - chunk_frames + 1), 3)
    return [r if len(r) else np.zeros(1, np.int64) for r in ranges]


def draw_crops(lengths: Sequence[int], config: ClapFeatureConfig, rng: Any = 0) -> ClapCrops:
    """Draws the reference's random choices for clips of ``lengths`` samples from ``rng`` (a seed, a
    ``np.random.RandomState``, or the ``np.random`` module for the global generator the reference uses), in its
    order: ``randint(0, overflow + 1)`` per over-long clip (``rand_trunc``) or ``choice`` from each of the 3 ranges
    per fused clip (``fusion``), then, in ``fusion`` mode with no fused clip, ``randint(0, batch)``."""
    if isinstance(rng, (int, np.integer)):
        rng = np.random.RandomState(int(rng))
    starts: list = []
    for n in lengths:
        if config.fusion:
            if is_fused(n, config):
                ranges = fusion_crop_ranges(*_fusion_frames(n, config))
                starts.append(tuple(int(rng.choice(r)) for r in ranges))
            else:
                starts.append(None)
        elif n > config.max_samples and config.truncation == "rand_trunc":
            starts.append(int(rng.randint(0, n - config.max_samples + 1)))
        else:
            starts.append(0)
    forced = None
    if config.fusion and lengths and not any(s is not None for s in starts):
        forced = int(rng.randint(0, len(lengths)))
    return ClapCrops(tuple(starts), forced)


def random_crop_starts(lengths: Sequence[int], config: ClapFeatureConfig, rng: np.random.RandomState | None = None
                       ) -> list[int]:
    """``rand_trunc`` crop offsets drawn as the reference draws them (``randint(0, overflow + 1)`` per over-long clip,
    in order, from ``rng`` or NumPy's global generator); 0 for clips that fit."""
    draw = (rng or np.random).randint
    return [int(draw(0, n - config.max_samples + 1)) if n > config.max_samples else 0 for n in lengths]


# ----------------------------------------------------------------------------------------------------------------
# Clip length and batching
# ----------------------------------------------------------------------------------------------------------------


def _check_waveform(waveform) -> np.ndarray:
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {waveform.shape}")
    if waveform.size == 0:
        raise ValueError("empty waveform")
    return waveform.astype(np.float64)


def pad_to_length(waveform: np.ndarray, config: ClapFeatureConfig) -> np.ndarray:
    """A clip no longer than ``max_samples`` repeated and / or zero-padded to exactly ``max_samples``."""
    target = config.max_samples
    if waveform.size < target:
        if config.padding == "repeat":
            waveform = np.tile(waveform, target // waveform.size + 1)[:target]
        elif config.padding == "repeatpad":
            waveform = np.tile(waveform, target // waveform.size)
        waveform = np.pad(waveform, (0, target - waveform.size))
    return waveform


def fit_to_length(waveform: np.ndarray, config: ClapFeatureConfig, crop_start: int = 0) -> np.ndarray:
    """Crops a clip longer than ``max_samples`` at ``crop_start``; repeats and / or zero-pads a shorter one."""
    waveform = _check_waveform(waveform)
    if waveform.size > config.max_samples:
        overflow = waveform.size - config.max_samples
        if not 0 <= crop_start <= overflow:
            raise ValueError(f"crop_start={crop_start} outside [0, {overflow}] for a clip of {waveform.size} samples")
        return waveform[crop_start:crop_start + config.max_samples]
    return pad_to_length(waveform, config)


def _fusion_views(waveform: np.ndarray, config: ClapFeatureConfig, filters: np.ndarray, starts
                  ) -> tuple[np.ndarray, bool]:
    """One clip -> ``([4, T, F], fused)`` in ``fusion`` mode."""
    if not is_fused(waveform.size, config):
        if waveform.size <= config.max_samples:
            waveform = pad_to_length(waveform, config)
        mel = log_mel_spectrogram(waveform, config, filters)  # within one hop of the window: the whole clip
        return np.stack([mel] * 4), False
    if config.feature_size != _FUSION_MEL_BINS:
        raise ValueError(f"truncation='fusion' cannot fuse a clip longer than {config.max_length_s} s with "
                         f"feature_size={config.feature_size}: the reference squeezes the whole mel to "
                         f"{_FUSION_MEL_BINS} bins before stacking it with the crops (its np.stack fails)")
    mel = log_mel_spectrogram(waveform, config, filters)
    total, chunk = mel.shape[0], config.num_frames
    if starts is None or len(starts) != 3:
        raise ValueError(f"a fused clip needs 3 crop offsets (front, middle, back), got {starts!r}")
    for offset in starts:  # any in-range offset is accepted: the 3 ranges only shape the random draw
        if not 0 <= offset <= total - chunk:
            raise ValueError(f"crop offset {offset} outside [0, {total - chunk}] for a mel of {total} frames")
    crops = [mel[s:s + chunk] for s in starts]
    return np.stack([bilinear_resize_frames(mel, chunk)] + crops), True


def clap_audio_inputs(waveforms: np.ndarray | Sequence[np.ndarray], config: ClapFeatureConfig | None = None, *,
                      crops: ClapCrops | None = None, rng: Any = 0) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms at ``config.sampling_rate`` (``[B, N]``, ``[N]`` or a list of ``[N_i]``) -> what the reference's
    extractor returns: ``(input_features [B, V, T, F] float32, is_longer [B] bool)``, V = 1 (``rand_trunc``) or 4
    (``fusion``).

    The random choices are ``crops`` if given, else drawn from ``rng`` by :func:`draw_crops` (default: seed 0).
    """
    config = config or ClapFeatureConfig()
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    waveforms = [_check_waveform(w) for w in waveforms]
    if not waveforms:
        raise ValueError("no waveforms")
    if crops is None:
        crops = draw_crops([w.size for w in waveforms], config, rng)
    if len(crops.starts) != len(waveforms):
        raise ValueError(f"{len(crops.starts)} crop choices for {len(waveforms)} waveforms")
    filters = mel_filters(config)
    features, longer = [], []
    for w, start in zip(waveforms, crops.starts):
        if config.fusion:
            views, fused = _fusion_views(w, config, filters, start)
        else:
            if w.size > config.max_samples and config.truncation != "rand_trunc":
                raise ValueError(f"truncation={config.truncation!r} is not implemented by the reference for clips "
                                 f"longer than max_length_s={config.max_length_s} ('rand_trunc' or 'fusion')")
            views = log_mel_spectrogram(fit_to_length(w, config, start or 0), config, filters)[None]
            fused = w.size > config.max_samples
        features.append(views)
        longer.append(fused)
    if config.fusion and not any(longer):
        if crops.forced_longer is None or not 0 <= crops.forced_longer < len(waveforms):
            raise ValueError(f"fusion with no clip longer than the window flags one at random: forced_longer must "
                             f"be in [0, {len(waveforms)}), got {crops.forced_longer!r}")
        longer[crops.forced_longer] = True
    return np.stack(features), np.asarray(longer, bool)


def clap_input_features(waveforms: np.ndarray | Sequence[np.ndarray], config: ClapFeatureConfig | None = None,
                        crop_starts: Sequence[int] | None = None) -> np.ndarray:
    """``rand_trunc`` features ``[B, T, n_mels]`` float32 of 48 kHz waveforms (``[B, N]`` or a list of ``[N_i]``);
    ``crop_starts`` (per clip) picks the crop of clips longer than the window, default 0. The reference returns
    ``[B, 1, T, n_mels]``; ``ClapModel.get_audio_features`` accepts either layout. ``fusion`` needs
    :func:`clap_audio_inputs` (4 views and ``is_longer``)."""
    config = config or ClapFeatureConfig()
    if config.fusion:
        raise ValueError("truncation='fusion' gives 4 mel views and is_longer per clip: use clap_audio_inputs")
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    waveforms = list(waveforms)
    starts = [0] * len(waveforms) if crop_starts is None else list(crop_starts)
    if len(starts) != len(waveforms):
        raise ValueError(f"{len(starts)} crop_starts for {len(waveforms)} waveforms")
    features, _ = clap_audio_inputs(waveforms, config, crops=ClapCrops(tuple(starts)))
    return features[:, 0]


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
