"""The procedural dataset: captioned synthetic clips whose true attributes are known.

It is the built-in default of the quickstart and of the tests: nothing to download, deterministic (clip ``i`` of
seed ``s`` is always the same), small enough in vocabulary that a small model learns it on two CPU cores, and
checkable: every clip carries its attributes, and :func:`check_pitch_class`, :func:`check_instrument_family` and
:func:`check_onset_rate` estimate those attributes back from any waveform, so generated audio can be scored
against its prompt (and :func:`estimate_pitch_class_from_log_mel` reads a note from a spectrogram, before the
vocoder).

The grammar (all of it lives in this module's constants):

* instruments: sine, square, sawtooth (band-limited additive synthesis), plucked string (additive, harmonics
  decaying faster the higher they are), noise bursts (band-passed noise), drum hits (decaying noise over a
  falling low tone). Families: ``tone`` (sine), ``synth`` (square, sawtooth), ``string`` (plucked), ``noise``,
  ``percussion`` -- separable by three measurable properties: pitched or not, harmonic-rich or not, sustained
  or decaying.
* patterns: a repeated note, a repeated chord (major / minor triad), an arpeggio (root, third, fifth, octave);
  unpitched instruments play hits. Roots are any of the 12 pitch classes, octaves 3-4.
* tempo 60-150 bpm, one onset a beat (so 1-2.5 onsets a second); loudness envelope steady / getting louder /
  fading out (a clip-level gain, so the peak normalisation of the pipeline does not erase it).
* captions: several wordings per attribute (:func:`caption_for`), so the text encoder sees paraphrases.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterable, Sequence

import numpy as np

SAMPLE_RATE = 16000
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_ALIASES = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}

INSTRUMENT_FAMILY = {
    "sine": "tone",
    "square": "synth",
    "sawtooth": "synth",
    "plucked string": "string",
    "noise burst": "noise",
    "drum": "percussion",
}
INSTRUMENTS = tuple(INSTRUMENT_FAMILY)
FAMILIES = ("tone", "synth", "string", "noise", "percussion")
PITCHED_INSTRUMENTS = ("sine", "square", "sawtooth", "plucked string")
PITCHED_PATTERNS = ("note", "chord", "arpeggio")
CHORD_INTERVALS = {"major": (0, 4, 7), "minor": (0, 3, 7)}
OCTAVES = (3, 4)
TEMPOS_BPM = (60, 80, 100, 120, 150)
ENVELOPES = ("steady", "crescendo", "decrescendo")
FIRST_ONSET_S = 0.05  # the first note starts just after 0 so that its attack is visible to onset detection

# ---- caption grammar: every wording in one place -------------------------------------------------------------
INSTRUMENT_WORDS = {
    "sine": ("a sine wave", "a pure sine tone", "a sine tone"),
    "square": ("a square wave", "a square wave synth", "a hollow square lead"),
    "sawtooth": ("a sawtooth wave", "a buzzy sawtooth synth", "a saw lead"),
    "plucked string": ("a plucked string", "a plucked guitar string", "a harp-like pluck"),
    "noise burst": ("bursts of noise", "noise bursts", "hissing noise bursts"),
    "drum": ("drum hits", "a drum", "a beating drum"),
}
PATTERN_WORDS = {
    "note": ("playing the note {root}", "repeating a {register}{root} note", "playing {root} over and over"),
    "chord": ("playing a {root} {quality} chord", "striking {root} {quality} chords",
              "repeating a {register}{root} {quality} chord"),
    "arpeggio": ("playing an arpeggio of {root} {quality}", "arpeggiating a {root} {quality} chord",
                 "playing {register}{root} {quality} arpeggios"),
    "hits": ("", "in a steady rhythm", "keeping time"),
}
REGISTER_WORDS = {3: ("low ", ""), 4: ("", "")}
TEMPO_WORDS = {"slow": ("at a slow tempo", "slowly", "at {bpm} bpm"),
               "moderate": ("at a moderate tempo", "at {bpm} bpm", "at a walking pace"),
               "fast": ("at a fast tempo", "quickly", "at {bpm} beats per minute")}
ENVELOPE_WORDS = {"steady": ("", "at a steady volume", "evenly"),
                  "crescendo": ("getting louder", "with a crescendo", "growing louder"),
                  "decrescendo": ("fading out", "getting quieter", "dying away")}
CAPTION_TEMPLATES = (
    "{instrument} {pattern} {tempo}, {envelope}",
    "{instrument} {pattern}, {envelope}, {tempo}",
    "{tempo_word} {instrument_bare} {pattern} {envelope}",
)


def tempo_word(bpm: int) -> str:
    """Tempo vocabulary: slow below 75 bpm, fast above 110, moderate between."""
    return "slow" if bpm < 75 else "fast" if bpm > 110 else "moderate"


def pitch_class_index(name) -> int:
    """``"C#"`` / ``"Db"`` / ``1`` -> 1."""
    if isinstance(name, (int, np.integer)):
        return int(name) % 12
    name = str(name).strip()
    name = _FLAT_ALIASES.get(name, name)
    if name not in NOTE_NAMES:
        raise ValueError(f"unknown pitch class {name!r}; expected one of {NOTE_NAMES} (or a flat spelling)")
    return NOTE_NAMES.index(name)


def midi_to_hz(midi) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, np.float64) - 69.0) / 12.0)


def hz_to_midi(freq) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(freq, np.float64) / 440.0)


@dataclasses.dataclass(frozen=True)
class ClipAttributes:
    """What a procedural clip contains: everything its caption states, and the onsets it has."""

    instrument: str
    pattern: str  # "note" | "chord" | "arpeggio" (pitched) or "hits" (noise, drum)
    tempo_bpm: int
    envelope: str  # "steady" | "crescendo" | "decrescendo"
    duration: float  # seconds
    root: str = ""  # pitch class name, "" for unpitched clips
    octave: int = 0
    quality: str = ""  # "major" | "minor" for chords and arpeggios
    midi_notes: tuple[int, ...] = ()  # one entry per sounding note of the pattern (a chord: 3)
    onset_times: tuple[float, ...] = ()

    @property
    def family(self) -> str:
        return INSTRUMENT_FAMILY[self.instrument]

    @property
    def pitch_classes(self) -> tuple[str, ...]:
        """Distinct pitch classes played, root first."""
        seen: list[str] = []
        for note in self.midi_notes:
            name = NOTE_NAMES[note % 12]
            if name not in seen:
                seen.append(name)
        return tuple(seen)

    @property
    def onset_rate(self) -> float:
        """Note onsets per second."""
        return len(self.onset_times) / self.duration

    def batch_fields(self) -> dict[str, np.ndarray]:
        """Fixed-shape per-clip fields for batches (strings, a 12-way pitch-class mask, numbers)."""
        mask = np.zeros(12, np.float32)
        for name in self.pitch_classes:
            mask[NOTE_NAMES.index(name)] = 1.0
        return {
            "instrument": np.asarray(self.instrument),
            "family": np.asarray(self.family),
            "pattern": np.asarray(self.pattern),
            "root": np.asarray(self.root),
            "quality": np.asarray(self.quality),
            "envelope": np.asarray(self.envelope),
            "pitch_class_mask": mask,
            "tempo_bpm": np.asarray(self.tempo_bpm, np.int32),
            "onset_rate": np.asarray(self.onset_rate, np.float32),
        }


def _onsets(tempo_bpm: int, duration: float) -> tuple[float, ...]:
    interval = 60.0 / tempo_bpm
    count = int(math.floor((duration - 0.15 - FIRST_ONSET_S) / interval)) + 1  # last note keeps >= 150 ms
    return tuple(round(FIRST_ONSET_S + k * interval, 6) for k in range(max(count, 1)))


def sample_attributes(rng: np.random.Generator, duration: float = 2.56,
                      instruments: Sequence[str] = INSTRUMENTS,
                      patterns: Sequence[str] = PITCHED_PATTERNS,
                      tempos: Sequence[int] = TEMPOS_BPM) -> ClipAttributes:
    """Draws one clip's attributes from the grammar (optionally restricted to a sub-vocabulary)."""
    for name in instruments:
        if name not in INSTRUMENT_FAMILY:
            raise ValueError(f"unknown instrument {name!r}; known: {INSTRUMENTS}")
    instrument = str(rng.choice(list(instruments)))
    tempo = int(rng.choice(list(tempos)))
    envelope = str(rng.choice(ENVELOPES))
    if instrument not in PITCHED_INSTRUMENTS:
        return ClipAttributes(instrument=instrument, pattern="hits", tempo_bpm=tempo, envelope=envelope,
                              duration=duration, onset_times=_onsets(tempo, duration))
    pattern = str(rng.choice(list(patterns)))
    root_index = int(rng.integers(12))
    octave = int(rng.choice(OCTAVES))
    root_midi = 12 * (octave + 1) + root_index
    quality = ""
    if pattern == "note":
        notes = (root_midi,)
    else:
        quality = str(rng.choice(list(CHORD_INTERVALS)))
        notes = tuple(root_midi + step for step in CHORD_INTERVALS[quality])
        if pattern == "arpeggio":
            notes = notes + (root_midi + 12,)
    return ClipAttributes(instrument=instrument, pattern=pattern, tempo_bpm=tempo, envelope=envelope,
                          duration=duration, root=NOTE_NAMES[root_index], octave=octave, quality=quality,
                          midi_notes=notes, onset_times=_onsets(tempo, duration))


