"""Picking a sampler by name and running the whole denoising loop inside one ``lax.fori_loop``."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from audioldm2_jax.diffusion.base import Sampler
from audioldm2_jax.diffusion.ddim import DDIMSampler
from audioldm2_jax.diffusion.dpm_solver import DPMSolverMultistepSampler
from audioldm2_jax.diffusion.pndm import PNDMSampler

SAMPLER_NAMES = ("ddim", "dpmsolver++", "pndm")
# The diffusers scheduler class each sampler reproduces.
SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "dpmsolver++": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler"}


def default_sampler_name(scheduler_class: str | None) -> str:
    """The sampler that runs a checkpoint's own scheduler class (what diffusers' pipeline runs when the user does
    not swap schedulers): ``"DPMSolverMultistepScheduler"`` -> ``"dpmsolver++"``; None (a config that names no
    class) -> ``"ddim"``, the published checkpoints' scheduler. A class this port does not implement is a
    ValueError that names it and the samplers that can run instead."""
    if scheduler_class is None:
        return "ddim"
    for name, cls in SCHEDULER_CLASSES.items():
        if cls == scheduler_class:
            return name
    raise ValueError(f"the checkpoint's scheduler is {scheduler_class}, which this port does not implement; pass "
                     f"scheduler= one of {', '.join(SAMPLER_NAMES)} (each reads the same scheduler config with "
                     "diffusers' from_config rules)")


def make_sampler(name: str, schedule_config: Mapping[str, Any], num_inference_steps: int,
                 eta: float = 0.0) -> Sampler:
    """The sampler ``name`` for a diffusers scheduler config dict and a step count: what diffusers runs after
    ``pipe.scheduler = XScheduler.from_config(pipe.scheduler.config)`` and ``set_timesteps(num_inference_steps)``.

    - "ddim": ``DDIMScheduler.from_config(cfg)``, stepping with ``eta`` (> 0 adds noise drawn from the step key);
    - "dpmsolver++": ``DPMSolverMultistepScheduler.from_config(cfg)`` (2nd-order multistep by default);
    - "pndm": ``PNDMScheduler.from_config(cfg)``: a Runge-Kutta warm-up then PLMS (``num_inference_steps + 9``
      model evaluations, at least 4 steps) unless the config sets ``skip_prk_steps`` (PLMS alone,
      ``num_inference_steps + 1`` evaluations).

    ``schedule_config`` may be a saved ``scheduler_config.json`` (as loaded with ``json.load``) or a diffusers
    scheduler's in-memory ``config``; diffusers' rules for reading it into another class apply
    (:func:`~audioldm2_jax.diffusion.schedule.read_scheduler_config`): each sampler takes the keys of its own
    class that the config names, except those listed in ``_use_default_values``, and its own class's defaults
    for the rest; keys of other classes are ignored. Whichever class wrote the config, the result is the same as
    switching a diffusers pipeline loaded from it.
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
