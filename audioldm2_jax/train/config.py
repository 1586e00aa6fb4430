"""The training configuration: every key the trainer knows, its default, and the checks that run before anything
is compiled.

A run's config is an ``ml_collections.ConfigDict`` built by a file in ``configs/`` on top of :func:`base_config`
(``--config configs/x.py --config.a.b=...``). :func:`base_config` is also the schema: :func:`validate` rejects a
key it does not hold, naming it, so that a typo never silently trains with a default.

Sections:

- run: ``stage``, ``seed``, ``num_steps``, ``batch_size`` (global), ``grad_accum_steps``, ``compute_dtype``,
  ``prng_impl``, ``max_consecutive_nonfinite``, ``distributed``, ``xla_cpu_fast_compile``, ``compilation_cache_dir``;
- ``optimizer`` (AdamW, warmup + schedule, clipping) and ``group_optimizers`` (per parameter-group overrides, e.g.
  the discriminator's learning rate); ``ema``;
- ``mesh`` (``data`` / ``fsdp`` / ``tensor`` sizes, -1 = the rest) and ``logical_axis_rules`` overrides;
- ``checkpoint``, ``log``;
- ``data`` (:class:`audioldm2_jax.data.pipeline.DataConfig` fields);
- ``model``: one section per network, field for field its frozen config dataclass, and ``model.text_encoder_2``:
  the second text stream of the projection / GPT-2, ``"t5"`` (FLAN-T5 reads the caption: text-to-audio, music)
  or ``"vits"`` (the VITS phoneme encoder reads the clip's transcription: the speech models); ``model.attention``:
  the attention implementation (``models/layers.py``), ``"auto"`` = the one for the mesh's platform;
- ``init``: where each component's starting (or frozen) weights come from;
- ``text``: tokenizer folders and lengths, what the speech models read as transcription; ``diffusion``: the noise
  schedule;
- one section per stage (``vae``, ``audiomae``, ``ldm``, ``gpt2``, ``joint``, ``vocoder``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from audioldm2_jax.data.pipeline import DataConfig
from audioldm2_jax.diffusion.schedule import BETA_SCHEDULES
from audioldm2_jax.models.audiomae import AudioMAEConfig
from audioldm2_jax.models.clap import ClapAudioConfig, ClapConfig, ClapTextConfig
from audioldm2_jax.models.gpt2 import GPT2Config
from audioldm2_jax.models.layers import ATTENTION_IMPLEMENTATIONS
from audioldm2_jax.models.projection import ProjectionConfig
from audioldm2_jax.models.t5 import T5Config
from audioldm2_jax.models.unet import UNetConfig
from audioldm2_jax.models.vae import VAEConfig
from audioldm2_jax.models.vits_text import VitsTextConfig
from audioldm2_jax.models.vocoder import VocoderConfig
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, batch_axes, batch_size_divisor

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
PRNG_IMPLS = ("auto", "threefry2x32", "rbg", "unsafe_rbg")
SCHEDULES = ("cosine", "linear", "constant")
TEXT_ENCODERS_2 = ("t5", "vits")

# Model sections of the config and the dataclass each one builds.
MODEL_CLASSES = {
    "unet": UNetConfig, "vae": VAEConfig, "vocoder": VocoderConfig, "audiomae": AudioMAEConfig,
    "gpt2": GPT2Config, "t5": T5Config, "projection": ProjectionConfig, "vits": VitsTextConfig,
}


def _dataclass_dict(instance) -> dict:
    """A dataclass as nested plain containers that a ConfigDict holds (tuples kept, ``None`` allowed)."""
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _clap_dict(config: ClapConfig) -> dict:
    return {"text": _dataclass_dict(config.text), "audio": _dataclass_dict(config.audio),
            "projection_dim": config.projection_dim, "logit_scale_init_value": config.logit_scale_init_value}


def _optimizer_defaults() -> dict:
    return dict(
        name="adamw", learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
        warmup_steps=0, schedule="constant", end_learning_rate_factor=0.0, grad_clip_norm=1.0)


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with the defaults of the published (base) model sizes."""
    c = ml_collections.ConfigDict()
    c.stage = "ldm"
    c.seed = 0
    c.num_steps = 100_000
    c.batch_size = 8  # global, over all hosts and devices
    c.grad_accum_steps = 1  # the batch is split into this many micro-batches inside the step
    c.compute_dtype = "auto"  # "auto": bfloat16 on GPU/TPU, float32 on CPU
    c.prng_impl = "auto"  # "auto": unsafe_rbg on CPU (XLA:CPU compiles threefry slowly), jax's default elsewhere
    c.max_consecutive_nonfinite = 20  # stop the run after this many non-finite steps in a row
    c.distributed = "auto"  # "auto" | "on" | "off": jax.distributed.initialize() for multi-host launches
    c.xla_cpu_fast_compile = False  # lower XLA:CPU optimisation (the quickstart: compile time dominates)
    # JAX's persistent compilation cache: a restarted or resumed run (and any run of the same programs) loads its
    # compiled step from here instead of compiling again; a local folder or gs://. "" = off.
    c.compilation_cache_dir = ""

    c.optimizer = ml_collections.ConfigDict(_optimizer_defaults())
    # Per parameter group, keys of `optimizer` to override (e.g. {"discriminator": {"learning_rate": 2e-4}}).
    c.group_optimizers = ml_collections.ConfigDict()
    c.ema = ml_collections.ConfigDict(dict(decay=0.0, warmup=True))  # decay 0: no EMA copy

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = ()  # ((logical_name, mesh_axes), ...) replacing DEFAULT_RULES entries

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000, keep=3, async_save=True, save_final=True, restore=True))
    c.log = ml_collections.ConfigDict(dict(
        every_steps=50, tensorboard=True, jsonl=True, progress_bar=True, sample_every_steps=0, num_samples=2,
        sample_steps=25))
    # Held-out evaluation (train/held_out.py): every `every_steps` steps (0: off) and at the last step, the stage's
    # losses at fixed draws on held-out clips, logged as eval/<name>. The clips: `path` (a manifest / ArrayRecord
    # location) or `tfds_split` when set, else a split of the training data that training then never sees
    # (`held_out_fraction` of it by a hash of each clip's identity, at most `max_clips`).
    c.eval = ml_collections.ConfigDict(dict(
        every_steps=0, held_out_fraction=0.01, max_clips=256, path="", tfds_split="", batch_size=0,
        timesteps_per_clip=4, seed=0,
        # The field's metrics (train/held_out_metrics.py, the joint stage): every `metrics_every_steps` steps (0: off)
        # one clip per held-out caption for the first `num_generated` clips, scored against them; each metric of
        # `metrics` whose network is configured (vggish: FAD; panns: FD, KL, IS; clap: a CLAP checkpoint).
        metrics_every_steps=0, metrics="fad,fd,kl,is,clap", vggish="", panns="", clap="", num_generated=32,
        inference_steps=50, guidance_scale=3.5))

    data = ml_collections.ConfigDict()

    for field in dataclasses.fields(DataConfig):
        if field.name == "global_batch_size":
            continue  # set from `batch_size`
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        setattr(data, field.name, value)
    c.data = ml_collections.ConfigDict(data.to_dict(), type_safe=False)

    c.model = ml_collections.ConfigDict(type_safe=False)
    for name, cls in MODEL_CLASSES.items():
        c.model[name] = ml_collections.ConfigDict(_dataclass_dict(cls()), type_safe=False)
    c.model.clap = ml_collections.ConfigDict(_clap_dict(ClapConfig()), type_safe=False)
    c.model.vits.vocab_size = 183  # the speech checkpoints' phoneme vocabulary (transformers' default is 38)
    # The projection's second stream: "t5" (the caption through FLAN-T5) or "vits" (the clip's transcription
    # through the VITS phoneme encoder, with the projection's learned position table: the speech models).
    c.model.text_encoder_2 = "t5"
    # "auto": the attention implementation suited to the mesh's platform (layers.attention_for_platform); or a name
    c.model.attention = "auto"
    c.model.discriminator = ml_collections.ConfigDict(type_safe=False)  # passed to the GAN discriminators

    # Starting / frozen weights per component: "" = random init from `seed`; a folder = a diffusers /
    # transformers checkpoint, a component saved by this trainer, or a training workdir (its latest export).
    c.init = ml_collections.ConfigDict({name: "" for name in (
        "unet", "vae", "vocoder", "audiomae", "gpt2", "t5", "clap", "projection", "vits")})

    c.text = ml_collections.ConfigDict(dict(
        t5_tokenizer="", clap_tokenizer="", t5_max_length=128, clap_max_length=64,
        # speech models: a VitsTokenizer folder (default: tokenizer_2/ beside init.vits); transcriptions are padded
        # to vits_max_length phonemes, 0 = model.projection.max_seq_length (the only length its table accepts)
        vits_tokenizer="", vits_max_length=0,
        transcription_from_caption=False,  # an empty transcription reads the caption (procedural smoke runs)
        default_caption=""))  # the caption of clips without one (LJSpeech has none: e.g. "a woman speaks")

    c.diffusion = ml_collections.ConfigDict(dict(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        prediction_type="epsilon"))

    c.vae = ml_collections.ConfigDict(dict(
        kl_weight=1e-6, rec_loss="l1", disc_start=50_001, disc_weight=0.5, disc_factor=1.0, adaptive_weight=True,
        sample_posterior=True))
    c.audiomae = ml_collections.ConfigDict(dict(mask_ratio=0.8))
    c.ldm = ml_collections.ConfigDict(dict(
        loa_lambdas=(1, 2, 4, 8),  # sampled uniformly per step; one value = fixed pooling
        cond_dropout=0.1,  # probability of replacing both conditions by the unconditional ones
        scale_by_std=True,  # latent scale = 1 / std of the first batch's latents
        latent_scale=0.4110932946205139,  # used when scale_by_std is False (and as the VAE export's default)
        sample_posterior=True))
    c.gpt2 = ml_collections.ConfigDict(dict(loss="l1", loa_lambda=8, cond_dropout=0.1))
    c.joint = ml_collections.ConfigDict(dict(p_gt=0.25, gpt2_loss_weight=1.0))
    c.vocoder = ml_collections.ConfigDict(dict(
        segment_frames=32, mel_weight=45.0, feature_weight=2.0, adv_weight=1.0,
        stft_weight=0.0, stft_resolutions=((512, 128), (1024, 256), (2048, 512))))
    c.toy = ml_collections.ConfigDict(dict(hidden=64))  # the smoke-test stage
    return c


