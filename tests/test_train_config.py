"""The training config's value checks (``audioldm2_jax.train.config.validate``): intervals a step count is divided
by, optimizer settings, probabilities, weights and sizes are refused before anything is built, each with a message
naming the key, the value and the allowed range; every limit value that makes sense is accepted."""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import pytest
import train_fixtures as testing

from audioldm2_jax.train import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = math.nan, math.inf


def config_with(**dotted):
    """``base_config()`` with dotted overrides (``{"log.every_steps": 0}``)."""
    return testing.override(config_lib.base_config(), **dotted)


def problems_of(config) -> str:
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config)
    return str(info.value)


BAD = [
    # intervals: `step % every_steps` raised ZeroDivisionError after the first step
    ({"log.every_steps": 0}, "log.every_steps=0 must be an integer >= 1"),
    ({"log.every_steps": -5}, "log.every_steps=-5 must be an integer >= 1"),
    ({"checkpoint.every_steps": 0}, "checkpoint.every_steps=0 must be an integer >= 1"),
    ({"log.sample_every_steps": -1}, "log.sample_every_steps=-1 must be an integer >= 0 (0: no samples)"),
    ({"log.num_samples": 0}, "log.num_samples=0 must be an integer >= 1"),
    ({"log.sample_steps": 0}, "log.sample_steps=0 must be an integer >= 1"),
    ({"checkpoint.keep": -1}, "checkpoint.keep=-1 must be an integer >= 0 (0: keep every checkpoint)"),
    # optimizer
    ({"optimizer.learning_rate": 0.0}, "optimizer.learning_rate=0.0 must be a finite number in (0, inf)"),
    ({"optimizer.learning_rate": -1e-4}, "optimizer.learning_rate=-0.0001 must be a finite number in (0, inf)"),
    ({"optimizer.learning_rate": NAN}, "optimizer.learning_rate=nan must be a finite number in (0, inf)"),
    ({"optimizer.learning_rate": INF}, "optimizer.learning_rate=inf must be a finite number in (0, inf)"),
    ({"optimizer.warmup_steps": 100_001}, "optimizer.warmup_steps=100001 is more than num_steps=100000"),
    ({"optimizer.warmup_steps": -1}, "optimizer.warmup_steps=-1 must be an integer >= 0"),
    ({"optimizer.b1": 1.0}, "optimizer.b1=1.0 must be a finite number in [0, 1)"),
    ({"optimizer.b2": -0.1}, "optimizer.b2=-0.1 must be a finite number in [0, 1)"),
    ({"optimizer.eps": 0.0}, "optimizer.eps=0.0 must be a finite number in (0, inf)"),
    ({"optimizer.weight_decay": -0.01}, "optimizer.weight_decay=-0.01 must be a finite number in [0, inf)"),
    ({"optimizer.end_learning_rate_factor": 1.5},
     "optimizer.end_learning_rate_factor=1.5 must be a finite number in [0, 1]"),
    ({"optimizer.grad_clip_norm": 0.0}, "optimizer.grad_clip_norm=0.0 must be a finite number > 0 (None: no clipping)"),
    ({"optimizer.grad_clip_norm": -1.0}, "optimizer.grad_clip_norm=-1.0 must be a finite number > 0"),
    ({"optimizer.grad_clip_norm": NAN}, "optimizer.grad_clip_norm=nan must be a finite number > 0"),
    # EMA and probabilities
    ({"ema.decay": 1.0}, "ema.decay=1.0 must be a finite number in [0, 1)"),
    ({"ema.decay": -0.5}, "ema.decay=-0.5 must be a finite number in [0, 1)"),
    ({"ema.decay": NAN}, "ema.decay=nan must be a finite number in [0, 1)"),
    ({"joint.p_gt": 1.5}, "joint.p_gt=1.5 must be a finite number in [0, 1]"),
    ({"joint.p_gt": NAN}, "joint.p_gt=nan must be a finite number in [0, 1]"),
    ({"ldm.cond_dropout": 1.0}, "ldm.cond_dropout=1.0 must be a finite number in [0, 1)"),
    ({"gpt2.cond_dropout": -0.1}, "gpt2.cond_dropout=-0.1 must be a finite number in [0, 1)"),
    ({"gpt2.cond_dropout": 1.2}, "gpt2.cond_dropout=1.2 must be a finite number in [0, 1)"),
    ({"audiomae.mask_ratio": 1.0}, "audiomae.mask_ratio=1.0 must be a finite number in [0, 1)"),
    ({"audiomae.mask_ratio": -0.2}, "audiomae.mask_ratio=-0.2 must be a finite number in [0, 1)"),
    # sizes, weights, scales
    ({"batch_size": -8}, "batch_size=-8 must be a positive integer"),
    ({"ldm.latent_scale": 0.0}, "ldm.latent_scale=0.0 must be a finite number in (0, inf)"),
    ({"gpt2.loa_lambda": 0}, "gpt2.loa_lambda=0 must be an integer >= 1"),
    ({"joint.gpt2_loss_weight": -1.0}, "joint.gpt2_loss_weight=-1.0 must be a finite number in [0, inf)"),
    ({"vae.kl_weight": -1e-6}, "vae.kl_weight=-1e-06 must be a finite number in [0, inf)"),
    ({"vae.disc_weight": NAN}, "vae.disc_weight=nan must be a finite number in [0, inf)"),
    ({"vae.disc_start": -1}, "vae.disc_start=-1 must be an integer >= 0"),
    ({"vae.rec_loss": "l2"}, "vae.rec_loss='l2': the VAE stage trains with the L1 reconstruction loss only"),
    ({"vocoder.segment_frames": 0}, "vocoder.segment_frames=0 must be an integer >= 1"),
    ({"vocoder.mel_weight": -45.0}, "vocoder.mel_weight=-45.0 must be a finite number in [0, inf)"),
    ({"vocoder.stft_resolutions": ((512, 1024),)},
     "vocoder.stft_resolutions entry (512, 1024) must be (n_fft, hop) with 0 < hop <= n_fft"),
    ({"diffusion.num_train_timesteps": 0}, "diffusion.num_train_timesteps=0 must be an integer >= 1"),
    ({"diffusion.beta_end": 1.0}, "diffusion.beta_end=1.0 must be a finite number in (0, 1)"),
    ({"diffusion.beta_schedule": "cosine"}, "diffusion.beta_schedule='cosine' is not one of"),
    ({"text.t5_max_length": 0}, "text.t5_max_length=0 must be an integer >= 1"),
    ({"data.read_threads": -1}, "data.read_threads=-1 must be an integer >= 0"),
    ({"data.worker_buffer_size": 0}, "data.worker_buffer_size=0 must be an integer >= 1"),
    ({"data.procedural_clips": 0}, "data.procedural_clips=0 must be an integer >= 1"),
    ({"data.clip_seconds": 0.0}, "data.clip_seconds=0.0 must be a finite number in (0.06, inf)"),
    ({"data.num_epochs": 0}, "data.num_epochs=0 must be an integer >= 1 (None: repeat forever)"),
    ({"data.silence_peak": -1.0}, "data.silence_peak=-1.0 must be a finite number in [0, inf)"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[",".join(f"{k}={v}" for k, v in o.items()) for o, _ in BAD])
def test_bad_value_is_refused_naming_it(overrides, message):
    config = config_with(**overrides)
    text = problems_of(config)
    assert message in text, text
    assert text.startswith("config error: ")


def test_group_optimizer_overrides_are_checked():
    config = config_lib.base_config()
    config.group_optimizers = {"discriminator": {"learning_rate": -2e-4, "warmup_steps": 10**6}}
    text = problems_of(config)
    assert "group_optimizers.discriminator.learning_rate=-0.0002 must be a finite number in (0, inf)" in text
    assert "group_optimizers.discriminator.warmup_steps=1000000 is more than num_steps=100000" in text
    assert "optimizer.learning_rate" not in text.replace("discriminator.learning_rate", "")  # the base is fine


def test_every_problem_is_listed_at_once():
    text = problems_of(config_with(**{"log.every_steps": 0, "checkpoint.every_steps": 0,
                                      "optimizer.learning_rate": NAN}))
    assert len(re.findall(r"(log|checkpoint)\.every_steps=0|optimizer\.learning_rate=nan", text)) == 3, text


def test_limit_values_are_accepted():
    """The edges that mean something: no EMA, no samples, keep every checkpoint, no clipping, warmup over the whole
    run, probabilities 0 and 1 where they are allowed, no masking."""
    config_lib.validate(config_lib.base_config())
    config_lib.validate(config_with(**{
        "ema.decay": 0.0, "log.sample_every_steps": 0, "checkpoint.keep": 0, "optimizer.grad_clip_norm": None,
        "optimizer.warmup_steps": 100_000, "optimizer.end_learning_rate_factor": 1.0, "joint.p_gt": 1.0,
        "ldm.cond_dropout": 0.0, "gpt2.cond_dropout": 0.0, "audiomae.mask_ratio": 0.0, "optimizer.learning_rate": 1e-12,
        "optimizer.b1": 0.0, "data.num_epochs": None, "data.read_threads": 0, "vae.kl_weight": 0.0}))
    config_lib.validate(config_with(**{"joint.p_gt": 0.0, "ema.decay": 0.9999}))


def test_trainer_refuses_a_zero_interval_before_building(tmp_path):
    """``log.every_steps = 0`` used to train one step and then divide by zero; now the trainer refuses it first."""
    from audioldm2_jax.train.loop import Trainer

    for key in ("log.every_steps", "checkpoint.every_steps"):
        config = config_lib.load_config_file(str(ROOT / "configs" / "smoke.py"))
        testing.override(config, **{key: 0, "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1})
        with pytest.raises(config_lib.ConfigError, match=re.escape(f"{key}=0 must be an integer >= 1")):
            Trainer.build(config, tmp_path / key, devices=jax.devices()[:1])