def caption_for(attributes: ClipAttributes, rng: np.random.Generator) -> str:
    """A caption stating ``attributes`` in one of the grammar's wordings (random choice by ``rng``)."""
    pick = lambda options: str(options[int(rng.integers(len(options)))])  # noqa: E731
    instrument = pick(INSTRUMENT_WORDS[attributes.instrument])
    pattern = pick(PATTERN_WORDS[attributes.pattern]).format(
        root=attributes.root, quality=attributes.quality,
        register=pick(REGISTER_WORDS.get(attributes.octave, ("",))))
    word = tempo_word(attributes.tempo_bpm)
    tempo = pick(TEMPO_WORDS[word]).format(bpm=attributes.tempo_bpm)
    envelope = pick(ENVELOPE_WORDS[attributes.envelope])
    template = pick(CAPTION_TEMPLATES)
    singular = instrument.startswith("a ")
    text = template.format(instrument=instrument, instrument_bare=instrument[2:] if singular else instrument,
                           pattern=pattern, tempo=tempo, envelope=envelope,
                           tempo_word=f"a {word}" if singular else word)
    text = " ".join(text.split()).replace(" ,", ",")  # close the gaps that empty phrases leave
    while ", ," in text or ",," in text:
        text = text.replace(", ,", ",").replace(",,", ",")
    text = text.strip(" ,")
    return text[0].upper() + text[1:]


