"""Noise schedules and samplers against diffusers' DDIMScheduler, DPMSolverMultistepScheduler and PNDMScheduler.

Both sides are driven by the same synthetic denoiser, a fixed linear function of the sample at each timestep
(an imperfect oracle for a fixed clean sample ``u``, plus a constant offset), evaluated in float32 NumPy for
the reference. Per-step checks are teacher-forced: our float32 step gets the reference's current sample and model
output (float32), so each step's error is measured on its own, and the reference runs in float64 from the same
float32 tables, so the error is ours and not the sum of two float32 roundings (float32 torch alone can sit ~7e-7
from exact on an ill-conditioned second-order step). The jitted loop checks run both trajectories independently
against diffusers as users run it, in float32.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from audioldm2_jax.diffusion import (
    DDIMSampler, NoiseSchedule, SAMPLER_NAMES, make_sampler, sample_loop)

PUBLISHED = json.loads((Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/scheduler.json").read_text())
SHAPE = (2, 8, 12, 4)  # [B, C, T, F] latents, small
REL = 1e-6


REFERENCE_CLASSES = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}
PLMS = {"skip_prk_steps": True}  # PNDM without its Runge-Kutta warm-up


def reference_scheduler(name, config):
    """The diffusers scheduler AudioLDM 2 users switch to: DDIM from the config (the checkpoint's class), then
    ``XScheduler.from_config(ddim.config)``."""
    ddim = DDIMScheduler.from_config(config)
    return ddim if name == "ddim" else REFERENCE_CLASSES[name].from_config(ddim.config)


def denoiser_tables(alphas_cumprod, prediction_type):
    """Per-timestep float32 (p, q) of the synthetic model output ``p[t] x + q[t] u + 0.1 w``: 0.9 x the exact
    epsilon / v / x0 for the clean sample ``u`` in x's coefficient, so trajectories approach ``u``."""
    a = np.asarray(alphas_cumprod, np.float64)
    if prediction_type == "epsilon":
        p, q = 1 / np.sqrt(1 - a), -np.sqrt(a) / np.sqrt(1 - a)
    elif prediction_type == "v_prediction":
        p, q = np.sqrt(a) / np.sqrt(1 - a), -1 / np.sqrt(1 - a)
    else:
        p, q = np.zeros_like(a), np.ones_like(a)
    return (0.9 * p).astype(np.float32), q.astype(np.float32)


def fixed_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]  # x_T, u, w


def model_output_np(p, q, u, w, x, t):
    return p[t] * x + q[t] * u + np.float32(0.1) * w


NOISE_KEY = jax.random.key(7)


@functools.cache
def step_noises():
    """The noise DDIM adds at loop steps 0..199 for ``NOISE_KEY``: sample_loop's documented per-step key
    ``fold_in(key, i)``, then a float32 normal draw. ``[200, ...]``. (Eager calls share one compiled draw.)"""
    return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(NOISE_KEY, i), SHAPE, jnp.float32))
                     for i in range(200)])


def to_float64(ref):
    """Switch a diffusers scheduler's tables to float64, so that it computes each step far more precisely than
    float32 from the same (float32) tables: comparing against it measures our rounding alone."""
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.as_tensor(ref.final_alpha_cumprod).double()
    if isinstance(ref, DPMSolverMultistepScheduler):
        ref.sigmas = ref.sigmas.double()


def run_reference(ref, steps, x_T, p, q, u, w, eta=0.0, float64=False):
    """diffusers' loop: (inputs [S, ...], model outputs [S, ...], outputs [S, ...]).

    With ``float64`` the scheduler runs in float64, but every step starts from the float32 rounding of the
    previous output and gets a float32 model output, exactly the inputs our float32 step sees.
    """
    ref.set_timesteps(steps)
    if float64:
        to_float64(ref)
    dtype = torch.float64 if float64 else torch.float32
    noises = step_noises() if eta > 0 else None
    x = x_T
    inputs, outputs, model_outputs = [], [], []
    for i, t in enumerate(ref.timesteps.tolist()):
        mo = model_output_np(p, q, u, w, x, t)
        kwargs = {}
        if isinstance(ref, DDIMScheduler):
            kwargs["eta"] = eta
            if eta > 0:
                kwargs["variance_noise"] = torch.from_numpy(noises[i]).to(dtype)
        inputs.append(x)
        model_outputs.append(mo)
        out = ref.step(torch.from_numpy(mo).to(dtype), t, torch.from_numpy(x).to(dtype), **kwargs).prev_sample
        outputs.append(out.numpy())
        x = outputs[-1].astype(np.float32)
    return np.stack(inputs), np.stack(model_outputs), np.stack(outputs)