def data_config(config, batch_size: int | None = None) -> dict:
    """The input pipeline's settings (:class:`~audioldm2_jax.data.pipeline.DataConfig` keys) of a run: ``data`` with
    the global batch size (``batch_size``, default the training batch)."""
    data = as_dict(config.data)
    data["global_batch_size"] = int(config.batch_size if batch_size is None else batch_size)
    return data


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config that cannot run: the message names every offending key."""


def _unknown_keys(config: Mapping, schema: Mapping, prefix: str = "") -> list[str]:
    """Dotted names of keys in ``config`` that ``schema`` lacks (open sections: ``group_optimizers``,
    ``model.discriminator``, ``data.tfds_features``)."""
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in ("group_optimizers", "model.discriminator", "data.tfds_features"):
            continue
        if key not in schema:
            out.append(name)
        elif isinstance(value, Mapping) and isinstance(schema[key], Mapping):
            out.extend(_unknown_keys(value, schema[key], name + "."))
    return out


def as_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_int(problems: list, name: str, value, minimum: int, note: str = "") -> None:
    """An integer (not a bool) >= ``minimum``; ``note`` says what the smallest values mean."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        problems.append(f"{name}={value!r} must be an integer >= {minimum}{note}")


def _check_number(problems: list, name: str, value, low=None, high=None, *, low_open: bool = False,
                  high_open: bool = False) -> None:
    """A finite number in ``[low, high]`` (``(`` / ``)`` with ``low_open`` / ``high_open``; None: unbounded)."""
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        span = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")
        problems.append(f"{name}={value!r} must be a finite number in {span}")


