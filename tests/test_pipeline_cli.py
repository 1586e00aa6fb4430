"""sample.py end to end on a tiny checkpoint: prompts from flags and a file, batches padded to one shape, one WAV
(16-bit), spectrogram PNG and settings JSON per clip, the throughput line; and its errors."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
from pipeline_fixtures import tiny_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sample  # noqa: E402  (the top-level script)

from audioldm2_jax.pipeline import Clip, read_prompts, run_sampling_job  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("tiny-cli"), "text")
    return folder


def test_sample_script_writes_clips(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nrain falls on a tin roof|rain\n\nwaves crash against rocks\n")
    out = tmp_path / "out"
    totals = sample.main(["--checkpoint", str(checkpoint), "--prompt", "a dog barks", "--prompts-file",
                          str(prompts), "--duration", "0.36", "--steps", "2", "--scheduler", "dpmsolver++",
                          "--guidance", "2.0", "--negative-prompt", "noise", "--seed", "7", "--batch-size", "2",
                          "--out", str(out), "--no-progress"])
    stems = ["0000_a-dog-barks", "rain", "0002_waves-crash-against-rocks"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in stems for e in ("json", "png", "wav"))
    waves = []
    for i, stem in enumerate(stems):
        info = soundfile.info(str(out / f"{stem}.wav"))
        assert (info.samplerate, info.frames, info.subtype) == (16000, 5760, "PCM_16")
        waves.append(soundfile.read(str(out / f"{stem}.wav"))[0])
        settings = json.loads((out / f"{stem}.json").read_text())
        assert settings["seed"] == 7 + i and settings["num_inference_steps"] == 2
        assert settings["scheduler"] == "dpmsolver++" and settings["negative_prompt"] == "noise"
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(np.abs(waves[i] - waves[j]).max() for i in range(3) for j in range(i)) > 1e-2
    assert totals["clips"] == 3 and totals["audio_s"] == pytest.approx(3 * 0.36)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "s of audio per s of wall time" in last and "compilation" in last


def test_prompt_lists_and_errors(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a|x\nb|x\nc\n")
    clips = read_prompts(["a"], path)
    assert [c.name for c in clips] == ["0000_a", "x", "x_1", "0003_c"]
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts([], None)
    path.write_text("a|b|c|d\n")
    with pytest.raises(ValueError, match=r"p.txt:1"):
        read_prompts([], path)
    with pytest.raises(SystemExit):
        sample.parse_args(["--prompt", "x"])  # --checkpoint is required
    # Transcriptions are checked for every clip before anything runs (a stand-in pipeline: nothing is called).
    clips = [Clip("a", "a"), Clip("b", "b", transcription="hello")]
    with pytest.raises(ValueError, match="no phoneme encoder"):
        run_sampling_job(types.SimpleNamespace(is_speech=False), clips, tmp_path / "out")
    with pytest.raises(ValueError, match="no transcription for prompt 'a'"):
        run_sampling_job(types.SimpleNamespace(is_speech=True), clips, tmp_path / "out")