# ---- synthesis ------------------------------------------------------------------------------------------------

def _harmonic_tone(freq: float, t: np.ndarray, amplitudes, phases=None) -> np.ndarray:
    """Sum of harmonics ``k * freq`` below 7.6 kHz with the given amplitude per k (band-limited: no aliasing)."""
    out = np.zeros_like(t)
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * freq >= 7600.0:
            break
        if amplitude != 0.0:
            phase = 0.0 if phases is None else phases[k - 1]
            out += amplitude * np.sin(2 * np.pi * k * freq * t + phase)
    return out


def _adsr(length: int, sample_rate: int, attack=0.01, decay=0.05, sustain=0.75, release=0.04) -> np.ndarray:
    """Attack-decay-sustain-release with raised-cosine attack and release (no clicks for onset detectors)."""
    t = np.arange(length) / sample_rate
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(t / attack, 1.0))
    env = rise * (sustain + (1 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay))
    release_start = length - int(release * sample_rate)
    if release_start > 0:
        env[release_start:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, length - release_start))
    return env


def _band_noise(length: int, sample_rate: int, rng: np.random.Generator, low=1000.0, high=5000.0) -> np.ndarray:
    """White noise band-limited to ``low``-``high`` Hz in the frequency domain (smooth band edges), peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    gain = 1.0 / (1.0 + (low / np.maximum(freqs, 1.0)) ** 8) / (1.0 + (freqs / high) ** 8)
    wave = np.fft.irfft(spectrum * gain, n=length)
    return wave / (np.abs(wave).max() + 1e-9)


def _note(instrument: str, freq: float, interval: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One note (or hit) of an instrument, ``interval`` seconds apart from the next."""
    if instrument in ("sine", "square", "sawtooth", "noise burst"):
        length = int(0.8 * interval * sample_rate)
        t = np.arange(length) / sample_rate
        env = _adsr(length, sample_rate)
        if instrument == "sine":
            wave = np.sin(2 * np.pi * freq * t)
        elif instrument == "square":  # odd harmonics, 1/k
            wave = _harmonic_tone(freq, t, [(1.0 / k if k % 2 else 0.0) for k in range(1, 64)])
        elif instrument == "sawtooth":  # all harmonics, 1/k
            wave = _harmonic_tone(freq, t, [1.0 / k for k in range(1, 64)])
        else:
            wave = _band_noise(length, sample_rate, rng)
        return wave * env
    # decaying instruments: time constant 0.12 of the inter-onset interval (at least 60 ms: shorter notes blur
    # the spectrum into noise)
    tau = max(0.12 * interval, 0.06)
    length = int(min(interval, 10 * tau) * sample_rate)
    t = np.arange(length) / sample_rate
    attack = np.minimum(t / 0.003, 1.0)
    if instrument == "plucked string":
        wave = np.zeros(length)
        for k in range(1, 40):
            if k * freq >= 7600.0:
                break
            wave += (1.0 / k ** 1.2) * np.exp(-t * (1.0 + 0.3 * (k - 1)) / tau) * np.sin(2 * np.pi * k * freq * t)
        return wave * attack
    # drum: a noise crack over a low thump falling from 110 Hz to 45 Hz
    body_tau = min(tau, 0.06)
    sweep = 45.0 + 65.0 * np.exp(-t / 0.02)
    body = np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate) * np.exp(-t / body_tau)
    noise = rng.standard_normal(length) * np.exp(-t / (0.7 * body_tau))
    return (0.4 * body + 0.25 * noise) * attack


