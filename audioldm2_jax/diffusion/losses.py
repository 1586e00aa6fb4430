"""The denoising training objective of latent diffusion (Ho et al.'s simple loss, in eps / v / x0 form)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from audioldm2_jax.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule, add_noise, training_target


def draw_timesteps_and_noise(schedule: NoiseSchedule, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32):
    """Training timesteps uniform in ``[0, N)`` (int32 ``[B]``) and unit Gaussian noise shaped ``shape``
    (``[B, ...]``), from ``key`` split in two: ``(t_key, noise_key)``."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (shape[0],), 0, schedule.num_train_timesteps, dtype=jnp.int32)
    return t, jax.random.normal(noise_key, shape, dtype)


def diffusion_loss(schedule: NoiseSchedule, model_fn: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array,
                   key: jax.Array, prediction_type: str | None = None) -> jax.Array:
    """Mean squared error between ``model_fn(x_t, t)`` and the target at a random ``t`` per example.

    ``x0``: clean latents ``[B, ...]``; ``model_fn(x_t [B, ...], t int32 [B]) -> [B, ...]``; ``prediction_type``
    (epsilon / v_prediction / sample, default the schedule's) picks the target. ``t`` and the noise come from
    :func:`draw_timesteps_and_noise`. The mean runs over every element, which equals the mean of per-example
    means for equally shaped examples. Returns a float32 scalar.
    """
    prediction_type = prediction_type or schedule.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    t, noise = draw_timesteps_and_noise(schedule, key, x0.shape, x0.dtype)
    target = training_target(schedule, x0, noise, t, prediction_type)
    prediction = model_fn(add_noise(schedule, x0, noise, t), t)
    if prediction.shape != target.shape:
        raise ValueError(f"model output shape {prediction.shape} != target shape {target.shape}")
    error = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    return jnp.mean(error * error)
