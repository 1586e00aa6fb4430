"""Scheduler configs read with diffusers' rules: every sampler built from a config equals the scheduler diffusers
runs after ``XScheduler.from_config(config)``, whichever class wrote the config and however it was kept.

The configs come the ways diffusers produces them: a scheduler's in-memory ``config`` (which lists the keys that
came from constructor defaults in ``_use_default_values``), the ``scheduler_config.json`` that ``save_pretrained``
writes (every key, no ``_use_default_values``), that in-memory config dumped to JSON as it is, and the published
AudioLDM 2 file. For each, and each sampler, the reference is diffusers' ``XScheduler.from_config`` of what a
diffusers user holds: the in-memory config, or the config of the scheduler loaded back with ``from_pretrained``
(as ``DiffusionPipeline.from_pretrained`` loads it). Checked: the constructor arguments (every key of X's
signature), the timesteps, and every step teacher-forced against a float64 run of the reference (see
``test_samplers``), within 1e-6 of the step's scale. The last test runs a whole tiny pipeline saved with a
default-built DDIM through DPM-Solver++ on both sides.
"""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from test_samplers import check_timesteps, denoiser_tables, fixed_arrays, run_reference, teacher_forced_steps

from audioldm2_jax.diffusion import load_scheduler_config, make_sampler, read_scheduler_config
from audioldm2_jax.diffusion.ddim import DDIM_DEFAULTS
from audioldm2_jax.diffusion.dpm_solver import DPM_DEFAULTS
from audioldm2_jax.diffusion.pndm import PNDM_DEFAULTS

PUBLISHED = json.loads((Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/scheduler.json")
                       .read_text())
CLASSES = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}
DEFAULTS = {"ddim": DDIM_DEFAULTS, "dpmsolver++": DPM_DEFAULTS, "pndm": PNDM_DEFAULTS}
REL = 1e-6
STEPS = 10

