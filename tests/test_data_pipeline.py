"""The grain pipeline: batches, exact resume, per-host shards, epochs, bad data, global batches."""

import os

import jax
import numpy as np
import pytest

from audioldm2_jax.data import pipeline, testing

SHORT = {"source": "procedural", "clip_seconds": 0.64, "compute_fbank": False, "procedural_clips": 24,
         "read_threads": 2}


def same_batches(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            same_batches(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_layout_with_features():
    iterator = pipeline.make_dataset({**SHORT, "global_batch_size": 2, "compute_fbank": True}, 0, 1, seed=0)
    batch = next(iterator)
    assert batch["waveform"].shape == (2, 10240) and batch["waveform"].dtype == np.float32
    assert batch["log_mel"].shape == (2, 64, 64) and batch["fbank"].shape == (2, 1024, 128)
    assert batch["caption"].shape == (2,) and all(len(c) > 10 for c in batch["caption"])
    assert batch["path"][0].startswith("procedural:")
    attributes = batch["attributes"]
    assert attributes["pitch_class_mask"].shape == (2, 12) and attributes["instrument"].shape == (2,)
    assert iterator.local_batch_size == 2


def test_exact_resume_across_epochs():
    config = {**SHORT, "global_batch_size": 4, "procedural_clips": 10, "num_epochs": 3}
    iterator = pipeline.make_dataset(config, 0, 1, seed=7)
    for _ in range(2):
        next(iterator)  # the 3rd batch crosses into epoch 2 (10 clips per epoch)
    state = iterator.get_state()
    import json

    state = json.loads(json.dumps(state))  # what a checkpoint stores
    expected = [next(iterator) for _ in range(3)]
    restored = pipeline.make_dataset(config, 0, 1, seed=7)
    restored.set_state(state)
    for want in expected:
        same_batches(next(restored), want)
    # epochs: 30 clips in all = 7 batches of 4 (remainder dropped), each clip 3 times, reshuffled
    fresh = pipeline.make_dataset(config, 0, 1, seed=7)
    paths = [p for batch in fresh for p in batch["path"]]
    assert len(paths) == 28
    epochs = [paths[0:10], paths[10:20]]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    # a different seed, a different order; a state from another setup is refused
    other = pipeline.make_dataset(config, 0, 1, seed=8)
    assert [p for p in next(other)["path"]] != paths[:4]
    with pytest.raises(ValueError, match="different setup"):
        other.set_state(state)


def test_two_hosts_read_disjoint_shards_covering_the_data():
    config = {**SHORT, "global_batch_size": 2, "procedural_clips": 11, "num_epochs": 1}
    seen = []
    for host in range(2):
        iterator = pipeline.make_dataset(config, process_index=host, process_count=2, seed=3)
        seen.append([p for batch in iterator for p in batch["path"]])
    assert len(seen[0]) == len(seen[1]) == 5  # equal shares; the 11th clip is the remainder
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 10
    with pytest.raises(ValueError, match="does not split"):
        pipeline.make_dataset({**config, "global_batch_size": 3}, 0, 2)
    with pytest.raises(ValueError, match="outside"):
        pipeline.make_dataset(config, 2, 2)


def test_bad_files_are_skipped_counted_and_reported(tmp_path, caplog):
    manifest, files = testing.corpus_manifest(tmp_path)
    config = {"source": "manifest", "path": manifest, "clip_seconds": 0.5, "global_batch_size": 1,
              "num_epochs": 1, "compute_fbank": False, "read_threads": 2}
    iterator = pipeline.make_dataset(config, 0, 1, seed=0)
    batches = list(iterator)
    good = sorted(name for name, what in files.items() if what == "good")
    assert sorted(os.path.basename(b["path"][0]) for b in batches) == good
    for batch in batches:
        assert np.all(np.isfinite(batch["waveform"])) and np.all(np.isfinite(batch["log_mel"]))
        assert abs(np.abs(batch["waveform"]).max() - 0.5) < 1e-5
    bad = [name for name, what in files.items() if what != "good"]
    assert iterator.skip_log.total == len(bad)
    report = iterator.skip_report()
    assert all(name in report or name in caplog.text for name in bad)
    assert "missing.wav" in caplog.text and "no such file" in caplog.text
    # the counts travel with the iterator state (a resumed run keeps reporting the whole run)
    state = iterator.get_state()
    assert sum(state["pipeline"]["skipped"]["by_reason"].values()) == len(bad)
    resumed = pipeline.make_dataset(config, 0, 1, seed=0)
    resumed.set_state(state)
    assert resumed.skip_log.total == len(bad) and "missing.wav" in resumed.skip_report()
    with pytest.raises(StopIteration):
        next(resumed)


def test_nothing_usable_and_empty_datasets(tmp_path):
    testing.make_audio_corpus(tmp_path)
    rows = [{"audio": name, "caption": "x"} for name in ("silent.wav", "empty.wav", "missing.wav")] * 3
    manifest = testing.write_csv_manifest(tmp_path, rows, "bad.csv")
    config = {"source": "manifest", "path": manifest, "clip_seconds": 0.5, "global_batch_size": 1,
              "compute_fbank": False, "max_consecutive_skips": 5, "read_threads": 1}
    with pytest.raises(RuntimeError, match="unusable"):
        next(pipeline.make_dataset(config, 0, 1))

    class Empty:
        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="empty"):
        pipeline.make_dataset(SHORT, 0, 1, source=Empty())
    with pytest.raises(ValueError, match="cannot be shared"):
        pipeline.make_dataset({**SHORT, "procedural_clips": 3}, 0, 4)
    with pytest.raises(ValueError, match="unknown data config keys"):
        pipeline.make_dataset({**SHORT, "batch": 3}, 0, 1)


def test_global_batch_on_a_mesh():
    from audioldm2_jax.parallel.partitioning import make_mesh

    mesh = make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    iterator = pipeline.make_dataset({**SHORT, "global_batch_size": 8}, 0, 1, seed=0)
    local = next(iterator)
    placed = pipeline.global_batch(local, mesh)
    assert isinstance(placed["waveform"], jax.Array) and placed["waveform"].shape == (8, 10240)
    assert placed["waveform"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(placed["waveform"].addressable_shards) == 8
    assert placed["waveform"].addressable_shards[0].data.shape == (1, 10240)
    np.testing.assert_array_equal(np.asarray(placed["log_mel"]), local["log_mel"])
    assert isinstance(placed["caption"], np.ndarray) and placed["caption"].tolist() == local["caption"].tolist()
    assert isinstance(placed["attributes"]["pitch_class_mask"], jax.Array)