def _check_optimizer(problems: list, group: str, opt: Mapping, num_steps) -> None:
    """Values of an optimizer section (``optimizer``, or the keys a ``group_optimizers`` entry overrides)."""
    checks = dict(
        learning_rate=lambda n, v: _check_number(problems, n, v, 0, low_open=True),
        b1=lambda n, v: _check_number(problems, n, v, 0, 1, high_open=True),
        b2=lambda n, v: _check_number(problems, n, v, 0, 1, high_open=True),
        # eps = 0 divides 0 by 0 for a parameter whose gradient is 0 (NaN updates)
        eps=lambda n, v: _check_number(problems, n, v, 0, low_open=True),
        weight_decay=lambda n, v: _check_number(problems, n, v, 0),
        end_learning_rate_factor=lambda n, v: _check_number(problems, n, v, 0, 1),
        warmup_steps=lambda n, v: _check_int(problems, n, v, 0))
    for key, check in checks.items():
        if key in opt:
            check(f"{group}.{key}", opt[key])
    warmup = opt.get("warmup_steps")
    if isinstance(num_steps, int) and isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > num_steps:
        problems.append(f"{group}.warmup_steps={warmup} is more than num_steps={num_steps}: the learning rate would "
                        "never reach its peak")
    clip = opt.get("grad_clip_norm", 1.0)
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        problems.append(f"{group}.grad_clip_norm={clip!r} must be a finite number > 0 (None: no clipping)")


