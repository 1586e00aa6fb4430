"""Noise schedules of discrete-time diffusion (betas, cumulative alphas) and the forward process.

The tables are built on the host, in NumPy, reproducing the float32 values of diffusers' schedulers bit for bit:

- ``linear`` / ``scaled_linear`` betas come from ``torch.linspace(..., dtype=float32)``, which fills the first half
  of the range from ``start`` and the second half from ``end`` with a float32 step, each value rounded once (a
  fused multiply-add on CPU). :func:`float32_linspace` does the same; a plain ``np.linspace`` differs in ~30% of
  the entries by one ulp.
- ``alphas_cumprod``: torch's CPU ``cumprod`` of float32 accumulates in float64, so the float64 product of the
  float32 alphas, rounded to float32, is exactly diffusers' table (a float32 running product is not).

Everything that depends on these tables inside a jitted function (``add_noise``, ``velocity``) takes the
``NoiseSchedule`` pytree, whose arrays become device arrays under ``jit``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import flax.struct
import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# Options of diffusers' schedulers that change the numerics in ways not implemented here, with the values that
# leave the numerics alone. A class only checks the options of its own constructor (DDIMScheduler.from_config
# ignores use_karras_sigmas, as diffusers does); anything else raises instead of silently sampling something
# different. Flags are tested by truth value, as diffusers does (`if config.thresholding:`), so null means off.
UNSUPPORTED_FLAGS = ("thresholding", "rescale_betas_zero_snr", "use_karras_sigmas", "use_exponential_sigmas",
                     "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting")
# DPMSolverMultistepScheduler only reads variance_type to drop the variance half of a 2x-channel model output.
UNSUPPORTED_VARIANCE_TYPES = ("learned", "learned_range")


# ----------------------------------------------------------------------------------------------------------------
# Reading diffusers scheduler configs
# ----------------------------------------------------------------------------------------------------------------


def _use_default_values(d: Mapping[str, Any], owner: str) -> frozenset[str]:
    """The keys ``d`` records as constructor defaults (diffusers' ``_use_default_values``; none if absent)."""
    listed = d.get("_use_default_values", ())
    if isinstance(listed, (str, bytes)) or not isinstance(listed, (list, tuple, set, frozenset)) or not all(
            isinstance(key, str) for key in listed):
        raise ValueError(f"{owner}: _use_default_values={listed!r} must be a list of config key names")
    return frozenset(listed)


def read_scheduler_config(d: Mapping[str, Any], defaults: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The constructor arguments ``XScheduler.from_config(d)`` ends up with, for the diffusers scheduler class X
    whose ``__init__`` defaults are ``defaults`` (every key of its signature): a new dict with exactly those keys.

    diffusers' rules (``ConfigMixin.extract_init_dict``), which make the result independent of the class that
    wrote ``d``:

    - a key listed in ``d["_use_default_values"]`` (the keys the writing class took from its own constructor
      defaults; present in an in-memory ``scheduler.config``, dropped by ``save_pretrained``) is treated as
      absent, so X uses its own default: ``DPMSolverMultistepScheduler.from_config(DDIMScheduler().config)``
      runs "linspace" spacing, not DDIM's default "leading";
    - every other key of X's signature takes its value from ``d`` as it is (including null), whichever class
      wrote it and whatever that class's default was;
    - keys X does not have (another class's options, private ``_...`` keys, removed options such as
      ``predict_epsilon``) are ignored; X's keys that ``d`` lacks take X's defaults.

    Loading a saved ``scheduler_config.json`` (``load_config``: plain JSON) and switching classes
    (``Y.from_config(X.from_pretrained(folder).config)``) therefore gives Y what ``Y.from_config(json)`` gives.
    Options in :data:`UNSUPPORTED_FLAGS` that X has and that are on raise a ValueError naming the key.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{owner}: scheduler config must be a mapping, got {type(d).__name__}")
    class_name = d.get("_class_name")
    if class_name is not None and not isinstance(class_name, (str, list, tuple)):
        raise ValueError(f"{owner}: _class_name={class_name!r} must be a string")
    defaulted = _use_default_values(d, owner)
    out = dict(defaults)
    out.update({key: d[key] for key in defaults if key in d and key not in defaulted})
    for key in UNSUPPORTED_FLAGS:
        if key in out and _check_flag(out[key], key, owner):
            raise ValueError(f"{owner}: scheduler option {key}={out[key]!r} is not supported (only false)")
    if out.get("variance_type") in UNSUPPORTED_VARIANCE_TYPES:
        raise ValueError(f"{owner}: scheduler option variance_type={out['variance_type']!r} (a learned variance "
                         "channel) is not supported")
    return out


def load_scheduler_config(path) -> dict[str, Any]:
    """A ``scheduler_config.json`` as diffusers' ``load_config`` reads it: the JSON object, every key kept (the
    samplers apply the cross-class rules of :func:`read_scheduler_config`). Raises ValueError naming the file
    when it is not a JSON object or its ``_use_default_values`` / ``_class_name`` are malformed."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid JSON file ({err})") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a scheduler config must be a JSON object, got {type(d).__name__}")
    read_scheduler_config(d, {}, str(path))  # checks the metadata keys
    return d


def scheduler_config_key(d: Mapping[str, Any]) -> str:
    """A canonical text of a scheduler config (sorted JSON, arrays as lists): equal configs give equal keys and
    different ones different keys, so caches of compiled samplers can be keyed by it."""

    def plain(value):
        if isinstance(value, (np.ndarray, np.generic)):
            return value.tolist()
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=repr)
        return repr(value)

    return json.dumps(dict(d), sort_keys=True, default=plain)


def _check_flag(value: Any, key: str, owner: str) -> bool:
    """A boolean option as diffusers tests it (``if config.key:``): true / false, and null as false."""
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {key}={value!r} must be true or false")
    return bool(value)


def _check_choice(value: Any, choices: tuple[str, ...], key: str, owner: str) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {key}={value!r} is not one of {', '.join(choices)}")
    return value


def _check_int(value: Any, key: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {key}={value!r} must be an integer >= {minimum}")
    return int(value)


def _check_bool(value: Any, key: str, owner: str) -> bool:
    return _check_flag(value, key, owner)


def _check_float(value: Any, key: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{owner}: {key}={value!r} must be a number")
    return float(value)


# ----------------------------------------------------------------------------------------------------------------
# Host tables
# ----------------------------------------------------------------------------------------------------------------


def float32_linspace(start: float, end: float, num: int) -> np.ndarray:
    """``torch.linspace(start, end, num, dtype=torch.float32)`` on CPU, bit for bit: ``[num]`` float32.

    The step is a float32 quotient; entries below ``num // 2`` are ``start + i * step`` and the rest
    ``end - (num - 1 - i) * step``, each rounded to float32 once. In float64 the product of a float32 and an
    index below 2**29 is exact, and so is its sum with the float32 end point, so one final cast is that rounding.
    """
    lo, hi = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([lo], np.float32)
    step = np.float32((hi - lo) / np.float32(num - 1))
    index = np.arange(num, dtype=np.float64)
    from_start = np.float64(lo) + np.float64(step) * index
    from_end = np.float64(hi) - np.float64(step) * (num - 1 - index)
    return np.where(index < num // 2, from_start, from_end).astype(np.float32)


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the ``squaredcos_cap_v2`` schedule (Nichol & Dhariwal's cosine alpha-bar, s = 0.008): ``[N]``.

    Computed in Python floats, as diffusers does, then rounded to float32.
    """

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, np.float32)


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Float32 betas ``[num_train_timesteps]`` equal to diffusers' for the same arguments."""
    _check_choice(beta_schedule, BETA_SCHEDULES, "beta_schedule", "make_betas")
    if beta_schedule == "linear":
        return float32_linspace(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        root = float32_linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps)
        return root * root
    return cosine_betas(num_train_timesteps)


def cumulative_alphas(betas: np.ndarray) -> np.ndarray:
    """``prod_{s<=t} (1 - beta_s)`` as float32 ``[N]``: float32 alphas, float64 running product, one rounding."""
    alphas = np.float32(1.0) - np.asarray(betas, np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int,
                     steps_offset: int = 0) -> np.ndarray:
    """The descending inference timesteps of DDIM / PNDM (diffusers' ``set_timesteps``): int64 ``[S]``.

    ``leading``: multiples of ``N // S`` from 0, plus ``steps_offset``; ``trailing``: ``round(N - k N / S) - 1``;
    ``linspace``: ``round(linspace(0, N - 1, S))``.
    """
    n, s = num_train_timesteps, num_inference_steps
    if s < 1:
        raise ValueError(f"num_inference_steps={s} must be >= 1")
    if s > n:
        raise ValueError(f"num_inference_steps={s} cannot exceed num_train_timesteps={n}")
    if spacing == "linspace":
        return np.linspace(0, n - 1, s).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(s) * (n // s)).round()[::-1].astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / s)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")


def read_spacing(c: Mapping[str, Any], num_inference_steps: Any, owner: str) -> tuple[str, int, int]:
    """``(timestep_spacing, steps_offset, num_inference_steps)`` from a read scheduler config ``c``, checked.

    diffusers reads ``steps_offset`` for "leading" spacing only (a null offset is harmless otherwise)."""
    spacing = _check_choice(c["timestep_spacing"], TIMESTEP_SPACINGS, "timestep_spacing", owner)
    offset = _check_int(c["steps_offset"], "steps_offset", owner, 0) if spacing == "leading" else 0
    steps = _check_int(num_inference_steps, "num_inference_steps", owner, 1)
    return spacing, offset, steps


def offset_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int,
                     owner: str) -> np.ndarray:
    """:func:`spaced_timesteps` (descending, int64 ``[S]``), refused where ``steps_offset`` pushes the highest one
    out of the training range."""
    timesteps = spaced_timesteps(spacing, num_train_timesteps, num_inference_steps, steps_offset)
    if timesteps.max() >= num_train_timesteps:
        raise ValueError(f"{owner}: steps_offset={steps_offset} pushes timestep {timesteps.max()} past "
                         f"num_train_timesteps={num_train_timesteps}")
    return timesteps


def transfer_alphas(alphas_cumprod: np.ndarray, start: np.ndarray, end: np.ndarray,
                    set_alpha_to_one: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(abar[start], abar[end])`` (float64 ``[S]`` each) for steps moving the sample from timestep ``start`` to
    ``end``; an ``end`` below 0 (past the last step) reads 1 with ``set_alpha_to_one``, else ``abar[0]``."""
    final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    a_end = np.where(end >= 0, alphas_cumprod[np.maximum(end, 0)], final)
    return alphas_cumprod[start], a_end


# ----------------------------------------------------------------------------------------------------------------
# The schedule pytree
# ----------------------------------------------------------------------------------------------------------------

SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
}
# What NoiseSchedule.from_diffusers reads: the table keys, and the one option that would change the table.
_NOISE_SCHEDULE_KEYS = {**SCHEDULE_DEFAULTS, "rescale_betas_zero_snr": False}


@flax.struct.dataclass
class NoiseSchedule:
    """The discrete forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``, t in ``[0, N)``.

    A pytree: ``betas`` and ``alphas_cumprod`` (float32 ``[N]``) are leaves; the training timestep count and
    the model's prediction type are static metadata.
    """

    betas: Any
    alphas_cumprod: Any
    num_train_timesteps: int = flax.struct.field(pytree_node=False, default=1000)
    prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")

    @classmethod
    def from_betas(cls, betas, prediction_type: str = "epsilon") -> "NoiseSchedule":
        betas = np.asarray(betas, np.float32)
        if betas.ndim != 1 or betas.size == 0 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a non-empty 1-D array with values in (0, 1)")
        _check_choice(prediction_type, PREDICTION_TYPES, "prediction_type", "NoiseSchedule")
        return cls(betas=betas, alphas_cumprod=cumulative_alphas(betas), num_train_timesteps=int(betas.size),
                   prediction_type=prediction_type)

    @classmethod
    def from_diffusers(cls, d: Mapping[str, Any]) -> "NoiseSchedule":
        """From a diffusers scheduler config dict (``scheduler_config.json``, or a scheduler's ``config``) with
        diffusers' reading rules (see :func:`read_scheduler_config`); the defaults, the same in every diffusers
        scheduler class used here, are diffusers'."""
        owner = "NoiseSchedule"
        c = read_scheduler_config(d, _NOISE_SCHEDULE_KEYS, owner)
        n = _check_int(c["num_train_timesteps"], "num_train_timesteps", owner, 1)
        prediction_type = _check_choice(c["prediction_type"], PREDICTION_TYPES, "prediction_type", owner)
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], np.float32)
            if betas.shape != (n,):
                raise ValueError(f"{owner}: trained_betas has shape {betas.shape}, expected ({n},) "
                                 "(num_train_timesteps)")
        else:
            schedule = _check_choice(c["beta_schedule"], BETA_SCHEDULES, "beta_schedule", owner)
            start = _check_float(c["beta_start"], "beta_start", owner)
            end = _check_float(c["beta_end"], "beta_end", owner)
            if schedule != "squaredcos_cap_v2" and not 0 < start <= end < 1:
                raise ValueError(f"{owner}: beta_start={start} / beta_end={end} must satisfy 0 < start <= end < 1")
            betas = make_betas(schedule, n, start, end)
        return cls.from_betas(betas, prediction_type)

    def host_alphas_cumprod(self) -> np.ndarray:
        """The float32 ``[N]`` table as a NumPy array (for building sampler plans outside ``jit``)."""
        return np.asarray(self.alphas_cumprod, np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Forward process and training targets (traceable)
# ----------------------------------------------------------------------------------------------------------------


def _signal_and_noise_scales(schedule: NoiseSchedule, t, ndim: int, dtype):
    """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` for ``t`` of shape ``[B]``, shaped ``[B, 1, ..., 1]``."""
    abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[jnp.asarray(t)]
    abar = abar.reshape(abar.shape + (1,) * (ndim - abar.ndim))
    return jnp.sqrt(abar).astype(dtype), jnp.sqrt(1.0 - abar).astype(dtype)


def add_noise(schedule: NoiseSchedule, x0, noise, t):
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``: x0, noise ``[B, ...]``, t int ``[B]`` (or scalar)."""
    signal, sigma = _signal_and_noise_scales(schedule, t, jnp.ndim(x0), jnp.result_type(x0))
    return signal * x0 + sigma * noise


def velocity(schedule: NoiseSchedule, x0, noise, t):
    """The v-prediction target ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (Salimans & Ho): ``[B, ...]``."""
    signal, sigma = _signal_and_noise_scales(schedule, t, jnp.ndim(x0), jnp.result_type(x0))
    return signal * noise - sigma * x0


def training_target(schedule: NoiseSchedule, x0, noise, t, prediction_type: str | None = None):
    """What the network is trained to output at ``x_t``: noise, velocity or x0, by ``prediction_type``."""
    prediction_type = prediction_type or schedule.prediction_type
    _check_choice(prediction_type, PREDICTION_TYPES, "prediction_type", "training_target")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(schedule, x0, noise, t)
    return x0
