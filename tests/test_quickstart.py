"""The quickstart end to end at micro size: text pieces, all six stages, sampling from the joint export, the report.

The report's pitch-class accuracy and its baselines are recounted here independently: the expected note is read back
from each prompt's caption text (not from the attributes the job drew) and checked on the WAV file the job wrote;
the shuffled-prompt baseline by brute force over every (clip, other prompt) pair."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from audioldm2_jax import components, quickstart
from audioldm2_jax.audio.io import read_audio
from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax.eval.procedural import (check_pitch_class, estimate_pitch_class_from_log_mel,
                                          estimate_pitch_classes)
from audioldm2_jax.train.stages import STAGE_ORDER

NUM_PROMPTS = 3


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    report = quickstart.run(root, num_prompts=NUM_PROMPTS, micro=True, progress=False)
    return root, report


def _caption_note(caption: str) -> str:
    """The note a caption names: the one word that is a capital note name (the caption's first word is an
    article or a tempo word, never a note)."""
    words = [w.strip(",") for w in caption.split()[1:]]
    notes = [w for w in words if re.fullmatch(r"[A-G]#?", w)]
    assert len(notes) == 1, caption
    return notes[0]


def test_every_stage_exports(job):
    root, report = job
    for stage in STAGE_ORDER:
        config = quickstart.stage_config(stage, root, micro=True)
        assert quickstart.export_complete(root / stage, stage, config.num_steps), stage
        for name in quickstart.expected_exports(stage):
            folder = root / stage / "export" / components.get(name).folder
            assert (folder / components.get(name).weights_file).is_file(), (stage, name)
        assert (root / f"loss_{stage}.png").is_file(), stage
        assert report["timings"][stage]["status"].startswith("trained"), report["timings"][stage]
    joint = set(quickstart.expected_exports("joint"))
    assert {"unet", "vae", "vocoder", "gpt2", "projection", "t5", "clap", "audiomae"} <= joint
    for piece in ("t5", "clap", "tokenizer", "tokenizer_2"):
        assert (root / "text" / piece).is_dir(), piece


def test_samples_are_written(job):
    root, report = job
    settings = qs.sampling_settings(micro=True)
    wavs = sorted((root / "samples").glob("*.wav"))
    assert len(wavs) == NUM_PROMPTS
    for wav in wavs:
        wave, rate = read_audio(wav)
        assert rate == 16000 and wave.shape == (int(settings["audio_length_in_s"] * 16000),)
        assert np.all(np.isfinite(wave))
        assert wav.with_suffix(".png").stat().st_size > 0
        meta = json.loads(wav.with_suffix(".json").read_text())
        assert meta["num_inference_steps"] == settings["num_inference_steps"]


def _recount_baselines(found, wanted):
    """Shuffled-prompt and best-constant baselines counted by brute force: every clip against every other prompt."""
    n = len(wanted)
    shuffled = np.mean([found[i] == wanted[j] for i in range(n) for j in range(n) if i != j])
    return shuffled, max(wanted.count(w) for w in wanted) / n


def test_report_accuracy_matches_a_recount(job):
    root, report = job
    lines = [line.split("|") for line in (root / "prompts.txt").read_text().splitlines() if line]
    assert len(lines) == NUM_PROMPTS
    notes, found, found_mel = [], [], []
    settings = qs.sampling_settings(micro=True)
    for caption, name in lines:
        wave, rate = read_audio(root / "samples" / f"{name}.wav")
        notes.append(_caption_note(caption))
        heard = estimate_pitch_classes(wave, rate, max_notes=1)
        found.append(heard[0] if heard else None)
        assert check_pitch_class(wave, notes[-1], rate) == (found[-1] == notes[-1])
        log_mel = np.load(root / "samples" / f"{name}.mel.npy")  # what the diffusion model generated
        assert log_mel.shape == (round(settings["audio_length_in_s"] * 100), 64)
        found_mel.append(estimate_pitch_class_from_log_mel(log_mel, qs.GRAMMAR["instruments"]))
    for check, heard in (("pitch_class", found), ("spectrogram_pitch_class", found_mel)):
        pitch = report["summary"][check]
        want = [h == n for h, n in zip(heard, notes)]
        assert pitch["count"] == NUM_PROMPTS and pitch["correct"] == sum(want), check
        assert pitch["accuracy"] == pytest.approx(np.mean(want), abs=1e-12)
        shuffled, constant = _recount_baselines(heard, notes)
        assert pitch["shuffled"] == pytest.approx(shuffled, abs=1e-12), check
        assert pitch["best_constant"] == pytest.approx(constant, abs=1e-12), check
    saved = json.loads((root / "report.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(report["summary"]))
    text = (root / "report.md").read_text()
    assert "shuffled prompts" in text and "best constant" in text
    # the grid and the listening list name files that exist
    assert (root / "spectrograms.png").stat().st_size > 0
    assert report["listening"]
    for item in report["listening"]:
        assert (root / item["generated"]).is_file() and (root / item["true"]).is_file(), item
        assert item["generated"] in text
    for stage in STAGE_ORDER:
        assert report["timings"][stage]["wall_s"] > 0
    phases = ("text", "stages", "sample", "score")  # the stages' own entries overlap inside "stages"
    assert report["total_wall_s"] >= sum(report["timings"][p]["wall_s"] for p in phases) - 1e-6


def test_true_loa_row_is_the_ldm_stage_loa_and_recounts(job):
    """The reference row sampled from the true clips' LOA: the LOA is the one the LDM stage trains on (its own
    extractor on the same clips), and the row's spectrogram pitch accuracy recounts from the files it wrote."""
    import jax.numpy as jnp

    from audioldm2_jax.audio import fbank as fbank_lib
    from audioldm2_jax.eval.prompts import true_clips
    from audioldm2_jax.quickstart.report import TRUE_LOA_ROW
    from audioldm2_jax.quickstart.sampling import draw_prompts, true_clip_loa
    from audioldm2_jax.train.stages.common import LOAExtractor, fit_frames

    root, report = job
    prompts = draw_prompts(NUM_PROMPTS, qs.PROMPT_SEED, qs.sampling_settings(micro=True)["audio_length_in_s"])
    waves, _ = true_clips(prompts)
    audiomae = root / "audiomae" / "export" / "audiomae"
    loa = true_clip_loa(waves, audiomae, qs.LOA_LAMBDA)
    config, params, _ = components.load("audiomae", audiomae)
    fbank = fit_frames(np.stack([fbank_lib.audiomae_input(w) for w in waves]), config.input_frames)
    stage_loa = np.asarray(LOAExtractor(config, jnp.float32)(params["encoder"], jnp.asarray(fbank), qs.LOA_LAMBDA))
    np.testing.assert_allclose(loa, stage_loa, rtol=0, atol=1e-5 * np.abs(stage_loa).max())
    assert loa.shape[1] == qs.get_config("joint,micro=1").model.gpt2.max_new_tokens

    row = report["references"][TRUE_LOA_ROW]["spectrogram_pitch_class"]
    heard = [estimate_pitch_class_from_log_mel(np.load(root / "samples_true_loa" / f"{p['name']}.mel.npy"),
                                               qs.GRAMMAR["instruments"]) for p in prompts]
    notes = [_caption_note(p["caption"]) for p in prompts]
    assert row["correct"] == sum(h == n for h, n in zip(heard, notes)) and row["count"] == NUM_PROMPTS
    assert TRUE_LOA_ROW in (root / "report.md").read_text()