def render(attributes: ClipAttributes, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's waveform: float32 ``[round(duration * sample_rate)]``, peak 0.5."""
    total = int(round(attributes.duration * sample_rate))
    out = np.zeros(total)
    interval = 60.0 / attributes.tempo_bpm
    freqs = midi_to_hz(attributes.midi_notes) if attributes.midi_notes else np.array([0.0])
    deterministic = attributes.instrument in PITCHED_INSTRUMENTS  # same pitch, same samples: synthesise once
    made: dict[tuple, np.ndarray] = {}
    for index, onset in enumerate(attributes.onset_times):
        if attributes.pattern == "chord":
            voices = tuple(freqs)
        elif attributes.pattern == "arpeggio":
            voices = (freqs[index % len(freqs)],)
        else:
            voices = (freqs[0],)
        note = made.get(voices) if deterministic else None
        if note is None:
            note = sum(_note(attributes.instrument, f, interval, sample_rate, rng) for f in voices) / len(voices)
            made[voices] = note
        start = int(round(onset * sample_rate))
        stop = min(total, start + len(note))
        out[start:stop] += note[:stop - start]
    position = np.linspace(0.0, 1.0, total)
    gain = {"steady": np.ones_like(position), "crescendo": 0.3 + 0.7 * position,
            "decrescendo": 1.0 - 0.7 * position}[attributes.envelope]
    out *= gain
    out -= out.mean()
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


class ProceduralSource:
    """A grain random-access source of procedural clips: ``source[i]`` is clip ``i`` of ``seed``, always the same.

    Records carry ``waveform`` (float32 ``[N]`` at 16 kHz), ``sample_rate``, ``captions`` (``num_captions``
    wordings), ``transcription`` (""), ``labels`` (instrument, pattern), ``path`` (``procedural:<seed>:<i>``)
    and ``attributes`` (:meth:`ClipAttributes.batch_fields`).
    """

    def __init__(self, num_clips: int = 4096, seed: int = 0, duration: float = 2.56,
                 instruments: Sequence[str] = INSTRUMENTS, patterns: Sequence[str] = PITCHED_PATTERNS,
                 tempos: Sequence[int] = TEMPOS_BPM, num_captions: int = 3, sample_rate: int = SAMPLE_RATE):
        if num_clips <= 0:
            raise ValueError(f"the procedural dataset needs num_clips > 0, got {num_clips}")
        if duration < 0.5:
            raise ValueError(f"procedural clips need at least 0.5 s, got duration={duration}")
        self.num_clips, self.seed, self.duration = int(num_clips), int(seed), float(duration)
        self.instruments, self.patterns, self.tempos = tuple(instruments), tuple(patterns), tuple(tempos)
        self.num_captions, self.sample_rate = int(num_captions), int(sample_rate)

    def __len__(self) -> int:
        return self.num_clips

    def attributes(self, index: int) -> ClipAttributes:
        return sample_attributes(self._rng(index), self.duration, self.instruments, self.patterns, self.tempos)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index) % self.num_clips])

    def __getitem__(self, index: int) -> dict:
        index = int(index) % self.num_clips
        rng = self._rng(index)
        attributes = sample_attributes(rng, self.duration, self.instruments, self.patterns, self.tempos)
        captions = [caption_for(attributes, rng) for _ in range(self.num_captions)]
        return {
            "path": f"procedural:{self.seed}:{index}",
            "waveform": render(attributes, rng, self.sample_rate),
            "sample_rate": self.sample_rate,
            "captions": captions,
            "transcription": "",
            "labels": [attributes.instrument, attributes.pattern],
            "attributes": attributes.batch_fields(),
        }

    def __repr__(self) -> str:
        return f"ProceduralSource(num_clips={self.num_clips}, seed={self.seed}, duration={self.duration})"


