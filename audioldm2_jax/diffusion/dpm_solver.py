"""DPM-Solver++ multistep (Lu et al., 2022), first or second order: diffusers' DPMSolverMultistepScheduler.

The solver works in the data-prediction parametrisation: every model output is first turned into a clean-sample
estimate ``x0_i``. With ``sigma`` the noise-to-signal ratio ``sqrt((1 - abar) / abar)`` at a timestep,
``alpha = 1 / sqrt(1 + sigma^2)``, ``s = sigma * alpha`` and ``lambda = log(alpha / s)``, one step from
``sigma_i`` to ``sigma_{i+1}`` (``h = lambda_{i+1} - lambda_i``) is

    first order:  x_{i+1} = (s_{i+1} / s_i) x_i - alpha_{i+1} (e^{-h} - 1) x0_i
    second order: ... - 1/2 alpha_{i+1} (e^{-h} - 1) D1,   D1 = (h / h_prev) (x0_i - x0_{i-1})   (midpoint)
                  ... + alpha_{i+1} ((e^{-h} - 1) / h + 1) D1                                  (heun)

The first step is first order (no history yet); so is the last when ``final_sigmas_type`` is "zero" (the final
sigma is 0, where the first-order update returns ``x0`` itself), and with ``lower_order_final`` when there are
fewer than 15 steps, or with ``euler_at_final``.

Switching the published DDIM checkpoint to this solver (``DPMSolverMultistepScheduler.from_config(ddim.config)``,
as AudioLDM 2 users do) carries over the keys the config names, ``timestep_spacing="leading"`` and
``steps_offset=1``, so the timesteps are ``k * (N // (S + 1)) + 1`` for ``k = S .. 1``. Keys the config lacks or
lists in ``_use_default_values`` take this solver's defaults ("linspace" spacing for a default-built DDIM).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from audioldm2_jax.diffusion.base import Sampler, as_table, compute_dtype, in_compute_dtype, lookup
from audioldm2_jax.diffusion.schedule import (
    NoiseSchedule, SCHEDULE_DEFAULTS, TIMESTEP_SPACINGS, _check_bool, _check_choice, _check_float, _check_int,
    read_scheduler_config, read_spacing)

# DPMSolverMultistepScheduler.__init__'s signature and defaults (diffusers 0.42), every key: what from_config
# reads. Options that only act with an unsupported mode (thresholding, flow sigmas, dynamic shifting) are read and
# unused; the modes themselves raise (schedule.UNSUPPORTED_FLAGS).
DPM_DEFAULTS = {
    **SCHEDULE_DEFAULTS,
    "solver_order": 2,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "algorithm_type": "dpmsolver++",
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "final_sigmas_type": "zero",
    "lambda_min_clipped": -float("inf"),
    "variance_type": None,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}

# Names DPMSolverMultistepScheduler's constructor rewrites (configs of DEIS / UniPC schedulers switched to it).
_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
_SOLVER_TYPE_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


def _alias(value, aliases: Mapping[str, str]):
    return aliases.get(value, value) if isinstance(value, str) else value


def dpm_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int,
                  last_timestep: int) -> np.ndarray:
    """Descending timesteps of DPMSolverMultistepScheduler.set_timesteps: int64 ``[S]``.

    Unlike DDIM, "leading" and "linspace" divide the range into ``S + 1`` parts and drop timestep 0.
    """
    n, s = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, s + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (s + 1)
        return (np.arange(s + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(last_timestep, 0, -n / s).round().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")


def _alpha_sigma_lambda(sigma: np.ndarray):
    """Signal scale, noise scale and log-SNR/2 for noise-to-signal ratios ``sigma`` (float64; sigma 0 -> inf)."""
    alpha = 1.0 / np.sqrt(sigma * sigma + 1.0)
    scale = sigma * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(scale)
    return alpha, scale, lam


@dataclasses.dataclass(frozen=True, eq=False)
class DPMSolverMultistepSampler(Sampler):
    """DPM-Solver++ (order 1-2) over a static plan.

    Tables (float32 ``[S]``): ``x0_alpha`` / ``x0_sigma`` convert the model output at step i to x0;
    ``coef_sample``, ``coef_x0``, ``coef_d1`` and ``d1_scale`` (= h / h_prev) make the update
    ``coef_sample * x - coef_x0 * x0_i - coef_d1 * (d1_scale * (x0_i - x0_{i-1}))``, with ``coef_d1 = 0`` on
    first-order steps. The state is the previous step's x0 estimate.
    """

    sigmas: np.ndarray = None
    orders: np.ndarray = None
    x0_alpha: np.ndarray = None
    x0_sigma: np.ndarray = None
    coef_sample: np.ndarray = None
    coef_x0: np.ndarray = None
    coef_d1: np.ndarray = None
    d1_scale: np.ndarray = None

    @classmethod
    def from_config(cls, d: Mapping[str, Any], num_inference_steps: int) -> "DPMSolverMultistepSampler":
        """As ``DPMSolverMultistepScheduler.from_config(d)`` + ``set_timesteps(num_inference_steps)``.

        ``d`` is read with diffusers' rules (:func:`~audioldm2_jax.diffusion.schedule.read_scheduler_config`):
        this solver's own defaults for what it lacks or lists in ``_use_default_values``, whichever class wrote
        it."""
        owner = "DPMSolverMultistepSampler"
        c = read_scheduler_config(d, DPM_DEFAULTS, owner)
        schedule = NoiseSchedule.from_diffusers(c)
        n = schedule.num_train_timesteps
        algorithm = _alias(c["algorithm_type"], _ALGORITHM_ALIASES)
        _check_choice(algorithm, ("dpmsolver++",), "algorithm_type", owner)
        solver_type = _check_choice(_alias(c["solver_type"], _SOLVER_TYPE_ALIASES), ("midpoint", "heun"),
                                    "solver_type", owner)
        order = _check_int(c["solver_order"], "solver_order", owner, 1)
        if order > 2:
            raise ValueError(f"{owner}: solver_order={order} is not supported (1 or 2)")
        final_type = _check_choice(c["final_sigmas_type"], ("zero", "sigma_min"), "final_sigmas_type", owner)
        if c["algorithm_type"] == "deis" and final_type == "zero":  # diffusers checks the name it was given
            raise ValueError(f"{owner}: final_sigmas_type='zero' is not supported with algorithm_type='deis' "
                             "(diffusers requires 'sigma_min' there)")
        lower_order_final = _check_bool(c["lower_order_final"], "lower_order_final", owner)
        euler_at_final = _check_bool(c["euler_at_final"], "euler_at_final", owner)
        spacing, offset, steps = read_spacing(c, num_inference_steps, owner)
        lambda_min = _check_float(c["lambda_min_clipped"], "lambda_min_clipped", owner)
        if steps >= n:
            raise ValueError(f"{owner}: num_inference_steps={steps} must be below num_train_timesteps={n}")

        abar = schedule.host_alphas_cumprod().astype(np.float64)
        # diffusers keeps the noise-to-signal ratios as a float32 table.
        train_sigmas = np.sqrt((1 - abar) / abar).astype(np.float32).astype(np.float64)
        # Timesteps whose log-SNR/2 lies below lambda_min_clipped are never visited (cosine schedules).
        with np.errstate(divide="ignore"):
            lam = np.log(np.sqrt(abar)) - np.log(np.sqrt(1 - abar))
        last_timestep = n - int(np.searchsorted(lam[::-1], lambda_min))
        timesteps = dpm_timesteps(spacing, n, steps, offset, last_timestep)
        if timesteps.min() < 0 or timesteps.max() >= n:
            raise ValueError(f"{owner}: timesteps {timesteps.min()}..{timesteps.max()} fall outside [0, {n}) "
                             f"(steps_offset={offset})")
        final_sigma = train_sigmas[0] if final_type == "sigma_min" else 0.0
        sigmas = np.concatenate([train_sigmas[timesteps], [final_sigma]])
        sigmas = sigmas.astype(np.float32).astype(np.float64)

        alpha, scale, lam = _alpha_sigma_lambda(sigmas)
        count = len(timesteps)
        orders = np.ones(count, np.int32)
        lower_order_nums = 0
        for i in range(count):
            final_first_order = i == count - 1 and (
                euler_at_final or (lower_order_final and count < 15) or final_type == "zero")
            if order == 2 and lower_order_nums >= 1 and not final_first_order:
                orders[i] = 2
            lower_order_nums = min(lower_order_nums + 1, order)

        with np.errstate(divide="ignore", invalid="ignore"):
            h = lam[1:] - lam[:-1]                       # [S], +inf on a step to sigma 0
            coef_x0 = alpha[1:] * (np.exp(-h) - 1.0)
            h_prev = np.concatenate([[np.nan], h[:-1]])  # lambda_i - lambda_{i-1}
            d1_scale = np.where(orders == 2, h / h_prev, 0.0)
            if solver_type == "midpoint":
                coef_d1 = 0.5 * coef_x0
            else:
                coef_d1 = -(alpha[1:] * ((np.exp(-h) - 1.0) / h + 1.0))
        coef_d1 = np.where(orders == 2, coef_d1, 0.0)
        return cls(
            name="dpmsolver++", timesteps=timesteps.astype(np.int32), prediction_type=schedule.prediction_type,
            sigmas=sigmas.astype(np.float32), orders=orders, x0_alpha=as_table(alpha[:-1]),
            x0_sigma=as_table(scale[:-1]), coef_sample=as_table(scale[1:] / scale[:-1]), coef_x0=as_table(coef_x0),
            coef_d1=as_table(coef_d1), d1_scale=as_table(d1_scale))

    def init_state(self, sample):
        """The previous x0 estimate (zeros before the first step, when it is not used): ``[B, ...]``."""
        return jnp.zeros(jnp.shape(sample), compute_dtype(sample))

    def predict_x0(self, model_output, step_index, sample):
        """Clean-sample estimate from the model output at step ``step_index``: ``[B, ...]``."""
        if self.prediction_type == "sample":
            return model_output
        a, s = lookup(self.x0_alpha, step_index), lookup(self.x0_sigma, step_index)
        if self.prediction_type == "epsilon":
            return (sample - s * model_output) / a
        return a * sample - s * model_output  # v_prediction

    def step(self, state, model_output, step_index, sample, key=None):
        """One multistep update from ``timesteps[step_index]``; ``key`` is unused. ``(prev_sample, x0)``."""
        del key
        sample, model_output, out_dtype = in_compute_dtype(sample, model_output)
        x0 = self.predict_x0(model_output, step_index, sample)
        d1 = lookup(self.d1_scale, step_index) * (x0 - state)
        prev = (lookup(self.coef_sample, step_index) * sample - lookup(self.coef_x0, step_index) * x0
                - lookup(self.coef_d1, step_index) * d1)
        return prev.astype(out_dtype), x0