def _check_values(d: dict) -> list[str]:
    """Range checks of every numeric key the trainer reads (outside the mesh and the model sections): intervals,
    rates, probabilities, weights, sizes."""
    problems: list[str] = []
    if isinstance(d["seed"], bool) or not isinstance(d["seed"], (int, np.integer)):
        problems.append(f"seed={d['seed']!r} must be an integer")
    _check_optimizer(problems, "optimizer", d["optimizer"], d["num_steps"])
    for name, group in d["group_optimizers"].items():
        _check_optimizer(problems, f"group_optimizers.{name}", group, d["num_steps"])

    # Intervals: a step count divides by them (0 fails after the first step).
    _check_int(problems, "checkpoint.every_steps", d["checkpoint"]["every_steps"], 1)
    _check_int(problems, "checkpoint.keep", d["checkpoint"]["keep"], 0, " (0: keep every checkpoint)")
    _check_int(problems, "log.every_steps", d["log"]["every_steps"], 1)
    _check_int(problems, "log.sample_every_steps", d["log"]["sample_every_steps"], 0, " (0: no samples)")
    _check_int(problems, "log.num_samples", d["log"]["num_samples"], 1)
    _check_int(problems, "log.sample_steps", d["log"]["sample_steps"], 1)
    ev = d["eval"]
    _check_int(problems, "eval.every_steps", ev["every_steps"], 0, " (0: no held-out evaluation)")
    _check_number(problems, "eval.held_out_fraction", ev["held_out_fraction"], 0, 1, low_open=True, high_open=True)
    _check_int(problems, "eval.max_clips", ev["max_clips"], 1)
    _check_int(problems, "eval.batch_size", ev["batch_size"], 0, " (0: the training batch size)")
    _check_int(problems, "eval.timesteps_per_clip", ev["timesteps_per_clip"], 1)
    _check_int(problems, "eval.metrics_every_steps", ev["metrics_every_steps"], 0, " (0: no generation metrics)")
    _check_int(problems, "eval.num_generated", ev["num_generated"], 2)
    _check_int(problems, "eval.inference_steps", ev["inference_steps"], 1)
    _check_number(problems, "eval.guidance_scale", ev["guidance_scale"], 0)
    if ev["metrics_every_steps"] and not ev["every_steps"]:
        problems.append("eval.metrics_every_steps needs held-out clips: set eval.every_steps too")

    data = d["data"]
    for key, minimum in (("read_threads", 0), ("prefetch_buffer_size", 0), ("worker_buffer_size", 1),
                         ("max_consecutive_skips", 0), ("crop_retries", 0), ("procedural_clips", 1)):
        _check_int(problems, f"data.{key}", data[key], minimum)
    _check_number(problems, "data.silence_peak", data["silence_peak"], 0)
    # A clip must give at least one latent frame of the smallest VAE (as DataConfig.validate asks).
    _check_number(problems, "data.clip_seconds", data["clip_seconds"], 0.06, low_open=True)
    if data["num_epochs"] is not None:
        _check_int(problems, "data.num_epochs", data["num_epochs"], 1, " (None: repeat forever)")

    for key in ("t5_max_length", "clap_max_length"):
        _check_int(problems, f"text.{key}", d["text"][key], 1)
    diffusion = d["diffusion"]
    _check_int(problems, "diffusion.num_train_timesteps", diffusion["num_train_timesteps"], 1)
    for key in ("beta_start", "beta_end"):
        _check_number(problems, f"diffusion.{key}", diffusion[key], 0, 1, low_open=True, high_open=True)

    if diffusion["beta_schedule"] not in BETA_SCHEDULES:
        problems.append(f"diffusion.beta_schedule={diffusion['beta_schedule']!r} is not one of {BETA_SCHEDULES}")

    vae = d["vae"]
    if vae["rec_loss"] != "l1":
        problems.append(f"vae.rec_loss={vae['rec_loss']!r}: the VAE stage trains with the L1 reconstruction loss only")
    _check_int(problems, "vae.disc_start", vae["disc_start"], 0)
    for key in ("kl_weight", "disc_weight", "disc_factor"):
        _check_number(problems, f"vae.{key}", vae[key], 0)
    # Probabilities: a mask ratio of 1 leaves the encoder no patch; a dropout of 1 never trains the condition.
    _check_number(problems, "audiomae.mask_ratio", d["audiomae"]["mask_ratio"], 0, 1, high_open=True)
    _check_number(problems, "ldm.cond_dropout", d["ldm"]["cond_dropout"], 0, 1, high_open=True)
    _check_number(problems, "ldm.latent_scale", d["ldm"]["latent_scale"], 0, low_open=True)
    _check_number(problems, "gpt2.cond_dropout", d["gpt2"]["cond_dropout"], 0, 1, high_open=True)
    _check_int(problems, "gpt2.loa_lambda", d["gpt2"]["loa_lambda"], 1)
    _check_number(problems, "joint.p_gt", d["joint"]["p_gt"], 0, 1)
    _check_number(problems, "joint.gpt2_loss_weight", d["joint"]["gpt2_loss_weight"], 0)
    vocoder = d["vocoder"]
    _check_int(problems, "vocoder.segment_frames", vocoder["segment_frames"], 1)
    for key in ("mel_weight", "feature_weight", "adv_weight", "stft_weight"):
        _check_number(problems, f"vocoder.{key}", vocoder[key], 0)
    for pair in vocoder["stft_resolutions"]:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair) or pair[1] > pair[0]):
            problems.append(f"vocoder.stft_resolutions entry {pair!r} must be (n_fft, hop) with 0 < hop <= n_fft")
    _check_int(problems, "toy.hidden", d["toy"]["hidden"], 1)
    return problems