# ---- estimators: attributes back from a waveform -------------------------------------------------------------

def _power_spectrogram(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    wave = np.asarray(wave, np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {wave.shape}")
    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2


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
    from audioldm2_jax.audio.mel import log_mel_spectrogram

    midis, profiles = [], []
    for instrument in instruments:
        if instrument not in PITCHED_INSTRUMENTS:
            raise ValueError(f"{instrument!r} has no pitch; pitched instruments: {PITCHED_INSTRUMENTS}")
        for octave in octaves:
            for midi in range(12 * (octave + 1), 12 * (octave + 2)):
                note = _note(instrument, float(midi_to_hz(midi)), 0.6, SAMPLE_RATE, np.random.default_rng(0))
                profiles.append(_log_mel_profile(log_mel_spectrogram((0.5 * note / np.abs(note).max()).astype(
                    np.float32))))
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
    from scipy.ndimage import maximum_filter1d, percentile_filter

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
    from audioldm2_jax.audio import mel as mel_lib

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
    from scipy.ndimage import maximum_filter1d

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


def score_clip(wave: np.ndarray, attributes: ClipAttributes, sample_rate: int = SAMPLE_RATE) -> dict[str, bool]:
    """All checks of one clip against the attributes its prompt stated (pitch only for pitched clips)."""
    scores = {
        "instrument_family": check_instrument_family(wave, attributes.family, sample_rate),
        "onset_rate": check_onset_rate(wave, attributes.onset_rate, sample_rate),
    }
    if attributes.pitch_classes:
        scores["pitch_class"] = check_pitch_class(wave, attributes.pitch_classes, sample_rate)
    return scores


def attribute_vocabulary() -> dict[str, Iterable[str]]:
    """The words a caption can use, per slot (for tokenizer training and tests)."""
    return {"instrument": INSTRUMENT_WORDS, "pattern": PATTERN_WORDS, "tempo": TEMPO_WORDS,
            "envelope": ENVELOPE_WORDS, "notes": NOTE_NAMES, "quality": tuple(CHORD_INTERVALS)}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print captions of procedural clips, one prompt per line (|name).")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=2.56)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        print(f"{caption_for(sample_attributes(rng, duration=args.duration), rng)}|clip{i:03d}")
