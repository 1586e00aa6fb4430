"""The procedural dataset: captioned synthetic clips whose true attributes are known.

It is the built-in default of the quickstart and of the tests: nothing to download, deterministic (clip ``i`` of
seed ``s`` is always the same), small enough in vocabulary that a small model learns it on two CPU cores, and
checkable: every clip carries its attributes, and the estimators of :mod:`audioldm2_jax.eval.procedural` read those
attributes back from any waveform (or a note from a spectrogram, before the vocoder), so generated audio can be
scored against its prompt.

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


def note_onsets(tempo_bpm: int, duration: float) -> tuple[float, ...]:
    """Onset times (seconds) of a clip of ``duration`` at ``tempo_bpm``: one a beat from ``FIRST_ONSET_S``, the
    last one at least 150 ms before the end. Two tempos are told apart by an onset count only where their counts
    differ (1.28 s: 60-100 bpm give 2, 120-150 bpm 3, 180-200 bpm 4)."""
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
                              duration=duration, onset_times=note_onsets(tempo, duration))
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
                          midi_notes=notes, onset_times=note_onsets(tempo, duration))


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


def render_note(instrument: str, freq: float, interval: float, sample_rate: int,
                rng: np.random.Generator) -> np.ndarray:
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
            note = sum(render_note(attributes.instrument, f, interval, sample_rate, rng) for f in voices) / len(voices)
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
