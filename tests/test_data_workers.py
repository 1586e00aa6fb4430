"""Worker processes (grain ``mp_prefetch``): the same batches as in-process loading, and exact rewinds to a
saved state. One iterator, so the workers are started once (each start imports grain and JAX: seconds)."""

import json

import numpy as np

from audioldm2_jax.data import pipeline

CONFIG = {"source": "procedural", "clip_seconds": 0.64, "compute_fbank": False, "procedural_clips": 40,
          "global_batch_size": 4, "read_threads": 1, "num_workers": 2}


def test_workers_match_in_process_loading_and_restore_exactly():
    in_process = pipeline.make_dataset({**CONFIG, "num_workers": 0}, 0, 1, seed=5)
    expected = [next(in_process) for _ in range(4)]
    workers = pipeline.make_dataset(CONFIG, 0, 1, seed=5)
    try:
        first = next(workers)
        np.testing.assert_array_equal(first["waveform"], expected[0]["waveform"])
        state = json.loads(json.dumps(workers.get_state()))  # as a checkpoint stores it
        for want in expected[1:3]:
            got = next(workers)
            assert got["path"].tolist() == want["path"].tolist()
            np.testing.assert_array_equal(got["log_mel"], want["log_mel"])
        workers.set_state(state)  # back to just after the first batch: the workers take the state over
        for want in expected[1:]:
            got = next(workers)
            assert got["caption"].tolist() == want["caption"].tolist()
            np.testing.assert_array_equal(got["waveform"], want["waveform"])
    finally:
        workers.close()
