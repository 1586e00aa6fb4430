"""Estimators that read the procedural dataset's attributes back from audio, and the checks built on them: the
pitch classes of the sounding notes (from the waveform, or from a log-mel spectrogram before any vocoder), the
instrument family (tonality, harmonic richness, sustain) and the onset rate (the tempo). They score generated audio
against the prompt it was made from (:mod:`audioldm2_jax.eval.prompts`); the dataset itself, its grammar and
synthesis live in :mod:`audioldm2_jax.data.procedural`."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from scipy.ndimage import maximum_filter1d, percentile_filter

from audioldm2_jax.audio import mel as mel_lib
from audioldm2_jax.audio import stft
from audioldm2_jax.data.procedural import (FAMILIES, INSTRUMENT_FAMILY, INSTRUMENTS, NOTE_NAMES, OCTAVES,
                                           PITCHED_INSTRUMENTS, SAMPLE_RATE, ClipAttributes, hz_to_midi, midi_to_hz,
                                           note_onsets, pitch_class_index, render_note)


def _power_spectrogram(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    wave = np.asarray(wave, np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {wave.shape}")
    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    return np.abs(stft.stft(wave, np.hanning(n_fft), hop)) ** 2  # symmetric Hann


def _active_frames(power: np.ndarray, below_peak_db: float = 30.0) -> np.ndarray:
    energy = power.sum(axis=-1)
    return energy >= energy.max() * 10 ** (-below_peak_db / 10) if energy.max() > 0 else np.zeros_like(energy, bool)


def estimate_notes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, max_notes: int = 4,
                   floor_db: float = 25.0) -> list[tuple[float, float]]:
    """Sounding notes as ``(midi_pitch, share_of_power)``, strongest first.

    Peaks of the average power spectrum (8192-point frames: 2 Hz bins) that are the maximum within +-40 cents and
    within ``floor_db`` of the strongest peak are scanned from low to high; a peak at an integer multiple (within
    3 %) of an accepted note is a harmonic of it and adds to that note's power, any other peak is a new note.
    That reads fundamentals correctly for harmonic-rich timbres and for chords whose harmonics overlap.
    """
    n_fft = 8192
    power = _power_spectrogram(wave, n_fft, n_fft // 4)
    active = _active_frames(power)
    if not active.any():
        return []
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    spectrum = np.where((freqs >= 60.0) & (freqs <= 4000.0), power[active].mean(axis=0), 0.0)
    peak_level = spectrum.max()
    if peak_level <= 0:
        return []
    peaks = []
    for i in np.flatnonzero(spectrum >= peak_level * 10 ** (-floor_db / 10)):
        if i == 0 or i == len(spectrum) - 1:
            continue
        half_width = max(1, int(round(freqs[i] * 0.0234 / (sample_rate / n_fft))))  # 40 cents in bins
        lo, hi = max(0, i - half_width), min(len(spectrum), i + half_width + 1)
        if spectrum[i] < spectrum[lo:hi].max():
            continue
        a, b, c = np.log(spectrum[i - 1:i + 2] + 1e-30)
        curvature = a - 2 * b + c
        offset = 0.5 * (a - c) / curvature if curvature != 0 else 0.0
        # a peak's power: the bins within its +-40 cents
        peaks.append(((i + offset) * sample_rate / n_fft, float(spectrum[lo:hi].sum())))
    notes: list[list[float]] = []  # [frequency, power]
    for freq, level in sorted(peaks):
        for note in notes:
            ratio = freq / note[0]
            if round(ratio) >= 2 and abs(ratio - round(ratio)) <= 0.03 * round(ratio):
                note[1] += level
                break
        else:
            notes.append([freq, level])
    total = sum(level for _, level in notes)
    ranked = sorted(notes, key=lambda n: -n[1])[:max_notes]
    return [(float(hz_to_midi(freq)), level / total) for freq, level in ranked]


def estimate_pitch_classes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, max_notes: int = 4) -> list[str]:
    """Pitch classes of the sounding notes, strongest first, without repeats."""
    names: list[str] = []
    for midi, _ in estimate_notes(wave, sample_rate, max_notes=2 * max_notes):
        name = NOTE_NAMES[int(round(midi)) % 12]
        if name not in names:
            names.append(name)
    return names[:max_notes]


def check_pitch_class(wave: np.ndarray, expected, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether ``wave`` plays ``expected``: a pitch class (``"A"``, ``"C#"``, ``9``) or a set of them (a chord).

    With ``k`` distinct expected classes, the ``k`` strongest estimated classes must be exactly those.
    """
    if isinstance(expected, (str, int, np.integer)):
        expected = [expected]
    wanted = {pitch_class_index(name) for name in expected}
    if not wanted:
        raise ValueError("check_pitch_class needs at least one expected pitch class")
    found = [NOTE_NAMES.index(name) for name in estimate_pitch_classes(wave, sample_rate, max_notes=len(wanted))]
    return set(found) == wanted


