"""The denoising training objective of latent diffusion (Ho et al.'s simple loss, in eps / v / x0 form)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


# 2^32 / golden ratio: (c * this) mod 2^32, over 2^32, is frac(c * phi) in exact integer arithmetic (Knuth's
# multiplicative hash), a low-discrepancy sequence: the held-out set's timesteps cover each stratum evenly whatever
# its size.
_GOLDEN_UINT32 = 2654435769


def stratified_timesteps(clip_ids: jax.Array, per_clip: int, num_train_timesteps: int) -> jax.Array:
    """Fixed evaluation timesteps: clip ``c`` (int ``[B]``) gets one timestep in each of ``per_clip`` equal strata of
    ``[0, T)``, ``t[c, k] = floor((k + frac(c * phi)) * T / per_clip)`` (phi the golden ratio). Returns int32
    ``[B, K]``."""
    hashed = clip_ids.astype(jnp.uint32) * jnp.uint32(_GOLDEN_UINT32)  # wraps mod 2^32
    offset = (hashed >> 8).astype(jnp.float32) / np.float32(2.0 ** 24)  # the top 24 bits: exact, below 1
    position = (jnp.arange(per_clip, dtype=jnp.float32)[None, :] + offset[:, None]) * (num_train_timesteps / per_clip)
    return jnp.clip(jnp.floor(position), 0, num_train_timesteps - 1).astype(jnp.int32)


def fixed_noise(key: jax.Array, clip_ids: jax.Array, per_clip: int, shape: tuple[int, ...], dtype=jnp.float32):
    """Unit Gaussian noise ``[B, K, *shape]``: draw ``k`` of clip ``c`` from ``fold_in(fold_in(key, c), k)``, the same
    whatever batch the clip sits in."""
    def per_example(clip):
        clip_key = jax.random.fold_in(key, clip)
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(clip_key, k), shape, dtype))(
            jnp.arange(per_clip))

    return jax.vmap(per_example)(clip_ids)


def fixed_draw_errors(schedule: NoiseSchedule, model_fn: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array,
                      clip_ids: jax.Array, key: jax.Array, per_clip: int,
                      prediction_type: str | None = None) -> tuple[jax.Array, jax.Array]:
    """The denoising loss at fixed draws, for held-out evaluation: each clip ``x0 [B, ...]`` is noised at its
    :func:`stratified_timesteps` with its :func:`fixed_noise`, so that the value depends on the model alone and
    points are comparable across steps and runs.

    Returns ``(errors [B, K], timesteps [B, K])``: the mean squared error against the target per (clip, draw)."""
    prediction_type = prediction_type or schedule.prediction_type
    timesteps = stratified_timesteps(clip_ids, per_clip, schedule.num_train_timesteps)
    noise = fixed_noise(key, clip_ids, per_clip, x0.shape[1:], x0.dtype)
    def draw_errors(draw):  # one model call per draw, looped (not unrolled): the program holds one model
        t, eps = draw
        target = training_target(schedule, x0, eps, t, prediction_type)
        error = model_fn(add_noise(schedule, x0, eps, t), t).astype(jnp.float32) - target.astype(jnp.float32)
        return jnp.mean(error * error, axis=tuple(range(1, error.ndim)))

    errors = jax.lax.map(draw_errors, (timesteps.T, jnp.swapaxes(noise, 0, 1)))  # [K, B]
    return errors.T, timesteps
