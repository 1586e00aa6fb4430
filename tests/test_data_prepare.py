"""`python -m audioldm2_jax.data.prepare` on a small manifest of good and bad files, and reading its ArrayRecord
shards back."""

import contextlib
import io
import json
import os
import runpy
import sys
from unittest import mock

import numpy as np
import pytest

from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.data import sources, testing, transforms


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Runs the module as ``python -m audioldm2_jax.data.prepare ...`` does (runpy, in this process: a fresh
    interpreter would spend most of the test importing)."""
    root = tmp_path_factory.mktemp("corpus")
    manifest, files = testing.corpus_manifest(root)
    out = root / "shards"
    argv = ["prepare", "--manifest", manifest, "--out", str(out), "--shards", "3"]
    stdout = io.StringIO()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout):
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module("audioldm2_jax.data.prepare", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    return root, manifest, files, out, stdout.getvalue()


def test_prepare_writes_shards_and_reports_skips(prepared):
    root, manifest, files, out, stdout = prepared
    info = json.loads((out / "dataset_info.json").read_text())
    good = [name for name, what in files.items() if what == "good"]
    assert info["num_records"] == len(good) and info["format"] == sources.RECORD_FORMAT
    assert len(info["shards"]) == 3 and sum(info["records_per_shard"]) == len(good)
    assert all((out / shard).exists() for shard in info["shards"])
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(os.path.basename(s["path"]) for s in skipped) == sorted(n for n, w in files.items() if w != "good")
    assert info["skipped"] == len(skipped)
    assert "missing.wav" in stdout and "no such file" in stdout  # reported by path


def test_array_record_source_reads_back(prepared):
    root, manifest, files, out, _ = prepared
    source = sources.ArrayRecordSource(out)
    manifest_source = sources.ManifestSource(manifest)
    originals = {entry.path: manifest_source[i] for i, entry in enumerate(manifest_source.entries)
                 if files[os.path.basename(entry.path)] == "good"}
    assert len(source) == sum(what == "good" for what in files.values())
    for i in range(len(source)):
        record = source[i]
        original = originals[record["path"]]
        assert record["sample_rate"] == 16000 and record["waveform"].ndim == 1
        assert record["captions"] == original["captions"] and record["labels"] == original["labels"]
        expected = audio_io.resample(transforms.to_mono(original["waveform"]), original["sample_rate"], 16000)
        expected = expected / max(1.0, np.abs(expected).max())
        assert record["waveform"].shape == expected.shape
        assert np.abs(record["waveform"] - expected).max() <= 1.0 / 32768 + 1e-6  # int16 rounding only
    # a glob and a file list reach the same records
    assert len(sources.ArrayRecordSource(str(out / "*.array_record"))) == len(source)
    import pickle

    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[1]["waveform"], source[1]["waveform"])


def test_clip_records_roundtrip_and_reject_corruption():
    pcm = (np.arange(1000) - 500).astype(np.int16)
    data = sources.encode_clip(pcm, 16000, ["a cat"], "meow", ["cat"], "/x.wav")
    record = sources.decode_clip(data)
    assert record["captions"] == ["a cat"] and record["transcription"] == "meow" and record["path"] == "/x.wav"
    np.testing.assert_array_equal(np.round(record["waveform"] * 32768).astype(np.int16), pcm)
    with pytest.raises(ValueError, match="truncated"):
        sources.decode_clip(data[:-10])
    with pytest.raises(ValueError, match="magic"):
        sources.decode_clip(b"RIFF" + data)


def test_prepare_nothing_usable_is_an_error(tmp_path):
    from audioldm2_jax.data import prepare

    manifest = testing.write_csv_manifest(tmp_path, [{"audio": "missing.wav", "caption": "x"}])
    with pytest.raises(ValueError, match="no usable clip"):
        prepare.prepare(manifest, tmp_path / "out", 2, log=lambda *_: None)
    assert prepare.main(["--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 1