def _log_mel_profile(log_mel: np.ndarray, range_db: float = 20.0) -> np.ndarray:
    """``[T, mel_bins] -> [mel_bins]``: the mean log-mel of the frames within ``range_db`` of the loudest one,
    standardised (zero mean, unit variance over the bins)."""
    log_mel = np.asarray(log_mel, np.float64)
    level_db = 10.0 * np.log10(np.exp(log_mel).sum(axis=1) + 1e-20)
    profile = log_mel[level_db >= level_db.max() - range_db].mean(axis=0)
    return (profile - profile.mean()) / max(profile.std(), 1e-9)


@functools.lru_cache(maxsize=8)
def _note_profiles(instruments: tuple[str, ...], octaves: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The standardised log-mel profiles of one held note of each instrument at each MIDI pitch of ``octaves``:
    ``(midi [K], profiles [K, mel_bins])``."""
    midis, profiles = [], []
    for instrument in instruments:
        if instrument not in PITCHED_INSTRUMENTS:
            raise ValueError(f"{instrument!r} has no pitch; pitched instruments: {PITCHED_INSTRUMENTS}")
        for octave in octaves:
            for midi in range(12 * (octave + 1), 12 * (octave + 2)):
                note = render_note(instrument, float(midi_to_hz(midi)), 0.6, SAMPLE_RATE, np.random.default_rng(0))
                peak_normalised = (0.5 * note / np.abs(note).max()).astype(np.float32)
                profiles.append(_log_mel_profile(mel_lib.log_mel_spectrogram(peak_normalised)))
                midis.append(midi)
    return np.asarray(midis), np.stack(profiles)


def estimate_pitch_class_from_log_mel(log_mel: np.ndarray, instruments: Sequence[str] = PITCHED_INSTRUMENTS,
                                      octaves: Sequence[int] = OCTAVES) -> str:
    """The pitch class of a single-note clip read from its log-mel spectrogram ``[T, 64]`` (the pipeline's front
    end), before any vocoder: the note whose spectral profile (the loud frames' mean log-mel over the 64 bins,
    standardised) correlates best with the profile of a held note of one of ``instruments`` synthesised at each
    pitch of ``octaves``. At 64 mel bins one bin spans a semitone or more below 1 kHz, but the harmonic pattern
    above it places the fundamental: on the grammar's true spectrograms of sawtooth and square notes this reads the
    pitch class right every time (tests)."""
    log_mel = np.asarray(log_mel)
    if log_mel.ndim != 2:
        raise ValueError(f"estimate_pitch_class_from_log_mel expects a [frames, mel_bins] log-mel, got "
                         f"{log_mel.shape}")
    midis, profiles = _note_profiles(tuple(instruments), tuple(octaves))
    if log_mel.shape[1] != profiles.shape[1]:
        raise ValueError(f"log-mel has {log_mel.shape[1]} bins; the pipeline's front end has {profiles.shape[1]}")
    return NOTE_NAMES[int(midis[np.argmax(profiles @ _log_mel_profile(log_mel))]) % 12]


def timbre_features(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """The three measurements behind :func:`estimate_instrument_family`.

    * ``tonality``: share of the power (90 Hz - 7 kHz, averaged over the loud frames) in spectral peaks standing
      10 dB above the local floor (20th percentile of a 470 Hz neighbourhood): ~1 for notes and chords, ~0 for
      noise, whose frame-averaged spectrum is smooth.
    * ``richness``: share of the power above 2.5x the lowest note's frequency: ~0 for sine tones and chords of
      sines, > 0.1 for square, sawtooth and plucked strings.
    * ``sustain``: share of the sounding time that stays within 12 dB of the loudest moment of its surrounding
      second: ~0.8-0.95 for held notes, < 0.45 for plucks and drum hits.
    """
    n_fft, hop = 1024, 160
    power = _power_spectrogram(wave, n_fft, hop)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    active = _active_frames(power)
    if not active.any():
        return {"tonality": 0.0, "richness": 0.0, "sustain": 0.0}
    spectrum = power[active].mean(axis=0)
    band = (freqs >= 90) & (freqs <= 7000)
    # the neighbourhood's 20th percentile is the level between partials even when they are dense (low sawtooth)
    local_floor = percentile_filter(spectrum, 20, size=31, mode="nearest")
    peaky = band & (spectrum >= 10.0 * local_floor)
    tonality = float(spectrum[peaky].sum() / max(spectrum[band].sum(), 1e-30))

    notes = estimate_notes(wave, sample_rate, max_notes=8)
    if notes and tonality >= 0.5:
        lowest = min(midi_to_hz(midi) for midi, _ in notes)
        richness = float(spectrum[freqs > 2.5 * lowest].sum() / max(spectrum[freqs >= 40].sum(), 1e-30))
    else:
        richness = 0.0

    level_db = 10 * np.log10(power.sum(axis=1) + 1e-20)
    local_peak = maximum_filter1d(level_db, size=sample_rate // hop, mode="nearest")
    sounding = level_db >= level_db.max() - 40.0
    sustain = float(((level_db >= local_peak - 12.0) & sounding).sum() / max(sounding.sum(), 1))
    return {"tonality": tonality, "richness": richness, "sustain": sustain}


def estimate_instrument_family(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """One of :data:`FAMILIES`, from tonality, harmonic richness and sustain (see :func:`timbre_features`)."""
    features = timbre_features(wave, sample_rate)
    sustained = features["sustain"] >= 0.6
    if features["tonality"] < 0.5:
        return "noise" if sustained else "percussion"
    if not sustained:
        return "string"
    return "synth" if features["richness"] >= 0.05 else "tone"


def check_instrument_family(wave: np.ndarray, expected: str, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether ``wave`` sounds like ``expected``: a family (``"synth"``) or an instrument (``"square"``)."""
    family = INSTRUMENT_FAMILY.get(expected, expected)
    if family not in FAMILIES:
        raise ValueError(f"unknown instrument family {expected!r}; families: {FAMILIES}, "
                         f"instruments: {INSTRUMENTS}")
    return estimate_instrument_family(wave, sample_rate) == family


def onset_times(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, range_db: float = 40.0) -> np.ndarray:
    """Onset times (seconds) by spectral flux with adaptive peak picking.

    The flux is the mean over 64 mel bands of the rise in dB from one 10 ms frame to the next (over the louder of
    the band and its neighbours in the earlier frame, as SuperFlux does), on a spectrogram floored ``range_db``
    below its peak (so changes in near-silent bands -- release clicks, noise floors -- do not
    count). Peaks are the maxima of the last 30 ms that stand 0.07 (of the flux range) above the mean of the
    surrounding +-100 ms, at least 30 ms apart: the rule of librosa's ``onset_detect``, in NumPy (no numba
    compilation on first use).
    """
    wave = np.asarray(wave, np.float64)
    if sample_rate != mel_lib.SAMPLE_RATE:
        raise ValueError(f"onset detection runs at {mel_lib.SAMPLE_RATE} Hz, got {sample_rate}")
    if not np.any(wave):
        return np.zeros(0)
    hop, n_fft = sample_rate // 100, 1024
    padded = np.pad(wave, (n_fft // 2, n_fft // 2))
    power = _power_spectrogram(padded, n_fft, hop)  # frame i is centred on sample i * hop
    mel_db = 10 * np.log10(power @ mel_lib.mel_basis().T.astype(np.float64) + 1e-20)
    mel_db = np.maximum(mel_db, mel_db.max() - range_db)
    # rise over the previous frame's level, taken as the max of each band and its neighbours: a tone's
    # spectrum widening as it fades (or wobbling in pitch) is then no onset
    reference = maximum_filter1d(mel_db, size=3, axis=1)
    flux = np.concatenate([[0.0], np.maximum(mel_db[1:] - reference[:-1], 0.0).mean(axis=1)])
    flux[(len(wave) - n_fft // 2) // hop + 1:] = 0.0  # frames reaching past the clip's end see its cut
    if flux.max() - flux.min() <= 0:
        return np.zeros(0)
    flux = (flux - flux.min()) / (flux.max() - flux.min())
    pre_max, pre_avg, post_avg, wait = 3, 10, 11, 3  # frames of 10 ms
    onsets, last = [], -wait - 1
    for i in range(len(flux)):
        if flux[i] < flux[max(0, i - pre_max):i + 1].max():
            continue
        if flux[i] < flux[max(0, i - pre_avg):i + post_avg].mean() + 0.07:
            continue
        if i - last > wait:
            onsets.append(i)
            last = i
    return np.asarray(onsets, np.float64) * hop / sample_rate


def estimate_onset_rate(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Onsets per second (:func:`onset_times`)."""
    return len(onset_times(wave, sample_rate)) / (len(wave) / sample_rate)


def check_onset_rate(wave: np.ndarray, expected: float, sample_rate: int = SAMPLE_RATE,
                     tolerance: float = 0.2) -> bool:
    """Whether the onset rate of ``wave`` is ``expected`` (per second) within ``tolerance`` (relative) plus one
    onset's worth of slack over the clip (a note cut by the clip's edge)."""
    duration = len(wave) / sample_rate
    return abs(estimate_onset_rate(wave, sample_rate) - expected) <= tolerance * expected + 1.0 / duration


def tempo_onset_counts(tempos: Sequence[int], duration: float) -> dict[int, int]:
    """``{bpm: onsets a clip of duration seconds has at that tempo}`` (:func:`note_onsets`). Raises when two tempos
    have the same count: an onset count cannot tell them apart, and a check between them would measure nothing."""
    counts = {int(bpm): len(note_onsets(int(bpm), duration)) for bpm in tempos}
    if len(set(counts.values())) < len(counts):
        raise ValueError(f"tempos {tuple(tempos)} are not distinguishable by onset count in {duration} s clips "
                         f"(onsets per tempo: {counts}); use tempos further apart or longer clips")
    return counts


def estimate_tempo(wave: np.ndarray, tempos: Sequence[int], sample_rate: int = SAMPLE_RATE) -> int | None:
    """The tempo class of ``wave`` among ``tempos``: the one whose onset count (:func:`tempo_onset_counts`) is
    nearest to the :func:`onset_times` count; ``None`` when two classes are equally near (a count halfway between
    them says neither)."""
    counts = tempo_onset_counts(tempos, len(wave) / sample_rate)
    found = len(onset_times(wave, sample_rate))
    distance = {bpm: abs(found - count) for bpm, count in counts.items()}
    nearest = min(distance.values())
    best = [bpm for bpm, d in distance.items() if d == nearest]
    return best[0] if len(best) == 1 else None


def score_clip(wave: np.ndarray, attributes: ClipAttributes, sample_rate: int = SAMPLE_RATE) -> dict[str, bool]:
    """All checks of one clip against the attributes its prompt stated (pitch only for pitched clips)."""
    scores = {
        "instrument_family": check_instrument_family(wave, attributes.family, sample_rate),
        "onset_rate": check_onset_rate(wave, attributes.onset_rate, sample_rate),
    }
    if attributes.pitch_classes:
        scores["pitch_class"] = check_pitch_class(wave, attributes.pitch_classes, sample_rate)
    return scores
