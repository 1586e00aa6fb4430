"""The procedural dataset: determinism, captions that state the attributes, and the attribute estimators.

The estimators are what the quickstart scores generated audio with, so they are checked on the generator's own
clips (every one must pass), on degraded copies (20 dB SNR noise, band-limited to 5.5 kHz), and against wrong
expectations (which must fail: a check that always says yes measures nothing).
"""

import dataclasses
import re

import numpy as np
import pytest

from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.data import procedural as P
from audioldm2_jax.eval import procedural as E

NUM_CLIPS = 18


@pytest.fixture(scope="module")
def clips():
    source = P.ProceduralSource(num_clips=1000, seed=11, duration=2.56)
    # every instrument at least twice, in index order
    chosen, per_instrument = [], {name: 0 for name in P.INSTRUMENTS}
    for index in range(200):
        attributes = source.attributes(index)
        if per_instrument[attributes.instrument] < NUM_CLIPS // len(P.INSTRUMENTS):
            per_instrument[attributes.instrument] += 1
            chosen.append((attributes, source[index]))
        if len(chosen) == NUM_CLIPS:
            break
    assert len(chosen) == NUM_CLIPS
    return chosen


def test_deterministic_and_seeded():
    a, b = P.ProceduralSource(num_clips=10, seed=3), P.ProceduralSource(num_clips=10, seed=3)
    first, again = a[4], b[4]
    np.testing.assert_array_equal(first["waveform"], again["waveform"])
    assert first["captions"] == again["captions"] and first["path"] == "procedural:3:4"
    other = P.ProceduralSource(num_clips=10, seed=4)[4]
    assert not np.array_equal(first["waveform"], other["waveform"])
    assert first["waveform"].shape == (40960,) and first["waveform"].dtype == np.float32
    assert abs(np.abs(first["waveform"]).max() - 0.5) < 1e-6
    np.testing.assert_array_equal(a[14]["waveform"], first["waveform"])  # index wraps around
    with pytest.raises(ValueError):
        P.ProceduralSource(num_clips=0)


def test_captions_state_the_attributes():
    rng = np.random.default_rng(0)
    seen_wordings = set()
    for _ in range(200):
        attributes = P.sample_attributes(rng, duration=1.28)
        caption = P.caption_for(attributes, rng)
        seen_wordings.add(caption)
        lowered = caption.lower()
        assert caption[0].isupper() and "  " not in caption and ",," not in caption and not caption.endswith(",")
        assert any(word.split(" ", 1)[-1] in lowered for word in P.INSTRUMENT_WORDS[attributes.instrument])
        if attributes.root:
            assert re.search(rf"(?<![\w#]){re.escape(attributes.root)}(?![\w#])", caption), caption
            assert attributes.quality in caption
        tempo_word = P.tempo_word(attributes.tempo_bpm)
        assert str(attributes.tempo_bpm) in caption or tempo_word in lowered or any(
            phrase in lowered for phrase in P.TEMPO_WORDS[tempo_word])
        # onsets: one a beat, all inside the clip
        assert all(0 < t < attributes.duration for t in attributes.onset_times)
        assert np.allclose(np.diff(attributes.onset_times), 60.0 / attributes.tempo_bpm)
    assert len(seen_wordings) > 150  # paraphrases, not one template


def test_sub_vocabulary_and_batch_fields():
    rng = np.random.default_rng(1)
    for _ in range(20):
        attributes = P.sample_attributes(rng, instruments=("sine", "drum"), patterns=("chord",), tempos=(120,))
        assert attributes.instrument in ("sine", "drum") and attributes.tempo_bpm == 120
        assert attributes.pattern == ("chord" if attributes.instrument == "sine" else "hits")
        fields = attributes.batch_fields()
        assert fields["pitch_class_mask"].sum() == len(attributes.pitch_classes)
        assert float(fields["onset_rate"]) == pytest.approx(len(attributes.onset_times) / attributes.duration)
    with pytest.raises(ValueError, match="unknown instrument"):
        P.sample_attributes(rng, instruments=("theremin",))


def test_estimators_on_generated_clips(clips):
    for attributes, record in clips:
        wave = record["waveform"]
        scores = E.score_clip(wave, attributes)
        assert all(scores.values()), (attributes, scores, E.timbre_features(wave), E.estimate_pitch_classes(wave))
        # wrong expectations must fail
        if attributes.pitch_classes:
            shifted = [(P.pitch_class_index(name) + 2) % 12 for name in attributes.pitch_classes]
            assert not E.check_pitch_class(wave, shifted)
        wrong_family = P.FAMILIES[(P.FAMILIES.index(attributes.family) + 1) % len(P.FAMILIES)]
        assert not E.check_instrument_family(wave, wrong_family)
        assert not E.check_onset_rate(wave, 2.5 * attributes.onset_rate)


def test_estimators_survive_noise_and_band_limiting(clips):
    rng = np.random.default_rng(5)
    for attributes, record in clips[::2]:
        wave = record["waveform"].astype(np.float64)
        noisy = wave + rng.standard_normal(len(wave)) * np.sqrt(np.mean(wave ** 2) / 100.0)  # 20 dB SNR
        degraded = audio_io.resample(audio_io.resample(noisy.astype(np.float32), 16000, 11025), 11025, 16000)
        scores = E.score_clip(degraded[:len(wave)], attributes)
        assert all(scores.values()), (attributes, scores)


def test_estimator_inputs():
    assert E.check_pitch_class(np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), "A")
    assert E.check_pitch_class(np.sin(2 * np.pi * 466.16 * np.arange(16000) / 16000), "Bb")
    assert E.check_instrument_family(np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), "sine")
    assert E.estimate_onset_rate(np.zeros(16000)) == 0.0
    assert E.estimate_pitch_classes(np.zeros(16000)) == []
    with pytest.raises(ValueError, match="unknown pitch class"):
        E.check_pitch_class(np.zeros(16000), "H")
    with pytest.raises(ValueError, match="unknown instrument family"):
        E.check_instrument_family(np.zeros(16000), "brass")


@pytest.mark.parametrize("instruments", [("sawtooth", "square"), P.PITCHED_INSTRUMENTS])
def test_pitch_class_from_log_mel(instruments):
    """Every pitch of the grammar (12 classes x 2 octaves), played as a repeated note by each instrument at a random
    tempo and envelope, is read back from its log-mel spectrogram, also with the spectrogram blurred by noise
    (std 0.3 nats, a VAE round trip's order of error)."""
    from audioldm2_jax.audio.mel import log_mel_spectrogram

    rng = np.random.default_rng(3)
    for instrument in instruments:
        for midi in range(48, 72):
            attributes = P.sample_attributes(rng, duration=1.28, instruments=(instrument,), patterns=("note",))
            attributes = dataclasses.replace(attributes, midi_notes=(midi,), root=P.NOTE_NAMES[midi % 12],
                                             octave=midi // 12 - 1)
            log_mel = log_mel_spectrogram(P.render(attributes, rng))
            noisy = log_mel + 0.3 * rng.standard_normal(log_mel.shape)
            for spectrogram in (log_mel, noisy):
                assert E.estimate_pitch_class_from_log_mel(spectrogram, instruments) == attributes.root, (
                    instrument, midi)
    with pytest.raises(ValueError, match=r"\[frames, mel_bins\]"):
        E.estimate_pitch_class_from_log_mel(np.zeros(64))
    with pytest.raises(ValueError, match="has no pitch"):
        E.estimate_pitch_class_from_log_mel(np.zeros((10, 64)), ("drum",))
