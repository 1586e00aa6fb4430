"""Picking a sampler by name and running the whole denoising loop inside one ``lax.fori_loop``."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from audioldm2_jax.diffusion.base import Sampler
from audioldm2_jax.diffusion.ddim import DDIMSampler
from audioldm2_jax.diffusion.dpm_solver import DPMSolverMultistepSampler
from audioldm2_jax.diffusion.pndm import PNDMSampler

SAMPLER_NAMES = ("ddim", "dpmsolver++", "pndm")


def make_sampler(name: str, schedule_config: Mapping[str, Any], num_inference_steps: int,
                 eta: float = 0.0) -> Sampler:
    """The sampler ``name`` for a diffusers scheduler config dict (e.g. the checkpoint's ``scheduler_config.json``)
    and a step count.

    - "ddim": ``DDIMScheduler.from_config(cfg)``, stepping with ``eta`` (> 0 adds noise drawn from the step key);
    - "dpmsolver++": ``DPMSolverMultistepScheduler.from_config(cfg)`` (2nd-order multistep by default);
    - "pndm": ``PNDMScheduler.from_config(cfg, skip_prk_steps=True)`` (PLMS; ``num_inference_steps + 1`` model
      evaluations).

    Config keys a scheduler does not know are ignored, as in diffusers, and each one falls back to its own defaults.
    """
    if name == "ddim":
        return DDIMSampler.from_config(schedule_config, num_inference_steps, eta=eta)
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLER_NAMES)}")
    if eta != 0.0:
        raise ValueError(f"eta={eta} applies to the ddim sampler only, not {name!r}")
    if name == "dpmsolver++":
        return DPMSolverMultistepSampler.from_config(schedule_config, num_inference_steps)
    return PNDMSampler.from_config(schedule_config, num_inference_steps)


def sample_loop(sampler: Sampler, denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], x_T: jax.Array,
                key: jax.Array | None = None) -> jax.Array:
    """Run every step of ``sampler`` from the initial latents ``x_T`` (already scaled by ``init_noise_sigma``).

    ``denoise_fn(x, t) -> model_output`` gets the model input ``[B, ...]`` and the int32 scalar timestep; it is
    where the caller puts the network and classifier-free guidance. Step ``i`` receives the key
    ``jax.random.fold_in(key, i)`` (``key`` may be None for deterministic samplers). Traceable: wrap it in
    ``jax.jit`` (the sampler is static: close over it). Returns the final sample, shaped like ``x_T``.
    """
    timesteps = jax.numpy.asarray(sampler.timesteps)

    def body(i, carry):
        x, state = carry
        model_output = denoise_fn(sampler.scale_model_input(x, i), timesteps[i])
        step_key = None if key is None else jax.random.fold_in(key, i)
        return sampler.step(state, model_output, i, x, step_key)

    x, _ = jax.lax.fori_loop(0, sampler.num_steps, body, (x_T, sampler.init_state(x_T)))
    return x
