"""Editing recordings with AudioLDM 2: the pieces ``AudioLDM2Pipeline.transfer / inpaint / super_resolve /
continue_audio`` are built from, and the chunked decoder of long clips.

    input file / array ─► mono, resampled to 16 kHz, AudioLDM's normalisation (zero mean, peak 0.5), cut / padded
        ─► log-mel [T, mel_bins] (the VAE's front end) ─► VAE encoder (posterior mode) x scaling_factor: z0
    transfer (SDEdit):  x = signal_0 z0 + noise_0 eps, then the sampler's steps from t_start on (diffusers'
                        image-to-image ``get_timesteps``: strength 0 runs no step and decodes z0 itself);
    inpaint / sr / continue: x = eps; before every step the known latent cells are re-imposed as z0 noised to that
                        step's level (AudioLDM's masked DDIM), and after the last step as z0 itself.

The known region's noise is the row's initial noise ``eps`` at every step (the "deterministic forward pass" the
original's masked DDIM marks as a TODO): a row's result depends on its own seed only, as in generation, and a DDIM
trajectory that denoises the known region perfectly stays on it.

Masks (``True`` = regenerate, the convention of diffusers' inpainting pipelines) are given as a :class:`TimeSpan`
(seconds), a :class:`FrequencyBand` (Hz), or a boolean log-mel mask ``[T, mel_bins]``; a latent cell is
regenerated when any of the ``f x f`` mel cells it decodes to is (f the VAE's scale factor, 4).

Long clips: :func:`decode_in_chunks` decodes overlapping latent windows (VAE decoder then vocoder) one at a time
inside the compiled program (``lax.scan``), each with a margin of context on both sides that is cropped away, and
cross-fades neighbours linearly in the middle of their overlap, so memory is bounded by one window. The vocoder is
convolutional: with margins wider than its receptive field its chunks equal the whole decode. The VAE decoder is not
local (GroupNorm statistics and the mid-block attention span the whole latent), so its windows are an approximation;
windows of the training length (10.24 s) keep it in the regime the VAE was trained in. ``docs/audio_to_audio.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.audio import mel as mel_lib
from audioldm2_jax.diffusion.base import Sampler, lookup
from audioldm2_jax.diffusion.ddim import DDIM_DEFAULTS, DDIMSampler
from audioldm2_jax.diffusion.dpm_solver import DPMSolverMultistepSampler
from audioldm2_jax.diffusion.pndm import PNDM_DEFAULTS, PNDMSampler
from audioldm2_jax.diffusion.schedule import NoiseSchedule, read_scheduler_config, transfer_alphas

# AudioLDM's input normalisation: the waveform's peak after removing its mean (``normalize_wav`` then the 0.5 scale).
INPUT_PEAK = 0.5
# A file whose peak (after removing its mean) is below this is silence: nothing to edit (-100 dBFS).
SILENCE_PEAK = 1e-5
# Bandwidth detection: the highest frequency whose time-averaged power is within this many dB of the loudest bin's.
BANDWIDTH_FLOOR_DB = 60.0


# ----------------------------------------------------------------------------------------------------------------
# The input recording
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputAudio:
    """A recording ready for editing: ``wave`` float32 ``[N]`` at ``sampling_rate`` (the pipeline's), mono,
    normalised; ``source_rate`` is the rate it was recorded at (its Nyquist frequency bounds its bandwidth)."""

    wave: np.ndarray
    sampling_rate: int
    source_rate: int
    name: str

    @property
    def duration_s(self) -> float:
        return self.wave.shape[0] / self.sampling_rate


def load_input(audio, sampling_rate: int, audio_sampling_rate: int | None = None, normalize: bool = True,
               name: str | None = None) -> InputAudio:
    """A path (any format :func:`audioldm2_jax.audio.io.read_audio` decodes) or an array ``[N]`` / ``[N, C]`` at
    ``audio_sampling_rate`` (default ``sampling_rate``), mixed to mono, resampled to ``sampling_rate`` and, with
    ``normalize``, given AudioLDM's normalisation (mean removed, peak :data:`INPUT_PEAK`).

    Raises ValueError naming the input: unreadable, empty, non-finite samples, silence, a bad sample rate."""
    if isinstance(audio, (str, os.PathLike)):
        name = name or os.fspath(audio)
        if audio_sampling_rate is not None:
            raise ValueError(f"{name}: audio_sampling_rate is for arrays; a file's rate is read from the file")
        try:
            wave, rate = audio_io.read_audio(audio)
        except audio_io.AudioDecodeError as err:
            raise ValueError(str(err)) from err
    else:
        name = name or "the input array"
        wave = np.asarray(audio)
        if wave.dtype.kind not in "fiu" or wave.ndim not in (1, 2) or wave.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty real waveform [N] or [N, channels], got shape "
                             f"{wave.shape} dtype {wave.dtype}")
        rate = sampling_rate if audio_sampling_rate is None else audio_sampling_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"{name}: audio_sampling_rate={rate!r} must be a positive integer (Hz)")
        wave = wave.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:
        raise ValueError(f"{name}: {bad} of {wave.size} samples are not finite (NaN / inf)")
    wave = audio_io.resample(wave, int(rate), sampling_rate).astype(np.float64)
    wave = wave - wave.mean()
    peak = float(np.abs(wave).max())
    if peak <= SILENCE_PEAK:
        raise ValueError(f"{name}: the recording is silent (peak {peak:.1e} after removing its mean): nothing to "
                         "edit")
    if normalize:
        wave = wave * (INPUT_PEAK / peak)
    return InputAudio(wave.astype(np.float32), sampling_rate, int(rate), name)


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """``wave [N]`` cut to, or padded with zeros to, ``num_samples``."""
    if wave.shape[0] >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - wave.shape[0]))


@functools.lru_cache(maxsize=None)
def _mel_basis(mel_bins: int) -> np.ndarray:
    if mel_bins == mel_lib.N_MELS:
        return mel_lib.mel_basis()
    import librosa  # slow to import (numba): only when a checkpoint has a non-standard mel width

    return np.asarray(librosa.filters.mel(sr=mel_lib.SAMPLE_RATE, n_fft=mel_lib.N_FFT, n_mels=mel_bins,
                                          fmin=mel_lib.F_MIN, fmax=mel_lib.F_MAX), np.float32)


def log_mel(wave: np.ndarray, mel_bins: int) -> np.ndarray:
    """AudioLDM's log-mel front end (:mod:`audioldm2_jax.audio.mel`) with ``mel_bins`` Slaney bins over 0-8 kHz:
    ``[..., N] -> float32 [..., N // 160, mel_bins]``; for 64 bins it is ``mel.log_mel_spectrogram``."""
    magnitude = np.abs(mel_lib.spectrum(np.asarray(wave, np.float64)))
    mel = magnitude @ _mel_basis(mel_bins).T.astype(np.float64)
    return np.log(np.maximum(mel, mel_lib.LOG_FLOOR)).astype(np.float32)


def mel_bin_frequencies(mel_bins: int) -> np.ndarray:
    """Centre frequencies (Hz) of the ``mel_bins`` Slaney mel filters over 0-8 kHz, float64 ``[mel_bins]``."""
    import librosa  # slow to import (numba): only for frequency masks

    return librosa.mel_frequencies(mel_bins + 2, fmin=mel_lib.F_MIN, fmax=mel_lib.F_MAX)[1:-1]


def detect_bandwidth(clip: InputAudio, floor_db: float = BANDWIDTH_FLOOR_DB) -> float:
    """The input's bandwidth in Hz: the highest STFT bin whose time-averaged power is within ``floor_db`` of the
    loudest bin's, and at most the Nyquist frequency of the rate it was recorded at."""
    power = (np.abs(mel_lib.spectrum(clip.wave.astype(np.float64))) ** 2).mean(axis=0)  # [513]
    freqs = np.arange(power.shape[0]) * clip.sampling_rate / mel_lib.N_FFT
    loud = np.flatnonzero(10 * np.log10(power + 1e-30) >= 10 * np.log10(power.max() + 1e-30) - floor_db)
    return float(min(freqs[loud[-1]] + clip.sampling_rate / mel_lib.N_FFT / 2, clip.source_rate / 2))


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimeSpan:
    """Regenerate ``[start_s, end_s)`` of the clip, every frequency."""

    start_s: float
    end_s: float


@dataclasses.dataclass(frozen=True)
class FrequencyBand:
    """Regenerate the mel bins whose centre lies in ``[low_hz, high_hz]``, over the whole clip."""

    low_hz: float
    high_hz: float


def check_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{what}={value!r} must be a finite number")
    return float(value)


def mel_mask(mask, frames: int, mel_bins: int, duration_s: float, seconds_per_frame: float,
             nyquist_hz: float) -> np.ndarray:
    """A :class:`TimeSpan`, a ``(start_s, end_s)`` pair, a :class:`FrequencyBand` or a boolean ``[frames,
    mel_bins]`` array as a boolean log-mel mask ``[frames, mel_bins]`` (True = regenerate). A span outside the clip,
    an empty band or an all-False mask is a ValueError."""
    if isinstance(mask, tuple) and len(mask) == 2 and not isinstance(mask, np.ndarray):
        mask = TimeSpan(*mask)
    out = np.zeros((frames, mel_bins), bool)
    if isinstance(mask, TimeSpan):
        start, end = check_number(mask.start_s, "mask start_s"), check_number(mask.end_s, "mask end_s")
        if not 0 <= start < end <= duration_s + 1e-9:
            raise ValueError(f"mask: the time span [{start:g}, {end:g}) s is not inside the clip [0, "
                             f"{duration_s:g}) s (0 <= start < end <= duration)")
        out[int(math.floor(start / seconds_per_frame)):int(math.ceil(end / seconds_per_frame - 1e-9)), :] = True
    elif isinstance(mask, FrequencyBand):
        low, high = check_number(mask.low_hz, "mask low_hz"), check_number(mask.high_hz, "mask high_hz")
        if not 0 <= low < high <= nyquist_hz:
            raise ValueError(f"mask: the band [{low:g}, {high:g}] Hz is not inside [0, {nyquist_hz:g}] Hz (the "
                             "Nyquist frequency); 0 <= low < high <= Nyquist")
        centres = mel_bin_frequencies(mel_bins)
        out[:, (centres >= low) & (centres <= high)] = True
    else:
        array = np.asarray(mask)
        if array.dtype != bool:
            raise ValueError(f"mask: expected a TimeSpan, a (start_s, end_s) pair, a FrequencyBand or a boolean "
                             f"log-mel mask [{frames}, {mel_bins}], got {type(mask).__name__} of dtype {array.dtype}")
        if array.shape != (frames, mel_bins):
            raise ValueError(f"mask: a boolean log-mel mask must be [frames, mel_bins] = [{frames}, {mel_bins}] for "
                             f"this clip, got {list(array.shape)}")
        out = array.copy()
    if not out.any():
        raise ValueError("mask: it selects nothing to regenerate (no mel frame or bin); a band narrower than one "
                         "mel filter, or an all-False array?")
    return out


def latent_mask(mel_mask_: np.ndarray, factor: int) -> np.ndarray:
    """``[T, F]`` log-mel mask -> ``[T/f, F/f]`` latent mask: a cell regenerates when any mel cell under it does."""
    t, f = mel_mask_.shape
    return mel_mask_.reshape(t // factor, factor, f // factor, factor).any(axis=(1, 3))


def edge_blend_weights(regenerate: np.ndarray, blend: int) -> np.ndarray:
    """Per-sample weight of the generated waveform ``[N]`` for a time mask ``regenerate [N]`` (bool): 1 inside the
    regenerated region, falling linearly to 0 over ``blend`` samples outside it, 0 beyond (the input there)."""
    inside = regenerate.astype(bool)
    if blend <= 0 or inside.all():
        return inside.astype(np.float32)
    idx = np.arange(inside.shape[0])
    where = np.flatnonzero(inside)
    # distance of every sample to the nearest regenerated one (0 inside)
    pos = np.searchsorted(where, idx)
    left = np.abs(idx - where[np.clip(pos - 1, 0, len(where) - 1)])
    right = np.abs(where[np.clip(pos, 0, len(where) - 1)] - idx)
    distance = np.minimum(left, right)
    return np.clip(1.0 - distance / (blend + 1.0), 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Strength: the tail of a sampler's plan
# ----------------------------------------------------------------------------------------------------------------


def check_strength(strength) -> float:
    strength = check_number(strength, "strength")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength:g} must lie in [0, 1] (0: the input unchanged, 1: the whole schedule)")
    return strength


def start_step(num_inference_steps: int, strength: float) -> int:
    """diffusers' image-to-image ``get_timesteps``: ``t_start = max(S - min(int(S * strength), S), 0)``."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_timestep, 0)


def _slice_tables(sampler: Sampler, start: int, **overrides) -> Sampler:
    """The sampler's plan from step ``start`` on: every per-step table sliced (``timesteps`` included)."""
    fields = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}
    sliced = {k: v[start:] for k, v in fields.items() if isinstance(v, np.ndarray) and v.ndim == 1
              and v.shape[0] == sampler.num_steps}
    return dataclasses.replace(sampler, **{**sliced, **overrides})


def strength_plan(sampler: Sampler, scheduler_config: Mapping[str, Any], num_inference_steps: int,
                  strength: float) -> tuple[Sampler, int]:
    """``(sampler over the plan's tail, t_start)`` for an image-to-image run at ``strength`` (0..1): the model
    is evaluated at diffusers' ``scheduler.timesteps[t_start * order:]`` (order 1 for the three samplers) and every
    step behaves as diffusers' scheduler does when its loop starts there:

    - DDIM: the same steps (``prev = t - N // S``), the table rows from ``t_start`` on;
    - DPM-Solver++: ``set_begin_index(t_start)``; its first step is first order (no history yet), the rest as in
      the whole plan (the final-step rules count the whole plan's length, as diffusers does);
    - PNDM without the Runge-Kutta warm-up (``skip_prk_steps``): its step counter starts again at the slice, so the
      first two evaluations are PLMS's start and Heun-like restart, whatever timesteps they fall on (diffusers' own
      behaviour, kept for parity);
    - PNDM with the warm-up: diffusers' warm-up always restarts from the top of the schedule (``prk_timesteps``
      indexed by its counter), which would treat the noised input as pure noise: refused for 0 < strength < 1.

    Strength 0 is an empty plan (no denoising: the input latent is decoded as it is)."""
    t_start = start_step(num_inference_steps, strength)
    if t_start == 0:
        return sampler, 0
    if t_start >= num_inference_steps:
        return _slice_tables(sampler, sampler.num_steps), t_start
    if isinstance(sampler, DDIMSampler):
        return _slice_tables(sampler, t_start), t_start
    if isinstance(sampler, DPMSolverMultistepSampler):
        first_order = lambda table: np.concatenate([[0.0], table[t_start + 1:]]).astype(table.dtype)  # noqa: E731
        return _slice_tables(sampler, t_start, orders=np.concatenate([[1], sampler.orders[t_start + 1:]]).astype(
            np.int32), coef_d1=first_order(sampler.coef_d1), d1_scale=first_order(sampler.d1_scale)), t_start
    if isinstance(sampler, PNDMSampler):
        if not sampler.skip_prk_steps:
            raise ValueError(f"strength={strength:g} with the pndm sampler's Runge-Kutta warm-up: diffusers restarts "
                             "the warm-up at the top of the schedule whatever the start, so a partly noised input "
                             "cannot be continued; use scheduler 'ddim' or 'dpmsolver++', strength 1, or a scheduler "
                             "config with skip_prk_steps=true (PLMS alone)")
        return _plms_tail(sampler, scheduler_config, num_inference_steps, t_start), t_start
    raise ValueError(f"strength is not implemented for the {sampler.name!r} sampler")


def _plms_tail(sampler: PNDMSampler, scheduler_config: Mapping[str, Any], num_inference_steps: int,
               t_start: int) -> PNDMSampler:
    """PLMS over ``timesteps[t_start:]`` with diffusers' step counter restarted: evaluation k transfers from
    ``t_k`` to ``t_k - h`` except k = 1, which restarts from the kept sample, ``t_1 + h -> t_1``."""
    c = read_scheduler_config(scheduler_config, PNDM_DEFAULTS, "PNDMSampler")
    schedule = NoiseSchedule.from_diffusers(c)
    stride = schedule.num_train_timesteps // num_inference_steps
    timesteps = sampler.timesteps[t_start:].astype(np.int64)
    current, previous = timesteps.copy(), timesteps - stride
    if len(timesteps) > 1:
        current[1], previous[1] = timesteps[1] + stride, timesteps[1]
    abar = schedule.host_alphas_cumprod().astype(np.float64)
    a_t, a_prev = transfer_alphas(abar, current, previous, bool(c["set_alpha_to_one"]))
    f32 = lambda x: np.asarray(x, np.float64).astype(np.float32)  # noqa: E731
    return dataclasses.replace(
        sampler, timesteps=timesteps.astype(np.int32), modes=np.minimum(np.arange(len(timesteps)), 4).astype(np.int32),
        coef_sample=f32(np.sqrt(a_prev / a_t)), coef_eps=f32(a_prev - a_t),
        denominator=f32(a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)), sqrt_alpha=f32(np.sqrt(a_t)),
        sqrt_one_minus_alpha=f32(np.sqrt(1 - a_t)))


def noise_levels(sampler: Sampler, scheduler_config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(signal, noise)`` float32 ``[num_steps + 1]``: the scales of ``z0`` and of the noise in the sample the
    model sees at step i (its scheduler's ``add_noise`` at ``timesteps[i]``), and ``(1, 0)`` after the last step.
    DDIM / PNDM: ``sqrt(abar_t)``, ``sqrt(1 - abar_t)``; DPM-Solver++: ``alpha_t``, ``sigma_t`` from its float32
    sigma table, as its ``add_noise`` (the config read with the sampler class's defaults, as the sampler reads it)."""
    if isinstance(sampler, DPMSolverMultistepSampler):
        signal, noise = sampler.x0_alpha, sampler.x0_sigma
    else:
        defaults = PNDM_DEFAULTS if isinstance(sampler, PNDMSampler) else DDIM_DEFAULTS
        abar = NoiseSchedule.from_diffusers(read_scheduler_config(scheduler_config, defaults, "noise_levels"))
        abar = abar.host_alphas_cumprod().astype(np.float64)[sampler.timesteps]
        signal, noise = np.sqrt(abar), np.sqrt(1.0 - abar)
    return (np.concatenate([signal, [1.0]]).astype(np.float32), np.concatenate([noise, [0.0]]).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# The edit inside the compiled loop
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EditPlan:
    """What the compiled sampling program does with the input latent (static: part of the program).

    ``kind``: "transfer" (start from ``signal[0] z0 + noise[0] eps``, no mask) or "masked" (start from ``eps``,
    re-impose the known cells before every step). ``signal`` / ``noise``: :func:`noise_levels` of the sampler the
    program runs. ``key``: what identifies it in the pipeline's compile cache."""

    kind: str
    signal: np.ndarray
    noise: np.ndarray
    key: tuple


class Reimposed:
    """A sampler (duck-typed for :func:`audioldm2_jax.diffusion.sample_loop`) whose every step ends by re-imposing
    the known latent cells at the level of the next evaluation: ``where(keep, signal[i+1] z0 + noise[i+1] eps, x)``
    (after the last step ``z0`` itself). Built inside the traced program: ``keep [B, h, w, 1]`` (True = known),
    ``known``, ``eps`` ``[B, h, w, C]`` are traced arrays."""

    def __init__(self, sampler: Sampler, plan: EditPlan, keep, known, eps):
        self.sampler, self.plan, self.keep, self.known, self.eps = sampler, plan, keep, known, eps
        self.timesteps, self.num_steps = sampler.timesteps, sampler.num_steps

    def impose(self, x, index):
        target = lookup(self.plan.signal, index) * self.known + lookup(self.plan.noise, index) * self.eps
        return jnp.where(self.keep, target.astype(x.dtype), x)

    def scale_model_input(self, sample, step_index):
        return self.sampler.scale_model_input(sample, step_index)

    def init_state(self, sample):
        return self.sampler.init_state(sample)

    def step(self, state, model_output, step_index, sample, key=None):
        prev, state = self.sampler.step(state, model_output, step_index, sample, key)
        return self.impose(prev, step_index + 1), state


def edit_start(sampler: Sampler, plan: EditPlan | None, eps, known, keep):
    """``(x_start, loop sampler)`` of the compiled loop: the plain start ``eps * init_noise_sigma`` without an edit;
    the noised input for a transfer; ``eps`` with the known cells re-imposed (and a re-imposing sampler) for a
    masked edit."""
    if plan is None:
        return eps * sampler.init_noise_sigma, sampler
    if plan.kind == "transfer":
        return (lookup(plan.signal, 0) * known + lookup(plan.noise, 0) * eps).astype(eps.dtype), sampler
    loop = Reimposed(sampler, plan, keep, known, eps)
    return loop.impose(eps * sampler.init_noise_sigma, 0), loop


# ----------------------------------------------------------------------------------------------------------------
# Chunked decoding of long clips
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """Overlapping windows over ``length`` latent frames, all in latent frames (host ints):

    ``window``: frames each window keeps; ``margin``: context decoded on each side and cropped away;
    ``crossfade``: the linear cross-fade between neighbours, centred in their overlap. ``starts[k]``: first kept
    frame of window k; ``decode_starts[k]``: first decoded frame (the margin, clamped inside the clip);
    ``fades[k]``: centre of the cross-fade with window k + 1."""

    length: int
    window: int
    margin: int
    crossfade: int
    starts: tuple[int, ...]
    decode_starts: tuple[int, ...]
    fades: tuple[float, ...]

    @property
    def decode_length(self) -> int:
        return min(self.window + 2 * self.margin, self.length)


def chunk_plan(length: int, window: int, margin: int, crossfade: int) -> ChunkPlan | None:
    """The windows for ``length`` latent frames, None when one window covers the clip (decode it whole). Windows are
    evenly spaced so that neighbours overlap by at least ``crossfade`` frames; ``crossfade <= window / 3`` keeps two
    cross-fades from overlapping."""
    if window < 1 or margin < 0 or crossfade < 1 or 3 * crossfade > window:
        raise ValueError(f"chunked decoding: window={window}, margin={margin}, crossfade={crossfade} latent frames; "
                         "need window >= 1, margin >= 0, 1 <= crossfade <= window / 3")
    if length <= window + 2 * margin:
        return None
    count = int(math.ceil((length - crossfade) / (window - crossfade)))
    starts = np.round(np.linspace(0, length - window, count)).astype(int)
    decode = np.clip(starts - margin, 0, length - min(window + 2 * margin, length))
    fades = [(starts[k + 1] + starts[k] + window) / 2 for k in range(count - 1)]
    return ChunkPlan(length, window, margin, crossfade, tuple(int(s) for s in starts), tuple(int(s) for s in decode),
                     tuple(float(c) for c in fades))


def _fade_weights(n: int, offset, left_centre, right_centre, fade: float):
    """Weights ``[n]`` of a window whose first kept unit is at global position ``offset``: a linear ramp up over
    ``[left_centre - fade / 2, + fade)`` and down over ``[right_centre - fade / 2, + fade)`` (positions in units)."""
    g = offset + jnp.arange(n, dtype=jnp.float32)
    up = jnp.clip((g - (left_centre - fade / 2) + 0.5) / fade, 0.0, 1.0)
    down = jnp.clip(((right_centre + fade / 2) - g - 0.5) / fade, 0.0, 1.0)
    return jnp.minimum(up, down)


def decode_in_chunks(decode: Callable, latents, plan: ChunkPlan, frames_per_latent: int, samples_per_frame: int):
    """Decodes ``latents [B, L, W, C]`` window by window (``lax.scan``: one window's activations live at a time):
    ``decode(z [B, D, W, C]) -> (log_mel [B, D * f, F], wave [B, >= D * f * hop])``. Returns the cross-faded
    ``(log_mel [B, L * f, F], wave [B, L * f * hop])``."""
    f, hop = frames_per_latent, samples_per_frame
    b, length = latents.shape[:2]
    big = float(10 * length)  # the first window has nothing to fade in from, the last nothing to fade out to
    lefts = np.array([-big] + list(plan.fades), np.float32)
    rights = np.array(list(plan.fades) + [big], np.float32)
    xs = (np.asarray(plan.starts, np.int32), np.asarray(plan.decode_starts, np.int32), lefts, rights)
    mel_shape = jax.eval_shape(decode, jax.ShapeDtypeStruct((b, plan.decode_length) + latents.shape[2:],
                                                            latents.dtype))[0]
    out_mel = jnp.zeros((b, length * f, mel_shape.shape[-1]), jnp.float32)
    out_wave = jnp.zeros((b, length * f * hop), jnp.float32)

    def body(carry, x):
        out_mel, out_wave = carry
        start, decode_start, left, right = x
        z = jax.lax.dynamic_slice_in_dim(latents, decode_start, plan.decode_length, axis=1)
        mel, wave = decode(z)
        crop = start - decode_start
        mel = jax.lax.dynamic_slice_in_dim(mel.astype(jnp.float32), crop * f, plan.window * f, axis=1)
        wave = jax.lax.dynamic_slice_in_dim(wave.astype(jnp.float32), crop * f * hop, plan.window * f * hop, axis=1)
        w_mel = _fade_weights(plan.window * f, start * f, left * f, right * f, plan.crossfade * f)
        w_wave = _fade_weights(plan.window * f * hop, start * f * hop, left * f * hop, right * f * hop,
                               plan.crossfade * f * hop)
        old_mel = jax.lax.dynamic_slice_in_dim(out_mel, start * f, plan.window * f, axis=1)
        old_wave = jax.lax.dynamic_slice_in_dim(out_wave, start * f * hop, plan.window * f * hop, axis=1)
        out_mel = jax.lax.dynamic_update_slice_in_dim(out_mel, old_mel + w_mel[None, :, None] * mel, start * f, 1)
        out_wave = jax.lax.dynamic_update_slice_in_dim(out_wave, old_wave + w_wave[None] * wave, start * f * hop, 1)
        return (out_mel, out_wave), None

    (out_mel, out_wave), _ = jax.lax.scan(body, (out_mel, out_wave), xs)
    return out_mel, out_wave


def as_list(audio) -> list:
    """One input (a path or an array) or a list of them."""
    if isinstance(audio, (list, tuple)):
        return list(audio)
    return [audio]


__all__ = ["ChunkPlan", "EditPlan", "FrequencyBand", "InputAudio", "Reimposed", "TimeSpan", "check_strength",
           "chunk_plan", "decode_in_chunks", "detect_bandwidth", "edge_blend_weights", "edit_start", "fit_length",
           "latent_mask", "load_input", "log_mel", "mel_bin_frequencies", "mel_mask", "noise_levels", "start_step",
           "strength_plan"]
