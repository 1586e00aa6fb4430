"""PNDM (Liu et al., 2022): diffusers' PNDMScheduler, with its Runge-Kutta warm-up (the default) or without it
(``skip_prk_steps``: PLMS alone).

Each step moves the sample from ``t`` to ``t'`` with the transfer of the PNDM paper (eq. 9),

    x_t' = sqrt(abar_t' / abar_t) x_t
           - (abar_t' - abar_t) e / (abar_t sqrt(1 - abar_t') + sqrt(abar_t (1 - abar_t) abar_t')),

where ``e`` combines the noise predictions. With ``h = N // S``:

PLMS (``skip_prk_steps``). Without a warm-up, diffusers starts the history with a Heun-like pair of
evaluations, so the model runs ``S + 1`` times (``t' = t - h``):

    i = 0: e = e_0 at t_0 (the first sample is kept)
    i = 1: the model is evaluated again at t_1 (a duplicated timestep) on the sample produced by step 0;
           e = (e_0 + e_1) / 2 and the step restarts from the kept sample, t_0 -> t_1.
    i = 2: e = (3 e_2 - e_0) / 2                                     (e_1 never enters the history)
    i = 3: e = (23 e_3 - 16 e_2 + 5 e_0) / 12
    i > 3: e = (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24

PRK warm-up (the class default): the three highest timesteps are crossed by three classical fourth-order
Runge-Kutta steps of four evaluations each (at t, t - h/2, t - h/2 and t - h, every transfer starting from the
sample at t, the last with e = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6), whose first evaluations fill the history; then
every remaining step is the four-step formula above. The model runs ``12 + S - 3`` times; ``S >= 4``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.diffusion.base import Sampler, as_table, compute_dtype, in_compute_dtype, lookup
from audioldm2_jax.diffusion.schedule import (
    NoiseSchedule, SCHEDULE_DEFAULTS, _check_bool, offset_timesteps, read_scheduler_config, read_spacing,
    transfer_alphas)

# PNDMScheduler.__init__'s signature and defaults (diffusers 0.42), every key: what from_config reads. Note
# skip_prk_steps: off by default, so a config that omits it (the published DDIM one) runs the Runge-Kutta warm-up.
PNDM_DEFAULTS = {
    **SCHEDULE_DEFAULTS,
    "skip_prk_steps": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
    "steps_offset": 0,
}

# Which combination step i uses (index into the branches of PNDMSampler.step): the PLMS start, its Heun-like
# restart, Adams-Bashforth of order 2-4, and the four stages of a Runge-Kutta step.
_FIRST, _HEUN, _AB2, _AB3, _AB4, _RK1, _RK2, _RK3, _RK4 = range(9)
RUNGE_KUTTA_MODES = (_RK1, _RK2, _RK3, _RK4)
# diffusers' Runge-Kutta order (the history length the warm-up leaves: PNDMScheduler.pndm_order).
_PNDM_ORDER = 4


@dataclasses.dataclass(frozen=True, eq=False)
class PNDMSampler(Sampler):
    """PNDM over a static plan. ``modes`` (int32 ``[num_steps]``) picks the combination of step i; the tables hold
    ``sqrt(abar_t' / abar_t)`` (``coef_sample``), ``abar_t' - abar_t`` (``coef_eps``), the denominator
    (``denominator``) and, for v-prediction, ``sqrt(abar_t)`` / ``sqrt(1 - abar_t)``, with ``t`` the timestep the
    transfer starts from and ``t'`` the one it reaches. The state is ``(history [4, B, ...] newest last, kept
    sample [B, ...], Runge-Kutta sum [B, ...])``."""

    modes: np.ndarray = None
    coef_sample: np.ndarray = None
    coef_eps: np.ndarray = None
    denominator: np.ndarray = None
    sqrt_alpha: np.ndarray = None
    sqrt_one_minus_alpha: np.ndarray = None
    skip_prk_steps: bool = True

    @classmethod
    def from_config(cls, d: Mapping[str, Any], num_inference_steps: int) -> "PNDMSampler":
        """As ``PNDMScheduler.from_config(d)`` + ``set_timesteps(num_inference_steps)``.

        ``d`` is read with diffusers' rules (:func:`~audioldm2_jax.diffusion.schedule.read_scheduler_config`):
        PNDM's own defaults for what it lacks or lists in ``_use_default_values``, so without ``skip_prk_steps``
        the plan starts with the Runge-Kutta warm-up (which needs ``num_inference_steps >= 4``)."""
        c, schedule, plan = cls.plan(d, num_inference_steps)
        return cls.from_plan(c, schedule, *plan)

    @staticmethod
    def plan(d: Mapping[str, Any], num_inference_steps: int):
        """``(config, noise schedule, (timesteps, transfer start, transfer end, modes))`` of ``d`` at
        ``num_inference_steps``: the config read with diffusers' rules and the int ``[steps]`` arrays of the plan
        (PLMS alone: ``S + 1`` evaluations; with the warm-up ``12 + S - 3``)."""
        owner = "PNDMSampler"
        c = read_scheduler_config(d, PNDM_DEFAULTS, owner)
        skip_prk = _check_bool(c["skip_prk_steps"], "skip_prk_steps", owner)
        schedule = NoiseSchedule.from_diffusers(c)
        if schedule.prediction_type == "sample":
            raise ValueError(f"{owner}: prediction_type='sample' is not supported by PNDM")
        n = schedule.num_train_timesteps
        spacing, offset, steps = read_spacing(c, num_inference_steps, owner)

        ascending = offset_timesteps(spacing, n, steps, offset, owner)[::-1]
        stride = n // steps
        if skip_prk:
            return c, schedule, _plms_plan(ascending, stride)
        if steps < _PNDM_ORDER:
            raise ValueError(f"{owner}: num_inference_steps={steps} is too few for the Runge-Kutta warm-up "
                             f"(at least {_PNDM_ORDER}; or set skip_prk_steps=true in the scheduler config)")
        return c, schedule, _prk_plan(ascending, stride)

    @classmethod
    def from_plan(cls, c: Mapping[str, Any], schedule: NoiseSchedule, timesteps: np.ndarray, current: np.ndarray,
                  previous: np.ndarray, modes: np.ndarray) -> "PNDMSampler":
        """The sampler of a plan (:meth:`plan`'s arrays, or a part of them): the transfer tables from
        ``current -> previous`` at every step, the model evaluated at ``timesteps``."""
        owner = "PNDMSampler"
        abar = schedule.host_alphas_cumprod().astype(np.float64)
        a_t, a_prev = transfer_alphas(abar, current, previous,
                                      _check_bool(c["set_alpha_to_one"], "set_alpha_to_one", owner))
        denominator = a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)
        return cls(
            name="pndm", timesteps=np.asarray(timesteps).astype(np.int32), prediction_type=schedule.prediction_type,
            modes=np.asarray(modes).astype(np.int32), coef_sample=as_table(np.sqrt(a_prev / a_t)),
            coef_eps=as_table(a_prev - a_t), denominator=as_table(denominator), sqrt_alpha=as_table(np.sqrt(a_t)),
            sqrt_one_minus_alpha=as_table(np.sqrt(1 - a_t)),
            skip_prk_steps=_check_bool(c["skip_prk_steps"], "skip_prk_steps", owner))

    def init_state(self, sample):
        dtype = compute_dtype(sample)
        shape = jnp.shape(sample)
        return jnp.zeros((4,) + shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def step(self, state, model_output, step_index, sample, key=None):
        """One PNDM step (``key`` unused): ``(prev_sample, (history, kept_sample, rk_sum))``."""
        del key
        sample, model_output, out_dtype = in_compute_dtype(sample, model_output)
        history, kept, rk_sum = state

        def push(e):
            return jnp.concatenate([history[1:], e[None]], axis=0)

        # Each branch: (combined prediction, sample the transfer starts from, new state). Arithmetic in the
        # reference's order: these are float32 ops on the noise predictions.
        def first(_):
            return model_output, sample, (push(model_output), sample, rk_sum)

        def heun(_):
            return (model_output + history[3]) / 2, kept, (history, kept, rk_sum)

        def ab2(_):
            h = push(model_output)
            return (3 * h[3] - h[2]) / 2, sample, (h, kept, rk_sum)

        def ab3(_):
            h = push(model_output)
            return (23 * h[3] - 16 * h[2] + 5 * h[1]) / 12, sample, (h, kept, rk_sum)

        def ab4(_):
            h = push(model_output)
            return (1 / 24) * (55 * h[3] - 59 * h[2] + 37 * h[1] - 9 * h[0]), sample, (h, kept, rk_sum)

        # Runge-Kutta stages: every transfer starts from the sample kept at the first stage; the weighted sum of
        # the four predictions accumulates in rk_sum, and only the first enters the history.
        def rk1(_):
            return model_output, sample, (push(model_output), sample, (1 / 6) * model_output)

        def rk_middle(_):
            return model_output, kept, (history, kept, rk_sum + (1 / 3) * model_output)

        def rk4(_):
            return rk_sum + (1 / 6) * model_output, kept, (history, kept, jnp.zeros_like(rk_sum))

        eps, start, new_state = jax.lax.switch(jnp.asarray(self.modes)[step_index],
                                               [first, heun, ab2, ab3, ab4, rk1, rk_middle, rk_middle, rk4], None)
        if self.prediction_type == "v_prediction":
            eps = (lookup(self.sqrt_alpha, step_index) * eps
                   + lookup(self.sqrt_one_minus_alpha, step_index) * start)
        prev = (lookup(self.coef_sample, step_index) * start
                - lookup(self.coef_eps, step_index) * eps / lookup(self.denominator, step_index))
        return prev.astype(out_dtype), new_state


def _plms_plan(ascending: np.ndarray, stride: int):
    """PLMS without warm-up: (timesteps, transfer start, transfer end, modes), int ``[S + 1]`` each."""
    # The second-to-last ascending timestep (the first one after t_0 in sampling order) appears twice.
    timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
    current = timesteps.copy()
    previous = timesteps - stride
    if len(timesteps) > 1:  # step 1 re-does t_0 -> t_1 with the averaged prediction
        current[1], previous[1] = timesteps[1] + stride, timesteps[1]
    modes = np.minimum(np.arange(len(timesteps)), _AB4)
    return timesteps, current, previous, modes


def _prk_plan(ascending: np.ndarray, stride: int):
    """Runge-Kutta warm-up then PLMS: (timesteps, transfer start, transfer end, modes), int ``[12 + S - 3]`` each.

    diffusers' ``prk_timesteps``: each of the top four timesteps with its half-step point above it, the list
    without its highest point, every entry doubled, the ends trimmed, descending: ``t, t - h/2, t - h/2, t - h``
    for each of three steps. Stage ``k`` is evaluated at ``prk[k]`` and moves the sample kept at the step's first
    stage, from ``prk[4 (k // 4)]`` to ``prk[k]`` minus half a step on even stages. The PLMS part then walks
    every timestep but the three lowest ascending ones, from ``t`` to ``t - h`` with a full history."""
    half = stride // 2
    top = ascending[-_PNDM_ORDER:]
    prk = np.repeat(top, 2) + np.tile(np.array([0, half]), _PNDM_ORDER)
    prk = np.repeat(prk[:-1], 2)[1:-1][::-1]
    plms = ascending[:-3][::-1]
    stage = np.arange(len(prk))
    prk_current = prk[stage // 4 * 4]
    prk_previous = prk - np.where(stage % 2 == 1, 0, half)
    timesteps = np.concatenate([prk, plms])
    current = np.concatenate([prk_current, plms])
    previous = np.concatenate([prk_previous, plms - stride])
    modes = np.concatenate([_RK1 + stage % 4, np.full(len(plms), _AB4)])
    return timesteps, current, previous, modes
