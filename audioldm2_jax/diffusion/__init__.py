"""Noise schedules, samplers (DDIM, DPM-Solver++, PLMS) as pure steps over static plans, training losses."""

from audioldm2_jax.diffusion.base import Sampler
from audioldm2_jax.diffusion.ddim import DDIMSampler
from audioldm2_jax.diffusion.dpm_solver import DPMSolverMultistepSampler
from audioldm2_jax.diffusion.losses import (diffusion_loss, draw_timesteps_and_noise, fixed_draw_errors,
                                            stratified_timesteps)
from audioldm2_jax.diffusion.pndm import PNDMSampler
from audioldm2_jax.diffusion.sampling import (SAMPLER_NAMES, SCHEDULER_CLASSES, default_sampler_name,
                                              make_sampler, sample_loop)
from audioldm2_jax.diffusion.schedule import (
    NoiseSchedule, add_noise, cumulative_alphas, float32_linspace, load_scheduler_config, make_betas,
    read_scheduler_config, scheduler_config_key, spaced_timesteps, training_target, velocity)

__all__ = [
    "DDIMSampler", "DPMSolverMultistepSampler", "NoiseSchedule", "PNDMSampler", "SAMPLER_NAMES", "SCHEDULER_CLASSES",
    "Sampler", "default_sampler_name",
    "add_noise", "cumulative_alphas", "diffusion_loss", "draw_timesteps_and_noise", "fixed_draw_errors",
    "float32_linspace",
    "load_scheduler_config", "make_betas", "make_sampler", "read_scheduler_config", "sample_loop",
    "scheduler_config_key", "spaced_timesteps", "stratified_timesteps", "training_target", "velocity",
]
