"""The adversarial stages at micro size on procedural clips: the VAE (reconstruction + KL, PatchGAN switched on at
``vae.disc_start``) and the HiFi-GAN vocoder (mel L1 + feature matching + MPD / MSD). Each trains a few steps on
one device; the trained parameters are then evaluated on step 1's batch with step 1's random draws and compared
with the loss the random initialisation had there."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import train_fixtures as testing

from audioldm2_jax import components
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.metrics import read_jsonl

STEPS = 8


def _train(stage: str, workdir, **overrides):
    c = testing.micro_config(stage)
    c.num_steps = STEPS
    testing.override(c, **overrides)
    trainer = Trainer.build(c, workdir, devices=jax.devices()[:1])
    return trainer, trainer.run()


def _after_training(trainer, workdir) -> dict:
    state, frozen = testing.restore(trainer, workdir, STEPS)
    return testing.loss_at(trainer, state, frozen, testing.first_batch(trainer), 0,
                           testing.run_keys(trainer.config)[1])


PATCHGAN = dict(base_channels=8, num_layers=2, norm_groups=4)
DISC_START = 3


def test_vae_learns_to_reconstruct_and_switches_the_discriminator_on(tmp_path):
    trainer, summary = _train("vae", tmp_path, **{"vae.disc_start": DISC_START, "model.discriminator": PATCHGAN,
                                                  "optimizer.weight_decay": 0.0})
    assert trainer.stage.groups == ("vae", "discriminator")
    assert summary["final_step"] == STEPS and summary["skipped_steps"] == 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    # Step s (1-based in the log) ran with state.step = s - 1: the hinge terms count from disc_start on.
    for row in rows:
        on = row["step"] - 1 >= DISC_START
        assert (row["discriminator/loss"] != 0.0) == on, row
        if on:
            assert row["discriminator/loss"] == pytest.approx(row["discriminator/d_loss_raw"], rel=1e-6)
            assert np.isfinite(row["vae/d_weight"]) and row["vae/d_weight"] > 0
    after = _after_training(trainer, tmp_path)
    assert after["vae/rec_l1"] < 0.9 * rows[0]["vae/rec_l1"], (rows[0]["vae/rec_l1"], after["vae/rec_l1"])

    config, params, extra = components.load("vae", tmp_path / "export")
    assert config == trainer.stage.model_configs["vae"] and extra["stage"] == "vae"
    assert not (tmp_path / "export" / "discriminator").exists()  # training-only networks stay out of the export


def test_vae_without_adversarial_term_builds_no_discriminator(tmp_path):
    c = testing.micro_config("vae")
    c.vae.disc_start = 10 * c.num_steps
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    assert trainer.stage.groups == ("vae",)


HIFIGAN_DISC = dict(periods=(2, 3), period_channels=(4, 8), num_scales=2, scale_channels=(4, 8, 8),
                    scale_kernel_sizes=(5, 5, 3), scale_strides=(1, 2, 1), scale_groups=(1, 2, 1))


def test_vocoder_learns_the_mel_to_waveform_map(tmp_path):
    """HiFi-GAN's losses plus the optional multi-resolution STFT term (weight 2 here, at two resolutions that fit
    the 2560-sample segments)."""
    trainer, summary = _train("vocoder", tmp_path, **{"model.discriminator": HIFIGAN_DISC,
                                                      "vocoder.segment_frames": 16, "optimizer.weight_decay": 0.0,
                                                      "vocoder.stft_weight": 2.0,
                                                      "vocoder.stft_resolutions": ((256, 64), (1024, 256))})
    assert trainer.stage.groups == ("generator", "discriminator")
    assert summary["skipped_steps"] == 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for row in rows:  # the generator's loss is its weighted parts (vocoder.* weights of the config)
        expected = (row["generator/adv"] + row["generator/feature_matching"] + 45.0 * row["generator/mel_l1"]
                    + 2.0 * row["generator/stft"])
        assert row["generator/loss"] == pytest.approx(expected, rel=1e-5)
    after = _after_training(trainer, tmp_path)
    assert after["generator/mel_l1"] < 0.9 * rows[0]["generator/mel_l1"], (rows[0], after)
    assert after["generator/stft"] < rows[0]["generator/stft"], (rows[0], after)
    config, _, _ = components.load("vocoder", tmp_path / "export")
    assert config == trainer.stage.model_configs["vocoder"]
    assert not any((tmp_path / "export" / name).exists() for name in ("mpd", "msd"))


def test_vocoder_without_adversarial_terms_trains_the_generator_alone(tmp_path):
    """adv_weight = feature_weight = 0: no discriminator is built or trained, and the loss is the spectral terms."""
    c = testing.override(testing.micro_config("vocoder"), **{
        "vocoder.adv_weight": 0.0, "vocoder.feature_weight": 0.0, "vocoder.segment_frames": 16,
        "vocoder.stft_weight": 2.0, "vocoder.stft_resolutions": ((256, 64), (1024, 256))})
    c.num_steps = 2
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    assert trainer.stage.groups == ("generator",)
    trainer.run()
    for row in read_jsonl(tmp_path / "metrics.jsonl"):  # one group: its metrics carry no group prefix
        assert row["loss"] == pytest.approx(45.0 * row["mel_l1"] + 2.0 * row["stft"], rel=1e-5)
        assert "adv" not in row and not any(key.startswith("discriminator/") for key in row)


def test_vocoder_segment_longer_than_the_clip_is_a_config_error(tmp_path):
    c = testing.micro_config("vocoder")
    c.model.discriminator = HIFIGAN_DISC
    c.vocoder.segment_frames = 1000
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    with pytest.raises(config_lib.ConfigError, match="segment_frames=1000"):
        trainer.device_batch(testing.first_batch(trainer))


def test_vocoder_stft_window_longer_than_the_segment_is_a_config_error(tmp_path):
    c = testing.override(testing.micro_config("vocoder"), **{
        "model.discriminator": HIFIGAN_DISC, "vocoder.segment_frames": 8, "vocoder.stft_weight": 1.0})
    with pytest.raises(config_lib.ConfigError, match="n_fft 2048 > the 1280 samples"):
        Trainer.build(c, tmp_path, devices=jax.devices()[:1])