def validate(config, num_devices: int | None = None, process_count: int | None = None) -> None:
    """Raises a ValueError naming every problem that would otherwise surface during (or after) compilation:
    unknown keys, a mesh that does not divide the devices, a batch the data axes cannot split, bad values."""
    d = as_dict(config)
    problems = [f"unknown config key {name!r}" for name in _unknown_keys(d, base_config().to_dict())]
    if problems:
        raise ConfigError("config error: " + "; ".join(problems))
    from audioldm2_jax.train.stages import STAGES  # the stages read this module: imported here, not at the top

    if d["stage"] not in STAGES and ":" not in str(d["stage"]):
        problems.append(f"stage={d['stage']!r} is not one of {STAGES} (or 'package.module:Class')")
    if d["compute_dtype"] not in COMPUTE_DTYPES:
        problems.append(f"compute_dtype={d['compute_dtype']!r} is not one of {COMPUTE_DTYPES}")
    if d["prng_impl"] not in PRNG_IMPLS:
        problems.append(f"prng_impl={d['prng_impl']!r} is not one of {PRNG_IMPLS}")
    if not isinstance(d["compilation_cache_dir"], str):
        problems.append(f"compilation_cache_dir={d['compilation_cache_dir']!r} must be a folder (a string; '' = off)")
    for key in ("num_steps", "batch_size", "grad_accum_steps", "max_consecutive_nonfinite"):
        if not isinstance(d[key], int) or d[key] < 1:
            problems.append(f"{key}={d[key]!r} must be a positive integer")
    for group, opt in [("optimizer", d["optimizer"])] + [(f"group_optimizers.{k}", v)
                                                         for k, v in d["group_optimizers"].items()]:
        unknown = sorted(set(opt) - set(_optimizer_defaults()))
        if unknown:
            problems.append(f"unknown config key(s) {[f'{group}.{k}' for k in unknown]}")
        if opt.get("schedule", "constant") not in SCHEDULES:
            problems.append(f"{group}.schedule={opt['schedule']!r} is not one of {SCHEDULES}")
        if opt.get("name", "adamw") != "adamw":
            problems.append(f"{group}.name={opt['name']!r}: only 'adamw' is supported")
    _check_number(problems, "ema.decay", d["ema"]["decay"], 0, 1, high_open=True)  # 0: no EMA copy
    problems.extend(_check_values(d))

    mesh = d["mesh"]
    for axis in mesh:
        if axis not in ("data", "fsdp", "tensor"):
            problems.append(f"mesh axis {axis!r} is not one of data, fsdp, tensor")
    sizes = [int(v) for v in mesh.values()]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        problems.append(f"mesh {mesh}: sizes must be positive, with at most one -1")
    elif num_devices is not None:
        fixed = int(np.prod([s for s in sizes if s != -1]))
        if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
            problems.append(f"mesh {mesh} does not divide the {num_devices} devices "
                            f"(the product of its sizes must equal the device count, or divide it with one -1)")
        else:
            resolved = {k: (num_devices // fixed if int(v) == -1 else int(v)) for k, v in mesh.items()}
            # the axes that carry the batch, as the trainer and the data loader derive them from act_batch
            rules = logical_rules(config)
            axes = " x ".join(batch_axes(rules, resolved)) or "none"
            data_ways = batch_size_divisor(rules, resolved)
            if d["batch_size"] % data_ways:
                problems.append(f"batch_size={d['batch_size']} is not divisible by the batch axes "
                                f"{axes} = {data_ways} of mesh {resolved} (the act_batch rule)")
            elif (d["batch_size"] // d["grad_accum_steps"]) % data_ways or d["batch_size"] % d["grad_accum_steps"]:
                problems.append(f"batch_size={d['batch_size']} / grad_accum_steps={d['grad_accum_steps']} does not "
                                f"give micro-batches divisible by the batch axes {axes} = {data_ways}")
    if process_count is not None and d["batch_size"] % process_count:
        problems.append(f"batch_size={d['batch_size']} does not split over {process_count} processes")

    for name, cls in MODEL_CLASSES.items():
        try:
            model_config(config, name)
        except (TypeError, ValueError) as err:
            problems.append(f"model.{name}: {err}")
    try:
        clap_config(config)
    except (TypeError, ValueError) as err:
        problems.append(f"model.clap: {err}")

    lambdas = tuple(d["ldm"]["loa_lambdas"])
    if not lambdas or any(int(v) < 1 for v in lambdas):
        problems.append(f"ldm.loa_lambdas={lambdas} must be positive pooling rates")
    if d["model"]["text_encoder_2"] not in TEXT_ENCODERS_2:
        problems.append(f"model.text_encoder_2={d['model']['text_encoder_2']!r} is not one of {TEXT_ENCODERS_2}")
    if d["model"]["attention"] not in ("auto",) + ATTENTION_IMPLEMENTATIONS:
        problems.append(f"model.attention={d['model']['attention']!r} is not one of "
                        f"{('auto',) + ATTENTION_IMPLEMENTATIONS}")
    if not isinstance(d["text"]["vits_max_length"], int) or d["text"]["vits_max_length"] < 0:
        problems.append(f"text.vits_max_length={d['text']['vits_max_length']!r} must be a non-negative integer "
                        "(0: model.projection.max_seq_length)")
    if d["gpt2"]["loss"] not in ("l1", "mse"):
        problems.append(f"gpt2.loss={d['gpt2']['loss']!r} is not 'l1' or 'mse'")
    if d["diffusion"]["prediction_type"] not in ("epsilon", "v_prediction"):
        problems.append(f"diffusion.prediction_type={d['diffusion']['prediction_type']!r} is not epsilon or "
                        "v_prediction")
    if d["data"]["num_workers"] < 0:
        problems.append(f"data.num_workers={d['data']['num_workers']} must be >= 0")
    if problems:
        raise ConfigError("config error: " + "; ".join(problems))


# The packaged config files: ``configs/<name>.py`` on the command line names one of them when no such file exists
# (the repository's layout before the configs moved into the package; the same from an installed copy, from any
# working directory).
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file's path: ``path`` itself when it exists, else for ``[...]/configs/<name>.py`` the packaged
    ``audioldm2_jax/configs/<name>.py``. Raises FileNotFoundError naming the file and the packaged configs."""
    given = Path(path)
    if given.is_file():
        return given
    packaged = PACKAGED_CONFIGS / given.name
    if given.parent.name == "configs" and packaged.is_file():
        return packaged
    names = sorted(f"configs/{p.name}" for p in PACKAGED_CONFIGS.glob("*.py") if "def get_config(" in p.read_text())
    raise FileNotFoundError(f"config file {str(path)!r} does not exist (packaged configs: {', '.join(names)})")


def resolve_config_spec(spec: str) -> str:
    """``"path[:arg]"`` (a ``--config`` value) with the path resolved by :func:`resolve_config_path`."""
    path, sep, arg = str(spec).partition(":")
    return f"{resolve_config_path(path)}{sep}{arg}"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``"configs/x.py[:arg]"`` -> ``get_config(arg)`` of that file (:func:`resolve_config_path`), as ``--config``
    loads it. Config files import what they share from the package (``from audioldm2_jax.configs import
    common``)."""
    path, _, arg = resolve_config_spec(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


# ----------------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------------


def _tuples(value):
    """Lists (from JSON or the command line) -> tuples, recursively, as the frozen dataclasses expect."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls, section: Mapping, where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{where}.{k}' for k in unknown]}; known: {sorted(fields)}")
    return cls(**{k: _tuples(v) for k, v in section.items()})


def model_config(config, name: str):
    """The frozen architecture dataclass of ``config.model.<name>`` (``UNetConfig`` for "unet", ...)."""
    if name == "clap":
        return clap_config(config)
    return _build(MODEL_CLASSES[name], as_dict(config.model[name]), f"model.{name}")


def clap_config(config) -> ClapConfig:
    d = as_dict(config.model.clap)
    unknown = sorted(set(d) - {"text", "audio", "projection_dim", "logit_scale_init_value"})
    if unknown:
        raise ValueError(f"unknown key(s) {[f'model.clap.{k}' for k in unknown]}")
    return ClapConfig(text=_build(ClapTextConfig, d["text"], "model.clap.text"),
                      audio=_build(ClapAudioConfig, d["audio"], "model.clap.audio"),
                      projection_dim=d["projection_dim"], logit_scale_init_value=d["logit_scale_init_value"])


def set_model_config(config, name: str, instance) -> None:
    """Writes a dataclass (e.g. read from a checkpoint) into ``config.model.<name>``. The section's ``remat`` stays:
    it is how this run trains the network, not part of the architecture a checkpoint records."""
    values = _clap_dict(instance) if name == "clap" else _dataclass_dict(instance)
    if "remat" in values and "remat" in config.model.get(name, {}):
        values["remat"] = config.model[name].remat
    config.model[name] = ml_collections.ConfigDict(values, type_safe=False)


def resolve_compute_dtype(name: str, platform: str | None = None):
    """``"auto"``: bfloat16 where ``platform`` computes it natively (GPU, TPU), float32 on CPU; other names as
    given. ``platform`` is that of the devices the program is compiled for (``mesh.devices.flat[0].platform``),
    which is not the host's when compiling ahead of time for other devices (a TPU topology planned on a CPU host:
    ``audioldm2_jax.plan``); None means JAX's default backend, right only for a program that runs on the process's
    default devices."""
    if name == "auto":
        return jnp.float32 if (platform or jax.default_backend()) == "cpu" else jnp.bfloat16
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def resolve_prng_impl(name: str, platform: str | None = None) -> str | None:
    """The ``jax_default_prng_impl`` for programs compiled for ``platform`` (as in :func:`resolve_compute_dtype`;
    None: JAX's default backend), or None to keep jax's default (threefry2x32). ``"auto"``: "unsafe_rbg" on CPU
    (XLA:CPU compiles threefry's initialisers for minutes), jax's default on GPU and TPU.

    The implementation is process-wide, not per mesh, and a run sets it once (``train.loop.setup_runtime``) for the
    devices it runs on, which are the default backend's. Choosing it per mesh would be unsound: a typed key carries
    its implementation, so keys made under one cannot enter a program traced under another, and the run's random
    stream (which the trainer re-derives from ``config.seed`` at every start, never from a checkpoint) would change
    between programs of one run and on resumption. Only a program compiled for other devices than the process's own
    (the planner's) scopes it to that compile with ``with jax.default_prng_impl(...)``, so that the program uses the
    random-bit generator a run on those devices would. A run resumed on another platform under "auto" therefore
    draws another (equally valid) noise stream; set ``prng_impl`` explicitly to keep one across platforms."""
    if name == "auto":
        return "unsafe_rbg" if (platform or jax.default_backend()) == "cpu" else None
    return name


def resolved_mesh_shape(config, num_devices: int) -> dict[str, int]:
    mesh = {k: int(v) for k, v in as_dict(config.mesh).items()}
    fixed = int(np.prod([s for s in mesh.values() if s != -1]))
    return {k: (num_devices // fixed if v == -1 else v) for k, v in mesh.items()}


def logical_rules(config):
    """DEFAULT_RULES with the config's overrides substituted (same logical name) or appended."""
    overrides = {name: (tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in (tuple(r) for r in config.logical_axis_rules)}
    rules = [(name, overrides.pop(name, axes)) for name, axes in DEFAULT_RULES]
    return tuple(rules + list(overrides.items()))


def learning_rate_at(opt: Mapping, num_steps: int):
    """The learning-rate schedule (an optax schedule) of an optimizer section."""
    import optax

    peak = float(opt["learning_rate"])
    warmup = int(opt["warmup_steps"])
    end = peak * float(opt["end_learning_rate_factor"])
    decay_steps = max(num_steps - warmup, 1)
    if opt["schedule"] == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif opt["schedule"] == "linear":
        main = optax.linear_schedule(peak, end, decay_steps)
    else:
        main = optax.constant_schedule(peak)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def optimizer_section(config, group: str) -> dict:
    """``config.optimizer`` with ``config.group_optimizers.<group>`` laid over it."""
    opt = as_dict(config.optimizer)
    opt.update(as_dict(config.group_optimizers.get(group, {})) if group in config.group_optimizers else {})
    return opt


def describe_size(num_params: int) -> str:
    return f"{num_params / 1e6:.2f}M" if num_params < 1e9 else f"{num_params / 1e9:.2f}B"


def count_params(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
