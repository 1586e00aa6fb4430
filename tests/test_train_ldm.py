"""The LDM stage at micro size (frozen random VAE / AudioMAE / T5, procedural clips): the loss goes down, the latent
scale comes from data, a resumed run repeats the next step's loss, the export loads back, and a checkpoint
restored onto an 8-device data x fsdp x tensor mesh takes the same step as on one device."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import matplotlib.image
import numpy as np
import pytest
import train_fixtures as testing

from audioldm2_jax import components
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.metrics import read_jsonl

STEPS = 8


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return testing.caption_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def ldm_run(tokenizers, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ldm")
    c = testing.micro_config("ldm", tokenizers)
    c.log.update(dict(sample_every_steps=4, num_samples=1, sample_steps=3))
    trainer = Trainer.build(c, workdir, devices=jax.devices()[:1])
    summary = trainer.run()
    return trainer, summary, workdir


def test_lambda_is_drawn_per_step_reproducibly(tokenizers):
    from audioldm2_jax.train.stages import make_stage

    c = testing.micro_config("ldm", tokenizers)
    c.ldm.loa_lambdas = (1, 2, 4, 8)
    stage = make_stage(c)
    draws = [stage.step_options(s) for s in range(800)]
    assert draws == [stage.step_options(s) for s in range(800)]
    counts = np.array([draws.count(v) for v in (1, 2, 4, 8)])
    assert counts.min() > 150, counts  # uniform: 200 each expected
    c.ldm.loa_lambdas = (16,)  # does not divide the 8 x 8 patch grid of a 128-frame AudioMAE
    with pytest.raises(config_lib.ConfigError, match="LOA pooling"):
        make_stage(c)


def test_training_lowers_the_loss_and_scales_latents_from_data(ldm_run):
    trainer, summary, workdir = ldm_run
    assert summary["final_step"] == STEPS and summary["skipped_steps"] == 0
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # latent_scale = 1 / std of the first batch's latents: the first step's latents have unit spread
    assert 0.8 < rows[0]["latent_std"] < 1.25
    # The trained parameters on step 1's batch with step 1's random draws (timesteps, noise, dropout), against
    # the loss the random initialisation had there.
    state, frozen = testing.restore(trainer, workdir, STEPS)
    after = testing.loss_at(trainer, state, frozen, testing.first_batch(trainer), 0, testing.run_keys(trainer.config)[1])
    assert after["loss"] < 0.75 * rows[0]["loss"], (rows[0]["loss"], after["loss"])


def test_spectrogram_samples_are_logged(ldm_run):
    trainer, _, workdir = ldm_run
    frames = trainer.config.data.clip_seconds * 100
    for step in (4, STEPS):
        for name in ("input_0", "generated_0"):
            image = matplotlib.image.imread(workdir / "samples" / f"{step:08d}_samples_{name}.png")
            # frequency up (64 mel bins), time right (the clip's frames, cut to a multiple of the VAE factor)
            assert image.shape[:2] == (64, frames), (name, image.shape)
    assert not list((workdir / "samples").glob("*generated_1*"))  # log.num_samples=1


def test_sharded_step_equals_one_device_step_after_restoring_onto_each_mesh(ldm_run, tokenizers, tmp_path):
    t1, _, workdir = ldm_run
    # data x fsdp x tensor with one example per data shard: the layout for which XLA's partitioner needs the
    # conv_in workaround of partitioning.training_rules (without it the gradient norm is 0.16 % off).
    t8 = Trainer.build(testing.micro_config("ldm", tokenizers, data=2, fsdp=2, tensor=2), tmp_path)
    state8, frozen8 = testing.restore(t8, workdir, 4)
    state1, frozen1 = testing.restore(t1, workdir, 4)
    assert len(state1.params["unet"]["unet"]["conv_in"]["kernel"].sharding.device_set) == 1
    ff = state8.params["unet"]["unet"]["down_blocks_1"]["attentions_0"]["transformer_blocks_0"]["ff"]["net_2"]["kernel"]
    assert ff.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp") and len(ff.addressable_shards) == 8
    assert len(frozen8["t5"]["shared"]["embedding"].sharding.device_set) == 8
    conv = state8.params["unet"]["unet"]["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]
    assert conv.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "tensor")  # conv_in left unsharded
    host = testing.first_batch(t8, 1)
    key = jax.random.key(11)
    new8, m8 = t8.step(state8, frozen8, t8.device_batch(host), key, 4)
    new1, m1 = t1.step(state1, frozen1, t1.device_batch(host), key, 4)
    for name in ("loss", "grad_norm", "latent_std"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-4, err_msg=name)
    worst = 0.0
    for a, b in zip(jax.tree.leaves(jax.device_get(new8.params)), jax.tree.leaves(jax.device_get(new1.params))):
        worst = max(worst, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
    assert worst < 1e-5


def test_resumed_run_repeats_the_next_step_loss_and_exports(ldm_run, tokenizers):
    trainer, _, workdir = ldm_run
    logged = {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")}
    config, params, extra = components.load("unet", workdir / "export")
    # the export records the training clip length as the UNet's sample_size (the pipeline's default duration)
    assert config == dataclasses.replace(trainer.stage.model_configs["unet"], sample_size=128 // 4)
    state, _ = testing.restore(trainer, workdir, STEPS)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(state.ema["unet"]["unet"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert extra["step"] == STEPS and extra["stage"] == "ldm"

    resumed_dir = workdir.parent / (workdir.name + "_resumed")
    shutil.copytree(workdir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / str(STEPS))
    (resumed_dir / "metrics.jsonl").unlink()
    c = testing.micro_config("ldm", tokenizers)
    c.num_steps = 5
    resumed = Trainer.build(c, resumed_dir, devices=jax.devices()[:1])
    resumed.compiled = trainer.compiled  # the same program
    summary = resumed.run()
    assert summary["resumed_from"] == 4 and summary["final_step"] == 5
    row = read_jsonl(resumed_dir / "metrics.jsonl")[-1]
    assert row["step"] == 5 and row["loss"] == pytest.approx(logged[5], rel=1e-6)
