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

from audioldm2_jax import sample
from audioldm2_jax.sample import Clip, read_prompts, run_sampling_job


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


BAD_FLAGS = [
    (["--steps", "0"], "argument --steps: '0': the step count must be >= 1"),
    (["--steps", "1.5"], "argument --steps: '1.5' is not an integer"),
    (["--scheduler", "euler"], "argument --scheduler: 'euler' is not a sampler; valid names: ddim, dpmsolver"),
    (["--duration", "0"], "argument --duration: '0': the duration must be > 0"),
    (["--duration", "nan"], "argument --duration: 'nan': the duration must be finite"),
    (["--guidance", "inf"], "argument --guidance: 'inf': the guidance scale must be finite"),
    (["--num-waveforms", "0"], "argument --num-waveforms: '0': the number of waveforms must be >= 1"),
    (["--batch-size", "-2"], "argument --batch-size: '-2': the batch size must be >= 1"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_fail_before_loading(flags, message, tmp_path, monkeypatch, capsys):
    """A bad flag is a usage error (status 2) naming the flag, raised before the checkpoint is touched: here it does
    not exist, and loading is not even attempted."""
    from audioldm2_jax.pipeline import AudioLDM2Pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the flags were checked")

    monkeypatch.setattr(AudioLDM2Pipeline, "from_pretrained", no_load)
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(SystemExit) as info:
        sample.main(["--checkpoint", str(missing), "--prompt", "a dog barks", "--out", str(tmp_path / "out")] + flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-checkpoint" not in err
    assert not (tmp_path / "out").exists()


def _nan_token_checkpoint(checkpoint, folder: Path, word: str, others) -> Path:
    """A copy of ``checkpoint`` whose T5 embedding rows of the tokens that only ``word`` uses are NaN: prompts with
    that word diverge, the others (and the empty negative prompt) do not."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from transformers import T5Tokenizer

    shutil.copytree(checkpoint, folder)
    tokenizer = T5Tokenizer.from_pretrained(str(folder / "tokenizer_2"))
    own = set(tokenizer(word).input_ids) - set().union(*(tokenizer(o).input_ids for o in list(others) + [""]))
    own -= {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert own
    path = folder / "text_encoder_2" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["shared.weight"][sorted(own)] = np.nan
    save_file(tensors, str(path), metadata={"format": "pt"})
    return folder


def test_diverged_clip_is_named_not_written_and_fails_the_run(checkpoint, tmp_path, monkeypatch, capsys):
    """The middle prompt's T5 tokens carry NaN weights, so its audio is NaN: sample.py (run as a script) writes the
    other two clips (one of them in the same batch), nothing for that one, names it, counts it, and exits with
    status 1."""
    import runpy

    good, bad = ["a dog barks", "waves crash against rocks"], "thunder rolls over the hills"
    broken = _nan_token_checkpoint(checkpoint, tmp_path / "nan-ckpt", bad, good)
    common = ["--prompt", good[0], "--prompt", bad, "--prompt", good[1], "--duration", "0.36", "--steps", "2",
              "--batch-size", "2", "--no-progress"]
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["sample.py", "--checkpoint", str(broken), "--out", str(out)] + common)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "sample.py"), run_name="__main__")
    assert info.value.code == 1
    captured = capsys.readouterr()
    print(captured.out, captured.err)
    stems = ["0000_a-dog-barks", "0002_waves-crash-against-rocks"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in stems for e in ("json", "png", "wav"))
    assert "wrote 2 clips" in captured.out
    assert ("error: 1 of 3 clip(s) came out non-finite (NaN / inf) and were not written: "
            "0001_thunder-rolls-over-the-hills") in captured.err

    for stem in stems:  # real audio (the API test checks that a diverged prompt leaves the others' unchanged)
        wave = soundfile.read(str(out / f"{stem}.wav"))[0]
        assert wave.shape == (5760,) and wave.std() > 0.05
