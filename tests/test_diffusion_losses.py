"""Forward process, training targets and the denoising loss, against diffusers and a direct NumPy computation."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import DDIMScheduler

from audioldm2_jax.diffusion import (
    NoiseSchedule, add_noise, diffusion_loss, draw_timesteps_and_noise, training_target, velocity)

PUBLISHED = json.loads((Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/scheduler.json").read_text())
SHAPE = (6, 8, 12, 4)


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_diffusers(PUBLISHED)


def test_add_noise_and_velocity_match_diffusers(schedule):
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    t = np.array([0, 1, 250, 500, 998, 999])
    ref = DDIMScheduler.from_config(PUBLISHED)
    ref_noisy = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    ref_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    noisy = jax.jit(add_noise)(schedule, x0, noise, t)
    v = jax.jit(velocity)(schedule, x0, noise, t)
    assert_close(noisy, ref_noisy, rel=1e-6, what="add_noise")
    assert_close(v, ref_v, rel=1e-6, what="velocity")
    np.testing.assert_array_equal(np.asarray(training_target(schedule, x0, noise, t, "epsilon")), noise)
    np.testing.assert_array_equal(np.asarray(training_target(schedule, x0, noise, t, "sample")), x0)


def numpy_loss(alphas_cumprod, x0, noise, t, scale, prediction_type):
    """The loss and its derivative in ``scale`` for the model ``scale * x_t + 1e-3 * t``, in float64."""
    a = np.asarray(alphas_cumprod, np.float64)[t].reshape(-1, 1, 1, 1)
    x0, noise = x0.astype(np.float64), noise.astype(np.float64)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    target = {"epsilon": noise, "v_prediction": np.sqrt(a) * noise - np.sqrt(1 - a) * x0,
              "sample": x0}[prediction_type]
    error = scale * x_t + 1e-3 * t.reshape(-1, 1, 1, 1) - target
    return np.mean(error**2), np.mean(2 * error * x_t)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def test_diffusion_loss_matches_numpy(schedule):
    """Loss and gradient for every target type, and the timestep / noise draws, in one compilation."""
    x0 = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    key = jax.random.key(5)

    def loss_fn(scale, prediction_type, key):
        model_fn = lambda x_t, t: scale * x_t + 1e-3 * t.astype(jnp.float32)[:, None, None, None]
        return diffusion_loss(schedule, model_fn, jnp.asarray(x0), key, prediction_type)

    @jax.jit
    def run(scale):
        results = {p: jax.value_and_grad(loss_fn)(scale, p, key) for p in PREDICTION_TYPES}
        other_key = loss_fn(scale, "epsilon", jax.random.key(6))
        many_t, many_noise = draw_timesteps_and_noise(schedule, jax.random.key(0), (4096, 2))
        return results, other_key, draw_timesteps_and_noise(schedule, key, SHAPE), (many_t, many_noise)

    results, other_key, (t, noise), (many_t, many_noise) = run(jnp.float32(0.8))
    t, noise = np.asarray(t), np.asarray(noise)
    for prediction_type, (loss, grad) in results.items():
        ref_loss, ref_grad = numpy_loss(schedule.alphas_cumprod, x0, noise, t, 0.8, prediction_type)
        assert loss.shape == () and loss.dtype == jnp.float32
        assert_close(loss, ref_loss, rel=1e-5, what=f"{prediction_type} loss")
        assert_close(grad, ref_grad, rel=1e-5, what=f"{prediction_type} d loss / d scale")
    # A different key draws different timesteps and noise, hence a different loss.
    assert abs(float(other_key) - float(results["epsilon"][0])) > 1e-4

    # Timesteps uniform over [0, N), unit normal noise.
    many_t = np.asarray(many_t)
    assert many_t.dtype == np.int32 and many_t.min() >= 0 and many_t.max() < schedule.num_train_timesteps
    assert many_t.min() < 10 and many_t.max() > 990 and abs(many_t.mean() - 499.5) < 20
    assert abs(float(np.asarray(many_noise).std()) - 1.0) < 0.05


def test_loss_errors(schedule):
    x0 = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_loss(schedule, lambda x, t: x, x0, jax.random.key(0), "flow")
    with pytest.raises(ValueError, match="shape"):  # raised while tracing: nothing is compiled
        jax.eval_shape(lambda: diffusion_loss(schedule, lambda x, t: x[:, :2], x0, jax.random.key(0)))
