"""The evaluation's extractors with each batch split over 4 of the suite's 8 simulated CPU devices (conftest sets
``--xla_force_host_platform_device_count=8`` before JAX starts, as for the other mesh tests): 5 clips in batches of
4 (the last batch ragged: 1 clip + 3 padding rows), parameters replicated. The features equal the models' own
functions run on one device without a mesh, within 1e-5 of their scale, and the outputs are really split (one
row per device)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import assert_close

from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.eval import run
from audioldm2_jax.eval.placement import BatchMesh, pad_rows
from audioldm2_jax.models.panns import Cnn14, dummy_waveform, panns_outputs
from audioldm2_jax.models.vggish import VGGish, vggish_dummy_inputs, vggish_embeddings

pytest.importorskip("torch")  # test_eval_command's random weights are saved as .pth files

from reference_init import random_extractor_params  # noqa: E402

DEVICES = 4
CLIPS = 5
BATCH = 4
SAMPLES = 32000  # 2 s, the evaluation's shortest clip: two VGGish examples, 201 CNN14 frames


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(11)
    return [(0.1 * rng.standard_normal(SAMPLES)).astype(np.float32) for _ in range(CLIPS)]


@pytest.fixture(scope="module")
def mesh():
    assert jax.local_device_count() >= DEVICES
    return BatchMesh(DEVICES)


def _compiled(fn, *args):
    """``fn`` compiled for one device with the project's XLA options (XLA:CPU's library fusions make small batches
    of these convolutions several times slower)."""
    return compile_lowered(jax.jit(fn).lower(*args))


def _check_split(out: dict, rows: int) -> None:
    for name, array in out.items():
        assert len(array.addressable_shards) == DEVICES, name
        assert {s.device for s in array.addressable_shards} == set(jax.local_devices()[:DEVICES]), name
        assert array.sharding.shard_shape(array.shape)[0] == rows // DEVICES, (name, array.sharding)


@pytest.mark.parametrize("name", ["vggish", "panns"])
def test_sharded_features_equal_one_device(name, clips, mesh):
    """``extract``'s batching path (``_batched`` over ``Extractor.on(mesh)``) against the bare model function on one
    device: VGGish embeddings ``[E, 128]``, CNN14 embedding ``[2048]`` and logits ``[527]`` per clip."""
    x = jax.device_put(np.stack(clips), jax.local_devices()[0])
    if name == "vggish":
        params = jax.device_put(random_extractor_params(VGGish(), vggish_dummy_inputs(), seed=0), x.device)
        single = {"vggish": _compiled(vggish_embeddings, params, x)(params, x)}
    else:
        params = jax.device_put(random_extractor_params(Cnn14(), (dummy_waveform(),), seed=1), x.device)
        out = _compiled(panns_outputs, params, x)(params, x)
        single = {"embedding": out["embedding"], "logits": out["logits"]}
    params = jax.device_get(params)
    extractor = run.Extractor(name, params, "random.pth", "0" * 64)
    features = extractor.on(mesh)

    rows = mesh.rows(BATCH)
    assert rows == BATCH
    out = features(np.stack(clips[:BATCH]))  # a full batch: the arrays the extractor hands back
    _check_split(out, rows)
    assert extractor.params is params  # host weights kept; the replica sits on the mesh's devices
    leaf = jax.tree.leaves(extractor._replica[1])[0]
    assert len(leaf.addressable_shards) == DEVICES and leaf.sharding.is_fully_replicated

    sharded = run._batched(features, clips, rows, None)  # 2 batches: 4 clips, then 1 clip + 3 padding rows
    assert len(sharded) == CLIPS
    assert set(sharded[0]) == set(single)
    for key, expected in single.items():
        got = np.stack([f[key] for f in sharded])
        err = assert_close(got, np.asarray(expected), rel=1e-5, what=f"{name} {key} on {DEVICES} devices")
        print(f"{name} {key}: {DEVICES} devices vs one, max error {err:.1e} of scale")


def test_batch_mesh_rows_and_padding():
    """Batch sizes round up to the device count; padding repeats the last row; bad counts are named."""
    mesh = BatchMesh(3)
    assert [mesh.rows(b) for b in (1, 3, 4, 8)] == [3, 3, 6, 9]
    x = np.arange(4).reshape(2, 2)
    np.testing.assert_array_equal(pad_rows(x, 3), [[0, 1], [2, 3], [2, 3]])
    with pytest.raises(ValueError, match="does not split over 3 devices"):
        mesh.split(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=f"this process has {jax.local_device_count()} device"):
        BatchMesh(jax.local_device_count() + 1)
    with pytest.raises(ValueError, match="batch_size=0"):
        mesh.rows(0)