def test_editing_demo_recounts(job):
    """The demo's notes, recounted: the target note read from the target caption's text, the output note from the
    saved generated log-mel, the inpainting split at the span's frames; the unedited sources read back."""
    root, report = job
    demo = report["editing"]
    instruments = qs.GRAMMAR["instruments"]
    span = slice(*(int(round(s * 100)) for s in demo["span_s"]))  # 10 ms mel frames
    for kind in ("transfer", "inpaint"):
        rows = demo[kind]["rows"]
        assert len(rows) == demo["pairs"] >= 1
        followed = 0
        for r in rows:
            assert r["target_pitch"] == _caption_note(r["caption"]) != r["source_pitch"]
            mel = np.load(root / "editing" / r["files"][2])
            inside = mel[span] if kind == "inpaint" else mel
            note = estimate_pitch_class_from_log_mel(inside, instruments)
            assert note == r["output_pitch"]
            followed += note == r["target_pitch"]
            if kind == "inpaint":
                outside = np.concatenate([mel[:span.start], mel[span.stop:]])
                assert estimate_pitch_class_from_log_mel(outside, instruments) == r["outside_pitch"]
            assert (root / "editing" / r["files"][1]).stat().st_size > 0
            assert read_audio(root / "editing" / r["files"][0])[0].shape[0] > 0
        assert demo[kind]["followed"] == followed
    assert "## Editing true clips" in (root / "report.md").read_text()