def teacher_forced_steps(sampler, inputs, model_outputs, noises=None):
    """Our steps on the reference's (sample, model output[, noise]) triples, under jit + lax.scan: [S, ...]."""

    def body(state, xs):
        i, x, mo, noise = xs
        extra = {} if noise is None else {"variance_noise": noise}  # DDIM with eta > 0 only
        prev, state = sampler.step(state, mo, i, x, **extra)
        return state, prev

    @jax.jit
    def run(inputs, model_outputs, noises):
        steps = jnp.arange(sampler.num_steps)
        return jax.lax.scan(body, sampler.init_state(inputs[0]), (steps, inputs, model_outputs, noises))[1]

    return np.asarray(run(inputs, model_outputs, None if noises is None else noises[:sampler.num_steps]))


def check_timesteps(name, config, ref, step_counts):
    """Our sampler's timesteps (int32) equal those of ``ref`` (the diffusers scheduler built from ``config``) for each
    step count; where the Runge-Kutta warm-up needs 4 steps, both refuse fewer."""
    for steps in step_counts:
        if name == "pndm" and not ref.config.skip_prk_steps and steps < 4:
            with pytest.raises(ValueError):
                ref.set_timesteps(steps)
            with pytest.raises(ValueError, match="skip_prk_steps"):
                make_sampler(name, config, steps)
            continue
        ref.set_timesteps(steps)
        sampler = make_sampler(name, config, steps)
        np.testing.assert_array_equal(sampler.timesteps, ref.timesteps.numpy(), err_msg=f"{name} {steps} steps")
        assert sampler.timesteps.dtype == np.int32


def check_steps(name, config, steps, eta=0.0):
    ref = reference_scheduler(name, config)
    p, q = denoiser_tables(ref.alphas_cumprod.numpy(), config.get("prediction_type", "epsilon"))
    x_T, u, w = fixed_arrays()
    inputs, model_outputs, outputs = run_reference(ref, steps, x_T, p, q, u, w, eta, float64=True)

    sampler = make_sampler(name, config, steps, eta=eta)
    np.testing.assert_array_equal(sampler.timesteps, ref.timesteps.numpy())
    ours = teacher_forced_steps(sampler, inputs, model_outputs, step_noises() if eta > 0 else None)
    errors = [assert_close(ours[i], outputs[i], rel=REL, what=f"{name} step {i} (t={t})")
              for i, t in enumerate(sampler.timesteps)]
    return max(errors)


# ----------------------------------------------------------------------------------------------------------------
# Schedules and timesteps
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    PUBLISHED,
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 777},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
])
def test_schedule_tables_equal_diffusers_bit_for_bit(config):
    ref = DDIMScheduler.from_config(config)
    schedule = NoiseSchedule.from_diffusers(config)
    np.testing.assert_array_equal(np.asarray(schedule.betas), ref.betas.numpy())
    np.testing.assert_array_equal(np.asarray(schedule.alphas_cumprod), ref.alphas_cumprod.numpy())
    assert schedule.num_train_timesteps == ref.config.num_train_timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name,extra", [("ddim", {}), ("dpmsolver++", {}), ("pndm", {}), ("pndm", PLMS)],
                         ids=["ddim", "dpmsolver++", "pndm", "pndm-plms"])
