"""The quickstart's prompt-following checks and their baselines (audioldm2_jax/eval/prompts.py).

A check measures prompt following only if true clips pass it (~100 %), the same true clips scored against
mismatched prompts fall to the shuffled-prompt baseline, and a generator that ignores its prompt (one clip for every
prompt) is not reported above its baselines. Checked here on the quickstart grammar's own true clips, with the
baselines recounted by hand and by brute force.
"""

import numpy as np
import pytest

from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax.data import procedural as P
from audioldm2_jax.eval import procedural as E
from audioldm2_jax.eval import prompts as checks
from audioldm2_jax.quickstart.report import verdict
from audioldm2_jax.quickstart.sampling import draw_prompts

NUM_PROMPTS = 32


@pytest.fixture(scope="module")
def scored():
    prompts = draw_prompts(NUM_PROMPTS, seed=7, duration=qs.CLIP_SECONDS)
    waves, mels = checks.true_clips(prompts)
    return prompts, waves, checks.score_clips(waves, list(mels), prompts, qs.GRAMMAR)


def test_grammar_is_checkable():
    """Every check of the report can tell the quickstart grammar's classes apart: two instrument families (the
    grammar used to have sawtooth and square, both "synth": every prompt expected the same family) and tempos whose
    onset counts differ in a clip (60-150 bpm at 1.28 s give 2 or 3 onsets, which a count cannot separate)."""
    families = {P.INSTRUMENT_FAMILY[name] for name in qs.GRAMMAR["instruments"]}
    assert len(families) >= 2, families
    counts = E.tempo_onset_counts(qs.GRAMMAR["tempos"], qs.CLIP_SECONDS)
    assert len(counts) >= 2 and min(np.diff(sorted(counts.values()))) >= 2, counts
    with pytest.raises(ValueError, match="not distinguishable by onset count"):
        E.tempo_onset_counts(P.TEMPOS_BPM, 1.28)


def test_true_clips_pass_every_check(scored):
    _, _, result = scored
    assert set(result["summary"]) == set(checks.CHECKS)
    for check, v in result["summary"].items():
        assert v["count"] == NUM_PROMPTS and v["accuracy"] == 1.0, (check, v)
        # a check with one expected value for every prompt would let a prompt-ignoring generator score 100 %
        assert v["best_constant"] <= 0.75 and v["shuffled"] <= 0.75, (check, v)


def test_mismatched_true_clips_fall_to_the_baseline(scored):
    _, _, result = scored
    mismatched = checks.summarise(result["estimated"][1:] + result["estimated"][:1], result["expected"])
    for check, v in mismatched.items():
        # 32 clips: a binomial spread of about 9 points around the baseline
        assert v["accuracy"] <= max(v["shuffled"], v["best_constant"]) + 0.2, (check, v)
        assert abs(v["margin"]) <= 0.25, (check, v)


def test_prompt_ignoring_generator_is_not_above_its_baselines(scored):
    """One true clip played for every prompt: its accuracy is the share of prompts that happen to match it, which
    never exceeds the best constant, and the report's verdict says so."""
    prompts, waves, _ = scored
    constant = checks.score_clips([waves[0]] * NUM_PROMPTS, [None] * NUM_PROMPTS, prompts, qs.GRAMMAR)
    for check, v in constant["summary"].items():
        assert v["accuracy"] <= v["best_constant"] + 1e-12, (check, v)
        assert verdict(check, v).startswith("not above"), (check, v)


def test_baselines_by_hand():
    estimated = [{"tempo": 60}, {"tempo": 60}, {"tempo": 180}, {"tempo": None}]
    expected = [{"tempo": 60}, {"tempo": 180}, {"tempo": 180}, {"tempo": 180}]
    v = checks.summarise(estimated, expected)["tempo"]
    assert v["accuracy"] == 0.5 and v["correct"] == 2 and v["count"] == 4
    # clip 0 (60) vs the other prompts {180, 180, 180}: 0/3; clip 1 (60) vs {60, 180, 180}: 1/3;
    # clip 2 (180) vs {60, 180, 180}: 2/3; clip 3 (no estimate) vs anything: 0
    assert v["shuffled"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 0) / 4, abs=1e-12)
    assert v["best_constant"] == 0.75 and v["constant_label"] == 180
    assert v["margin"] == pytest.approx(0.5 - 0.25, abs=1e-12)


def test_tempo_estimate_between_classes_is_none():
    rng = np.random.default_rng(0)
    attributes = P.sample_attributes(rng, 1.28, instruments=("sawtooth",), patterns=("note",), tempos=(120,))
    wave = P.render(attributes, rng)
    assert len(E.onset_times(wave)) == 3  # halfway between 60 bpm (2 onsets) and 180 bpm (4)
    assert E.estimate_tempo(wave, (60, 180)) is None
    assert E.estimate_tempo(wave, (60, 120, 180)) == 120