# Schedulers built the ways users and upstream tests build them: all defaults, some keys, every published key.
BUILT = {
    "DDIM()": lambda: DDIMScheduler(),
    "DDIM(published)": lambda: DDIMScheduler(**{k: v for k, v in PUBLISHED.items() if not k.startswith("_")}),
    # the published schedule without clip_sample / timestep_spacing: DDIM's defaults (clipping, "leading")
    "DDIM(some keys)": lambda: DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                             steps_offset=1, set_alpha_to_one=False),
    "PNDM()": lambda: PNDMScheduler(),
    "PNDM(plms)": lambda: PNDMScheduler(skip_prk_steps=True, steps_offset=1, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012),
    "DPM()": lambda: DPMSolverMultistepScheduler(),
    "DPM(some keys)": lambda: DPMSolverMultistepScheduler(
        solver_order=1, timestep_spacing="trailing", prediction_type="v_prediction", beta_schedule="scaled_linear",
        beta_start=0.0015, beta_end=0.0195),
}
FORMS = ("in memory", "saved", "config as JSON")
SOURCES = [f"{built} {form}" for built in BUILT for form in FORMS] + ["published", "published without spacing"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """label -> (the dict our sampler gets, the config a diffusers user holds for it)."""
    root = tmp_path_factory.mktemp("scheduler-configs")
    out = {}
    for label, build in BUILT.items():
        scheduler = build()
        cls = type(scheduler)
        out[f"{label} in memory"] = (dict(scheduler.config), scheduler.config)
        folder = root / label
        scheduler.save_pretrained(folder)
        saved = load_scheduler_config(folder / "scheduler_config.json")
        assert "_use_default_values" not in saved  # save_pretrained drops it
        out[f"{label} saved"] = (saved, cls.from_pretrained(folder).config)
        # The in-memory config written out as it is (keeps _use_default_values), then loaded by diffusers.
        dumped = root / f"{label} dumped"
        dumped.mkdir()
        (dumped / "scheduler_config.json").write_text(json.dumps(dict(scheduler.config)))
        ours = load_scheduler_config(dumped / "scheduler_config.json")
        assert ours["_use_default_values"]
        out[f"{label} config as JSON"] = (ours, cls.from_pretrained(dumped).config)
    for label, config in [("published", PUBLISHED),
                          ("published without spacing", {k: v for k, v in PUBLISHED.items()
                                                         if k != "timestep_spacing"})]:
        out[label] = (config, DDIMScheduler.from_config(config).config)
    return out


def check_against(name, ours_config, reference, steps=STEPS, eta=0.0):
    """Our sampler for ``ours_config`` against the freshly built diffusers scheduler ``reference``: equal
    timesteps, every step teacher-forced within REL of its scale. Returns the largest relative error."""
    p, q = denoiser_tables(reference.alphas_cumprod.numpy(), reference.config.prediction_type)
    x_T, u, w = fixed_arrays()
    inputs, model_outputs, outputs = run_reference(reference, steps, x_T, p, q, u, w, eta, float64=True)
    sampler = make_sampler(name, ours_config, steps, eta=eta)
    np.testing.assert_array_equal(sampler.timesteps, reference.timesteps.numpy())
    ours = teacher_forced_steps(sampler, inputs, model_outputs)
    return max(assert_close(ours[i], outputs[i], rel=REL, what=f"{name} step {i} (t={t})")
               for i, t in enumerate(sampler.timesteps))


def test_defaults_are_the_diffusers_constructors():
    """Each sampler reads every key of its diffusers class's constructor, with the same defaults (DDIM clips,
    PNDM warms up with Runge-Kutta steps, DPM-Solver++ spaces "linspace")."""
    for name, cls in CLASSES.items():
        signature = inspect.signature(cls.__init__).parameters
        assert DEFAULTS[name] == {k: p.default for k, p in signature.items() if k != "self"}, name


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("source", SOURCES)
def test_sampler_is_what_diffusers_runs_after_from_config(sources, source, name):
    ours_config, diffusers_config = sources[source]
    cls = CLASSES[name]
    reference = cls.from_config(diffusers_config)
    # The constructor arguments, every key of the class's signature.
    resolved = read_scheduler_config(ours_config, DEFAULTS[name], "test")
    assert resolved == {key: reference.config[key] for key in DEFAULTS[name]}
    # The timesteps over step counts (the Runge-Kutta warm-up needs 4 steps, on both sides).
    check_timesteps(name, ours_config, reference, (1, 3, 4, 25))
    # Every step.
    check_against(name, ours_config, cls.from_config(diffusers_config))


def test_default_built_ddim_switched_to_dpm_solver():
    """``DPMSolverMultistepScheduler.from_config(DDIMScheduler(steps_offset=1).config)`` runs its own "linspace"
    spacing (DDIM's "leading" was a default); once saved, "leading" is written out and carries over."""
    ddim = DDIMScheduler(steps_offset=1)
    dpm = DPMSolverMultistepScheduler.from_config(ddim.config)
    dpm.set_timesteps(3)
    assert dpm.timesteps.tolist() == [999, 666, 333]
    assert make_sampler("dpmsolver++", dict(ddim.config), 3).timesteps.tolist() == [999, 666, 333]
    saved = json.loads(ddim.to_json_string())
    dpm = DPMSolverMultistepScheduler.from_config(DDIMScheduler.from_config(saved).config)
    dpm.set_timesteps(3)
    assert dpm.timesteps.tolist() == [751, 501, 251]
    assert make_sampler("dpmsolver++", saved, 3).timesteps.tolist() == [751, 501, 251]


def test_ddim_clips_unless_the_config_says_not_to():
    """DDIMScheduler's default ``clip_sample=True`` applies to a config without the key (and only then): the x0
    estimates of this trajectory leave [-1, 1], so clipping changes the steps."""
    config = {k: v for k, v in PUBLISHED.items() if k != "clip_sample"}
    assert DDIMScheduler.from_config(config).config.clip_sample is True
    check_against("ddim", config, DDIMScheduler.from_config(config))
    clipped = make_sampler("ddim", config, STEPS)
    assert clipped.clip_sample_range == 1.0
    assert make_sampler("ddim", PUBLISHED, STEPS).clip_sample_range is None
    x, model_output = fixed_arrays()[:2]
    unclipped = make_sampler("ddim", PUBLISHED, STEPS)
    stepped = [np.asarray(sampler.step((), model_output, 0, x)[0]) for sampler in (clipped, unclipped)]
    assert np.abs(stepped[0] - stepped[1]).max() > 0.1


def test_options_of_other_classes_are_ignored():
    """An option raises only in a class that has it; other classes ignore it, as diffusers does."""
    karras = dict(PUBLISHED, use_karras_sigmas=True, variance_type="fixed_small")  # DDPM's variance_type
    for name in ("ddim", "pndm"):
        check_against(name, karras, CLASSES[name].from_config(karras), steps=5)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        make_sampler("dpmsolver++", karras, 5)
    # Listed in _use_default_values: not taken from the config.
    defaulted = dict(karras, _use_default_values=["use_karras_sigmas"])
    check_against("dpmsolver++", defaulted, DPMSolverMultistepScheduler.from_config(defaulted), steps=5)

    thresholding = dict(PUBLISHED, thresholding=True)
    check_against("pndm", thresholding, PNDMScheduler.from_config(thresholding))
    for name in ("ddim", "dpmsolver++"):
        with pytest.raises(ValueError, match="thresholding"):
            make_sampler(name, thresholding, 5)
    with pytest.raises(ValueError, match="variance_type"):
        make_sampler("dpmsolver++", dict(PUBLISHED, variance_type="learned_range"), 5)

    # Removed options (predict_epsilon, diffusers < 0.13) are unknown keys today: ignored.
    legacy = dict(PUBLISHED, predict_epsilon=False)
    assert DDIMScheduler.from_config(legacy).config.prediction_type == "epsilon"
    check_against("ddim", legacy, DDIMScheduler.from_config(legacy), steps=5)


def test_null_values_as_diffusers_reads_them():
    """Flags are tested by truth value (null: off); values that diffusers does not read may be null; null where
    diffusers needs a value raises, naming the key."""
    nulls = dict(PUBLISHED, clip_sample=None, set_alpha_to_one=None)  # defaults: true, true
    check_against("ddim", nulls, DDIMScheduler.from_config(nulls))
    linspace = dict(PUBLISHED, timestep_spacing="linspace", steps_offset=None, skip_prk_steps=None,
                    lower_order_final=None)
    for name, cls in CLASSES.items():
        check_against(name, linspace, cls.from_config(linspace))
    with pytest.raises(ValueError, match="steps_offset"):
        make_sampler("ddim", dict(PUBLISHED, steps_offset=None), 5)
    for name in CLASSES:
        with pytest.raises(ValueError, match="timestep_spacing"):
            make_sampler(name, dict(PUBLISHED, timestep_spacing=None), 5)


def test_dpm_solver_renames_like_diffusers():
    """DPMSolverMultistepScheduler turns a DEIS config's algorithm_type and a UniPC config's solver_type into its
    own (dpmsolver++, midpoint); for "deis" it requires final_sigmas_type "sigma_min"."""
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverMultistepScheduler.from_config(dict(PUBLISHED, algorithm_type="deis"))
    with pytest.raises(ValueError, match="final_sigmas_type"):
        make_sampler("dpmsolver++", dict(PUBLISHED, algorithm_type="deis"), 8)
    for overrides in ({"algorithm_type": "deis", "final_sigmas_type": "sigma_min"}, {"solver_type": "bh2"},
                      {"solver_type": "logrho"}):
        config = dict(PUBLISHED, **overrides)
        reference = DPMSolverMultistepScheduler.from_config(config)
        assert (reference.config.algorithm_type, reference.config.solver_type) == ("dpmsolver++", "midpoint")
        check_against("dpmsolver++", config, reference, steps=8)


def test_bad_config_metadata_names_the_key(tmp_path):
    for bad in ("timestep_spacing", [1, 2], 3):
        with pytest.raises(ValueError, match="_use_default_values"):
            make_sampler("ddim", dict(PUBLISHED, _use_default_values=bad), 5)
    with pytest.raises(ValueError, match="_class_name"):
        DDIMScheduler.from_config(dict(PUBLISHED, _class_name=3))
    with pytest.raises(ValueError, match="_class_name"):
        make_sampler("ddim", dict(PUBLISHED, _class_name=3), 5)
    with pytest.raises(ValueError, match="mapping"):
        make_sampler("ddim", [("beta_schedule", "linear")], 5)
    path = tmp_path / "scheduler_config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="scheduler_config.json: not a valid JSON file"):
        load_scheduler_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_scheduler_config(path)


# ----------------------------------------------------------------------------------------------------------------
# A whole pipeline saved with a default-built DDIM, switched to DPM-Solver++
# ----------------------------------------------------------------------------------------------------------------

DURATION = 0.36
PROMPTS = ["a dog barks", "rain falls on a tin roof"]


@pytest.fixture(scope="module")
def default_ddim_checkpoint(tmp_path_factory):
    from pipeline_fixtures import build_reference_pipeline, save_checkpoint

    reference = build_reference_pipeline("text")
    reference.scheduler = DDIMScheduler()
    return save_checkpoint(reference, tmp_path_factory.mktemp("tiny-default-ddim")), reference


def test_pipeline_switched_to_dpm_solver_matches_diffusers(default_ddim_checkpoint):
    """diffusers' ``pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`` against
    ours with ``scheduler="dpmsolver++"``, same latents, for the two configs a diffusers user can hold: the
    scheduler loaded back from the checkpoint ("leading" written out: 750, 500, 250) and the in-memory one that
    saved it ("leading" a default: DPM-Solver++'s "linspace", 999, 666, 333). Ours gets the same config: the
    checkpoint's file, then the in-memory config set on the same pipeline (which must not reuse the sampler
    compiled for the first)."""
    from pipeline_fixtures import reference_latents

    from audioldm2_jax import AudioLDM2Pipeline

    folder, reference = default_ddim_checkpoint
    in_memory = reference.scheduler
    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    latents = reference_latents(2, DURATION, seed=3)
    kwargs = dict(audio_length_in_s=DURATION, num_inference_steps=3, guidance_scale=2.5)
    results = []
    for label, diffusers_config, ours_config, timesteps in [
            ("loaded", DDIMScheduler.from_pretrained(folder / "scheduler").config, pipe.scheduler_config,
             [750, 500, 250]),
            ("in memory", in_memory.config, dict(in_memory.config), [999, 666, 333])]:
        reference.scheduler = DPMSolverMultistepScheduler.from_config(diffusers_config)
        with torch.no_grad():
            expected = reference(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **kwargs).audios
        assert reference.scheduler.timesteps.tolist() == timesteps
        pipe.scheduler_config = ours_config
        ours = pipe(PROMPTS, latents=latents, scheduler="dpmsolver++", **kwargs)
        err = assert_close(ours, expected, rel=1e-5, what=f"waveform (dpmsolver++, {label} config)")
        print(f"{label}: timesteps {timesteps}, max abs error {np.abs(ours - expected).max():.2e} "
              f"(scale {np.abs(expected).max():.3f}, relative {err:.1e})")
        assert expected.std() > 0.05
        results.append(expected)
    # The two configs give clearly different audio, so each comparison tells them apart.
    change = np.abs(results[0] - results[1]).max() / np.abs(results[0]).max()
    print(f"loaded vs in-memory config: waveforms differ by {change:.1%} of the scale")
    assert change > 0.02
    reference.scheduler = in_memory


def test_checkpoint_saved_with_another_scheduler_runs_it_by_default(tmp_path):
    """A pipeline saved with DPMSolverMultistepScheduler (model_index.json names it): diffusers' pipeline, loaded
    back and called without swapping schedulers, runs DPM-Solver++; so does ours with ``scheduler=None``. A class
    this port does not implement is named in the error when no sampler is given."""
    from pipeline_fixtures import build_reference_pipeline, reference_latents, save_checkpoint

    from audioldm2_jax import AudioLDM2Pipeline

    reference = build_reference_pipeline("text")
    reference.scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.0015,
                                                      beta_end=0.0195)
    folder = save_checkpoint(reference, tmp_path / "dpm")
    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    assert pipe.scheduler_class == "DPMSolverMultistepScheduler"
    latents = reference_latents(2, DURATION, seed=5)
    kwargs = dict(audio_length_in_s=DURATION, num_inference_steps=3, guidance_scale=2.5)
    with torch.no_grad():
        expected = reference(PROMPTS, latents=torch.from_numpy(latents), output_type="np", **kwargs).audios
    ours = pipe(PROMPTS, latents=latents, **kwargs)
    assert_close(ours, expected, rel=1e-5, what="waveform (the checkpoint's DPM-Solver++ by default)")
    as_ddim = pipe(PROMPTS, latents=latents, scheduler="ddim", **kwargs)
    assert np.abs(as_ddim - expected).max() > 100 * 1e-5 * np.abs(expected).max()  # the default really differs

    pipe.scheduler_class = "EulerDiscreteScheduler"
    with pytest.raises(ValueError, match="EulerDiscreteScheduler.*not implement"):
        pipe(PROMPTS, latents=latents, **kwargs)