def test_timesteps_equal_diffusers(name, extra, spacing):
    config = dict(PUBLISHED, timestep_spacing=spacing, **extra)
    check_timesteps(name, config, reference_scheduler(name, config), (1, 2, 3, 4, 7, 9, 10, 20, 50, 200, 500))


def test_published_config_values():
    ddim = make_sampler("ddim", PUBLISHED, 10)
    assert ddim.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    # leading spacing over S + 1 parts, steps_offset 1 carried over from the DDIM config
    assert make_sampler("dpmsolver++", PUBLISHED, 10).timesteps.tolist() == [
        901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
    # PNDM: three Runge-Kutta steps of four evaluations (t, t - h/2 twice, t - h) over the top timesteps, then PLMS;
    # without the warm-up (skip_prk_steps), PLMS with t_1 evaluated twice.
    assert make_sampler("pndm", PUBLISHED, 4).timesteps.tolist() == [
        751, 626, 626, 501, 501, 376, 376, 251, 251, 126, 126, 1, 1]
    assert make_sampler("pndm", dict(PUBLISHED, **PLMS), 4).timesteps.tolist() == [751, 501, 501, 251, 1]
    for name in SAMPLER_NAMES:
        sampler = make_sampler(name, PUBLISHED, 10)
        # The full configs diffusers saves (every key of each scheduler class) give the same plan.
        saved = dict(reference_scheduler(name, PUBLISHED).config)
        np.testing.assert_array_equal(make_sampler(name, saved, 10).timesteps, sampler.timesteps)
        assert sampler.init_noise_sigma == 1.0
        x = jnp.ones(SHAPE)
        assert sampler.scale_model_input(x, 3) is x


# ----------------------------------------------------------------------------------------------------------------
# Every step against diffusers
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 20, 50, 200])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_match_diffusers(steps, eta):
    check_steps("ddim", PUBLISHED, steps, eta)


@pytest.mark.parametrize("steps", [10, 20, 50])
@pytest.mark.parametrize("name,extra", [("dpmsolver++", {}), ("pndm", {}), ("pndm", PLMS)],
                         ids=["dpmsolver++", "pndm", "pndm-plms"])
def test_multistep_steps_match_diffusers(name, extra, steps):
    check_steps(name, dict(PUBLISHED, **extra), steps)


@pytest.mark.parametrize("steps", [4, 5, 9])
def test_pndm_runge_kutta_warmup_matches_diffusers(steps):
    """The fewest steps the warm-up allows (4: nothing but the warm-up and one PLMS step), and an odd stride
    (9 steps: h = 111, so the half step is 55 and a Runge-Kutta step covers 110)."""
    check_steps("pndm", PUBLISHED, steps)


@pytest.mark.parametrize("name,eta,prediction_type", [
    ("ddim", 0.0, "v_prediction"), ("ddim", 1.0, "v_prediction"), ("dpmsolver++", 0.0, "v_prediction"),
    ("pndm", 0.0, "v_prediction"), ("pndm-plms", 0.0, "v_prediction"), ("ddim", 0.0, "sample"),
    ("dpmsolver++", 0.0, "sample"),
])
def test_prediction_types_match_diffusers(name, eta, prediction_type):
    extra = PLMS if name == "pndm-plms" else {}
    check_steps(name.removesuffix("-plms"), dict(PUBLISHED, prediction_type=prediction_type, **extra), 20, eta)


@pytest.mark.parametrize("name,overrides,steps", [
    # DDIM: trailing spacing, final alpha 1, clipping of the x0 estimate
    ("ddim", {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": True,
              "clip_sample_range": 2.0}, 25),
    ("ddim", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "steps_offset": 0}, 12),
    # DPM-Solver++: heun, final sigma = sigma_min (second order up to the end), first order only, cosine betas
    ("dpmsolver++", {"solver_type": "heun", "final_sigmas_type": "sigma_min", "timestep_spacing": "linspace"}, 20),
    ("dpmsolver++", {"final_sigmas_type": "sigma_min", "lower_order_final": False}, 8),
    ("dpmsolver++", {"solver_order": 1, "timestep_spacing": "trailing"}, 10),
    ("dpmsolver++", {"euler_at_final": True, "beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1,
                     "timestep_spacing": "linspace"}, 16),
    ("pndm", {"timestep_spacing": "trailing", "set_alpha_to_one": True}, 15),
    ("pndm", {"timestep_spacing": "linspace", "skip_prk_steps": True}, 15),
])
def test_scheduler_options_match_diffusers(name, overrides, steps):
    check_steps(name, dict(PUBLISHED, **overrides), steps)


