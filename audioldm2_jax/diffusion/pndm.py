"""PLMS, the linear multistep half of PNDM (Liu et al., 2022): diffusers' PNDMScheduler with skip_prk_steps.

Each step moves the sample from ``t`` to ``t' = t - N // S`` with the transfer of the PNDM paper (eq. 9),

    x_t' = sqrt(abar_t' / abar_t) x_t
           - (abar_t' - abar_t) e / (abar_t sqrt(1 - abar_t') + sqrt(abar_t (1 - abar_t) abar_t')),

where ``e`` is an Adams-Bashforth combination of the recent noise predictions. Without Runge-Kutta warm-up,
diffusers starts the history with a Heun-like pair of evaluations, so the model runs ``S + 1`` times:

    i = 0: e = e_0 at t_0 (the first sample is kept)
    i = 1: the model is evaluated again at t_1 (a duplicated timestep) on the sample produced by step 0;
           e = (e_0 + e_1) / 2 and the step restarts from the kept sample, t_0 -> t_1.
    i = 2: e = (3 e_2 - e_0) / 2                                     (e_1 never enters the history)
    i = 3: e = (23 e_3 - 16 e_2 + 5 e_0) / 12
    i > 3: e = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.diffusion.base import Sampler, as_table, compute_dtype, lookup
from audioldm2_jax.diffusion.schedule import (
    NoiseSchedule, SCHEDULE_DEFAULTS, TIMESTEP_SPACINGS, _check_bool, _check_choice, _check_int,
    read_scheduler_config, spaced_timesteps)

# diffusers' PNDMScheduler defaults; skip_prk_steps is the only mode implemented, so it is the default here.
PNDM_DEFAULTS = {
    **SCHEDULE_DEFAULTS,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "timestep_spacing": "leading",
}

# Which history combination step i uses (index into PNDMSampler._updates).
_FIRST, _HEUN, _AB2, _AB3, _AB4 = range(5)


@dataclasses.dataclass(frozen=True, eq=False)
class PNDMSampler(Sampler):
    """PLMS over a static plan. ``modes`` (int32 ``[S + 1]``) picks the combination of step i; the tables hold
    ``sqrt(abar_t' / abar_t)`` (``coef_sample``), ``abar_t' - abar_t`` (``coef_eps``), the denominator
    (``denominator``) and, for v-prediction, ``sqrt(abar_t)`` / ``sqrt(1 - abar_t)``. The state is
    ``(history [4, B, ...] newest last, kept first sample [B, ...])``."""

    modes: np.ndarray = None
    coef_sample: np.ndarray = None
    coef_eps: np.ndarray = None
    denominator: np.ndarray = None
    sqrt_alpha: np.ndarray = None
    sqrt_one_minus_alpha: np.ndarray = None

    @classmethod
    def from_config(cls, d: Mapping[str, Any], num_inference_steps: int) -> "PNDMSampler":
        """As ``PNDMScheduler.from_config(d, skip_prk_steps=True)`` + ``set_timesteps(num_inference_steps)``."""
        owner = "PNDMSampler"
        c = read_scheduler_config(d, PNDM_DEFAULTS, owner)
        if not _check_bool(c["skip_prk_steps"], "skip_prk_steps", owner):
            raise ValueError(f"{owner}: skip_prk_steps=false (Runge-Kutta warm-up) is not supported")
        schedule = NoiseSchedule.from_diffusers(c)
        if schedule.prediction_type == "sample":
            raise ValueError(f"{owner}: prediction_type='sample' is not supported by PNDM")
        n = schedule.num_train_timesteps
        spacing = _check_choice(c["timestep_spacing"], TIMESTEP_SPACINGS, "timestep_spacing", owner)
        offset = _check_int(c["steps_offset"], "steps_offset", owner, 0)
        steps = _check_int(num_inference_steps, "num_inference_steps", owner, 1)

        ascending = spaced_timesteps(spacing, n, steps, offset)[::-1]
        if ascending.max() >= n:
            raise ValueError(f"{owner}: steps_offset={offset} pushes timestep {ascending.max()} past "
                             f"num_train_timesteps={n}")
        # The second-to-last ascending timestep (the first one after t_0 in sampling order) appears twice.
        timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        stride = n // steps
        current = timesteps.copy()
        previous = timesteps - stride
        if len(timesteps) > 1:  # step 1 re-does t_0 -> t_1 with the averaged prediction
            current[1], previous[1] = timesteps[1] + stride, timesteps[1]
        modes = np.minimum(np.arange(len(timesteps)), _AB4).astype(np.int32)

        abar = schedule.host_alphas_cumprod().astype(np.float64)
        final = 1.0 if _check_bool(c["set_alpha_to_one"], "set_alpha_to_one", owner) else abar[0]
        a_t = abar[current]
        a_prev = np.where(previous >= 0, abar[np.maximum(previous, 0)], final)
        denominator = a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)
        return cls(
            name="pndm", timesteps=timesteps.astype(np.int32), prediction_type=schedule.prediction_type,
            modes=modes, coef_sample=as_table(np.sqrt(a_prev / a_t)), coef_eps=as_table(a_prev - a_t),
            denominator=as_table(denominator), sqrt_alpha=as_table(np.sqrt(a_t)),
            sqrt_one_minus_alpha=as_table(np.sqrt(1 - a_t)))

    def init_state(self, sample):
        dtype = compute_dtype(sample)
        shape = jnp.shape(sample)
        return jnp.zeros((4,) + shape, dtype), jnp.zeros(shape, dtype)

    def step(self, state, model_output, step_index, sample, key=None):
        """One PLMS step (``key`` unused): ``(prev_sample, (history, kept_sample))``."""
        del key
        out_dtype = jnp.result_type(sample)
        dtype = compute_dtype(sample)
        sample, model_output = sample.astype(dtype), model_output.astype(dtype)
        history, kept = state

        def push(e):
            return jnp.concatenate([history[1:], e[None]], axis=0)

        # Each branch: (combined prediction, sample the transfer starts from, new state). Arithmetic in the
        # reference's order: these are float32 ops on the noise predictions.
        def first(_):
            return model_output, sample, (push(model_output), sample)

        def heun(_):
            return (model_output + history[3]) / 2, kept, (history, kept)

        def ab2(_):
            h = push(model_output)
            return (3 * h[3] - h[2]) / 2, sample, (h, kept)

        def ab3(_):
            h = push(model_output)
            return (23 * h[3] - 16 * h[2] + 5 * h[1]) / 12, sample, (h, kept)

        def ab4(_):
            h = push(model_output)
            return (1 / 24) * (55 * h[3] - 59 * h[2] + 37 * h[1] - 9 * h[0]), sample, (h, kept)

        eps, start, new_state = jax.lax.switch(jnp.asarray(self.modes)[step_index],
                                               [first, heun, ab2, ab3, ab4], None)
        if self.prediction_type == "v_prediction":
            eps = (lookup(self.sqrt_alpha, step_index) * eps
                   + lookup(self.sqrt_one_minus_alpha, step_index) * start)
        prev = (lookup(self.coef_sample, step_index) * start
                - lookup(self.coef_eps, step_index) * eps / lookup(self.denominator, step_index))
        return prev.astype(out_dtype), new_state
