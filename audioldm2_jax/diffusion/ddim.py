"""DDIM (Song et al., 2021): the deterministic (eta = 0) or partly stochastic sampler of diffusers' DDIMScheduler.

From a model output at timestep ``t`` the step forms the predicted clean sample ``x0`` and noise ``eps`` and
moves to ``t' = t - N // S``:

    x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t' - sigma_t^2) eps + sigma_t z,
    sigma_t = eta * sqrt((1 - abar_t') / (1 - abar_t) * (1 - abar_t / abar_t')),

with ``abar_t'`` replaced by 1 (``set_alpha_to_one``) or ``abar_0`` once ``t'`` drops below zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.diffusion.base import Sampler, as_table, in_compute_dtype, lookup
from audioldm2_jax.diffusion.schedule import (
    NoiseSchedule, SCHEDULE_DEFAULTS, _check_bool, _check_float, offset_timesteps, read_scheduler_config,
    read_spacing, transfer_alphas)

# DDIMScheduler.__init__'s signature and defaults (diffusers 0.42), every key: what from_config reads. Note
# clip_sample: on by default, as in diffusers, so a config that omits it (or lists it in _use_default_values) clips
# x0 to [-1, 1]; the published AudioLDM 2 config says false explicitly. Options that only act with thresholding
# (dynamic_thresholding_ratio, sample_max_value) are read and unused.
DDIM_DEFAULTS = {
    **SCHEDULE_DEFAULTS,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


@dataclasses.dataclass(frozen=True, eq=False)
class DDIMSampler(Sampler):
    """DDIM over a static plan. Tables (float32 ``[S]``): ``sqrt_alpha`` / ``sqrt_one_minus_alpha`` at ``t``,
    ``sqrt_alpha_prev`` at ``t'``, ``direction`` = ``sqrt(1 - abar_t' - sigma_t^2)`` and ``noise_std`` =
    ``sigma_t``. The state is empty."""

    sqrt_alpha: np.ndarray = None
    sqrt_one_minus_alpha: np.ndarray = None
    sqrt_alpha_prev: np.ndarray = None
    direction: np.ndarray = None
    noise_std: np.ndarray = None
    eta: float = 0.0
    clip_sample_range: float | None = None
    use_clipped_model_output: bool = False

    @classmethod
    def from_config(cls, d: Mapping[str, Any], num_inference_steps: int, eta: float = 0.0,
                    use_clipped_model_output: bool = False) -> "DDIMSampler":
        """As ``DDIMScheduler.from_config(d)`` + ``set_timesteps(num_inference_steps)``, stepping with ``eta``.

        ``d`` is read with diffusers' rules (:func:`~audioldm2_jax.diffusion.schedule.read_scheduler_config`):
        DDIM's own defaults for what it lacks or lists in ``_use_default_values``."""
        owner = "DDIMSampler"
        c = read_scheduler_config(d, DDIM_DEFAULTS, owner)
        schedule = NoiseSchedule.from_diffusers(c)
        n = schedule.num_train_timesteps
        spacing, offset, steps = read_spacing(c, num_inference_steps, owner)
        eta = _check_float(eta, "eta", owner)
        if eta < 0:
            raise ValueError(f"{owner}: eta={eta} must be >= 0")
        clip = _check_bool(c["clip_sample"], "clip_sample", owner)
        clip_range = _check_float(c["clip_sample_range"], "clip_sample_range", owner) if clip else None

        timesteps = offset_timesteps(spacing, n, steps, offset, owner)
        # diffusers steps back by a fixed stride, whatever the spacing.
        prev_timesteps = timesteps - n // steps

        abar = schedule.host_alphas_cumprod().astype(np.float64)
        a_t, a_prev = transfer_alphas(abar, timesteps, prev_timesteps,
                                      _check_bool(c["set_alpha_to_one"], "set_alpha_to_one", owner))
        # The float32 tables diffusers reads its scalars from, before any further arithmetic.
        a_t, a_prev = a_t.astype(np.float32).astype(np.float64), a_prev.astype(np.float32).astype(np.float64)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * np.sqrt(variance)
        return cls(
            name="ddim", timesteps=timesteps.astype(np.int32), prediction_type=schedule.prediction_type,
            sqrt_alpha=as_table(np.sqrt(a_t)), sqrt_one_minus_alpha=as_table(np.sqrt(1 - a_t)),
            sqrt_alpha_prev=as_table(np.sqrt(a_prev)),
            direction=as_table(np.sqrt(np.maximum(1 - a_prev - std * std, 0.0))), noise_std=as_table(std),
            eta=eta, clip_sample_range=clip_range,
            use_clipped_model_output=bool(use_clipped_model_output))

    def init_state(self, sample):
        return ()

    def predict_x0_and_eps(self, model_output, step_index, sample):
        """Clean-sample and noise predictions from the model output at step ``step_index``: ``[B, ...]`` each."""
        sa, sb = lookup(self.sqrt_alpha, step_index), lookup(self.sqrt_one_minus_alpha, step_index)
        if self.prediction_type == "epsilon":
            x0, eps = (sample - sb * model_output) / sa, model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - sa * x0) / sb
        else:  # v_prediction
            x0 = sa * sample - sb * model_output
            eps = sa * model_output + sb * sample
        if self.clip_sample_range is not None:
            x0 = jnp.clip(x0, -self.clip_sample_range, self.clip_sample_range)
            if self.use_clipped_model_output:
                eps = (sample - sa * x0) / sb
        return x0, eps

    def step(self, state, model_output, step_index, sample, key=None, variance_noise=None):
        """DDIM step from ``timesteps[step_index]``. With ``eta > 0`` the added noise is ``variance_noise`` if
        given, else ``jax.random.normal(key, sample.shape, float32)``. Returns ``(prev_sample, state)``."""
        sample, model_output, out_dtype = in_compute_dtype(sample, model_output)
        dtype = sample.dtype
        x0, eps = self.predict_x0_and_eps(model_output, step_index, sample)
        prev = lookup(self.sqrt_alpha_prev, step_index) * x0 + lookup(self.direction, step_index) * eps
        if self.eta > 0:
            if variance_noise is None:
                if key is None:
                    raise ValueError("DDIM with eta > 0 needs a PRNG key (or variance_noise)")
                variance_noise = jax.random.normal(key, sample.shape, dtype)
            prev = prev + lookup(self.noise_std, step_index) * variance_noise.astype(dtype)
        return prev.astype(out_dtype), state