# ----------------------------------------------------------------------------------------------------------------
# The whole loop under jit + fori_loop
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,steps,eta,extra", [
    ("ddim", 50, 1.0, {}), ("dpmsolver++", 25, 0.0, {}), ("pndm", 25, 0.0, {}), ("pndm", 25, 0.0, PLMS)],
    ids=["ddim", "dpmsolver++", "pndm", "pndm-plms"])
def test_jitted_loop_matches_diffusers_loop(name, steps, eta, extra):
    config = dict(PUBLISHED, **extra)
    ref = reference_scheduler(name, config)
    p, q = denoiser_tables(ref.alphas_cumprod.numpy(), "epsilon")
    x_T, u, w = fixed_arrays(1)
    _, _, ref_outputs = run_reference(ref, steps, x_T, p, q, u, w, eta)

    sampler = make_sampler(name, config, steps, eta=eta)
    p_j, q_j, u_j, w_j = map(jnp.asarray, (p, q, u, w))
    calls = []

    def denoise(x, t):
        calls.append(t)
        return p_j[t] * x + q_j[t] * u_j + 0.1 * w_j

    final = jax.jit(lambda x, k: sample_loop(sampler, denoise, x, k))(jnp.asarray(x_T), NOISE_KEY)
    assert len(calls) == 1, "the loop body must be traced once (fori_loop), not unrolled"
    assert_close(final, ref_outputs[-1], rel=REL, what=f"{name} final sample")
    # The trajectory moved: the final sample is far from the initial noise.
    assert np.abs(np.asarray(final) - x_T).max() > 1.0


def test_ddim_noise_comes_from_the_key():
    sampler = make_sampler("ddim", PUBLISHED, 10, eta=1.0)
    x, mo = jnp.ones(SHAPE), jnp.zeros(SHAPE)
    a, _ = sampler.step((), mo, 2, x, jax.random.fold_in(NOISE_KEY, 2))
    b, _ = sampler.step((), mo, 2, x, None, variance_noise=step_noises()[2])
    c, _ = sampler.step((), mo, 2, x, jax.random.fold_in(NOISE_KEY, 3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    with pytest.raises(ValueError, match="PRNG key"):
        sampler.step((), mo, 2, x, None)
    # eta = 0 is deterministic and needs no key
    d, _ = make_sampler("ddim", PUBLISHED, 10).step((), mo, 2, x)
    assert np.isfinite(np.asarray(d)).all()


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="ddim, dpmsolver\\+\\+, pndm"):
        make_sampler("euler", PUBLISHED, 10)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("pndm", PUBLISHED, 10, eta=0.5)


@pytest.mark.parametrize("overrides,key", [
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ({"thresholding": True}, "thresholding"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"steps_offset": -1}, "steps_offset"),
])
def test_bad_config_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        DDIMSampler.from_config(dict(PUBLISHED, **overrides), 10)


def test_unsupported_solver_options_name_the_key():
    for overrides, key in [({"solver_order": 3}, "solver_order"), ({"algorithm_type": "sde-dpmsolver++"},
                           "algorithm_type"), ({"use_karras_sigmas": True}, "use_karras_sigmas")]:
        with pytest.raises(ValueError, match=key):
            make_sampler("dpmsolver++", dict(PUBLISHED, **overrides), 10)
    with pytest.raises(ValueError, match="num_inference_steps=3 is too few.*skip_prk_steps"):
        make_sampler("pndm", PUBLISHED, 3)
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_sampler("ddim", PUBLISHED, 1001)
