"""Batch sampling across 8 simulated CPU devices: parameters placed by their logical axis names over a
(data 2, fsdp 2, tensor 2) mesh, the batch split over (data, fsdp); the audio equals the one-device audio. A batch
the batch axes do not divide is replicated (with a warning) and still gives the same audio."""

import copy
import logging

import jax
import numpy as np
import pytest
from conftest import assert_close
from jax.sharding import PartitionSpec
from pipeline_fixtures import tiny_checkpoint

from audioldm2_jax import AudioLDM2Pipeline
from audioldm2_jax.parallel.partitioning import make_mesh
from audioldm2_jax.pipeline import DecodeChunking

PROMPTS = ["a dog barks in the distance", "a violin plays a slow sad melody"]
KWARGS = dict(negative_prompt="thunder", audio_length_in_s=0.36, num_inference_steps=2, seed=5)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("tiny-sharded"), "text")
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    single = AudioLDM2Pipeline.from_pretrained(folder)
    return single, single.on_mesh(mesh)


def test_parameters_are_sharded_by_logical_axes(pipes):
    _, sharded = pipes
    unet = sharded.params["unet"]["params"]
    ff = unet["down_blocks_1"]["attentions_1"]["transformer_blocks_0"]["ff"]["net_2"]["kernel"]  # (mlp, embed)
    assert ff.sharding.spec == PartitionSpec("tensor", "fsdp")
    t5 = sharded.params["text_encoder_2"]["params"]["encoder"]["block_0"]["layer_1"]["DenseReluDense"]["wi_0"]
    assert t5["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
    leaves = jax.tree.leaves(sharded.params)
    total = sum(x.nbytes for x in leaves)
    first = jax.devices()[0]
    on_first = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == first)
    assert on_first < total / 2, (on_first, total)


@pytest.fixture(scope="module")
def one_device(pipes):
    """2 prompts x 2 waveforms on one device: (ranked waveforms, ranking)."""
    single, _ = pipes
    out = single.generate(PROMPTS, num_waveforms_per_prompt=2, **KWARGS)
    print(f"one device: {out.timings}")
    return out.waveforms, out.ranking


def test_sharded_batch_matches_one_device(pipes, one_device):
    _, sharded = pipes
    expected, ranking = one_device
    # 4 rows (8 with guidance) over data x fsdp = 4; CLAP ranking included.
    out = sharded.generate(PROMPTS, num_waveforms_per_prompt=2, **KWARGS)
    ours = out.waveforms
    np.testing.assert_array_equal(out.ranking, ranking)
    err = assert_close(ours, expected, rel=1e-5, what="8-device waveforms")
    print(f"sharded batch: max abs error {np.abs(ours - expected).max():.2e} (relative {err:.1e}); "
          f"mesh {out.timings}")


def test_indivisible_batch_is_replicated(pipes, one_device, caplog):
    """One waveform per prompt: 2 rows, not a multiple of data x fsdp = 4. Row p starts from the same noise as
    waveform 0 of prompt p on one device (the noise depends on the seed and the index within the prompt only)."""
    _, sharded = pipes
    ranked, ranking = one_device
    unranked = ranked[np.argsort(ranking)]  # generation order: row p * 2 + k
    with caplog.at_level(logging.WARNING, logger="audioldm2_jax.pipeline"):
        ours = sharded(PROMPTS, **KWARGS)
    assert "replicating" in caplog.text
    assert_close(ours, unranked[[0, 2]], rel=1e-5, what="replicated batch")


def test_windowed_decoding_on_the_mesh_matches_one_device(pipes, one_device):
    """A clip past ``decode_chunking.above_s`` on the mesh: the sampling program returns sharded latents, the VAE
    decoder streams them window by window (its parameters sharded) and the vocoder runs in windows under the mesh;
    the ranked waveforms equal the one-device whole decode."""
    _, sharded = pipes
    expected, ranking = one_device
    windowed = copy.copy(sharded)
    windowed._compiled = dict(sharded._compiled)
    windowed.decode_chunking = DecodeChunking(window_s=0.12, margin_s=0.32, above_s=0.2)
    plan = windowed._chunk_plan(windowed.frames_for(KWARGS["audio_length_in_s"]))
    assert plan is not None and len(plan.starts) == 3, plan
    out = windowed.generate(PROMPTS, num_waveforms_per_prompt=2, **KWARGS)
    np.testing.assert_array_equal(out.ranking, ranking)
    err = assert_close(out.waveforms, expected, rel=1e-5, what="windowed decoding on the mesh")
    print(f"windowed decoding on 8 devices vs whole on one: relative error {err:.1e}")
