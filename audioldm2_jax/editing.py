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

Long clips: the VAE decoder is not local along time (GroupNorm statistics and the mid-block attention span the
whole latent), so it is decoded exactly, layer by layer over windows (:func:`audioldm2_jax.models.vae_streaming.
streamed_decode`); the vocoder is local, and :func:`decode_in_chunks` runs it over windows with margins of context
inside a compiled program. ``docs/audio_to_audio.md``.
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
from audioldm2_jax.diffusion.pndm import PNDM_DEFAULTS, RUNGE_KUTTA_MODES, PNDMSampler
from audioldm2_jax.diffusion.schedule import NoiseSchedule, read_scheduler_config

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
    - PNDM: its step counter starts again at the slice (diffusers' own behaviour, kept for parity). Without the
      Runge-Kutta warm-up (``skip_prk_steps``) the first two evaluations are PLMS's start and Heun-like restart,
      whatever timesteps they fall on; with it, the slice's first twelve evaluations are the warm-up's stages,
      each transfer starting from the top of the whole schedule as ``step_prk`` does (the noised input is treated
      as if it were at the top: diffusers' result, which DDIM or DPM-Solver++ avoid).

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
        return _pndm_tail(scheduler_config, num_inference_steps, t_start), t_start
    raise ValueError(f"strength is not implemented for the {sampler.name!r} sampler")


def _pndm_tail(scheduler_config: Mapping[str, Any], num_inference_steps: int, t_start: int) -> PNDMSampler:
    """PNDM over diffusers' slice ``timesteps[t_start:]`` with its step counter restarted at the slice: evaluation
    ``k`` combines the predictions as step ``k`` of the whole plan does (``modes[k]``), at the slice's ``k``-th
    timestep. Transfers keep the whole plan's step ``k`` offsets (PLMS: ``t -> t - h``, and ``t + h -> t`` at
    ``k = 1``, the Heun-like restart; Runge-Kutta: to ``t`` or ``t - h/2``), except that a Runge-Kutta stage
    always starts from the top of the whole schedule (``PNDMScheduler.step_prk`` reads ``prk_timesteps`` by its
    counter, whatever timestep it is given)."""
    c, schedule, (timesteps, current, previous, modes) = PNDMSampler.plan(scheduler_config, num_inference_steps)
    tail = timesteps[t_start:].astype(np.int64)
    n = len(tail)
    runge_kutta = np.isin(modes[:n], RUNGE_KUTTA_MODES)
    current_tail = np.where(runge_kutta, current[:n], tail + current[:n] - timesteps[:n])
    previous_tail = tail - (timesteps[:n] - previous[:n])
    return PNDMSampler.from_plan(c, schedule, tail, current_tail, previous_tail, modes[:n])


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
    """Windows over ``length`` latent frames, in latent frames (host ints): ``window`` frames kept from each,
    ``margin`` frames of context decoded on each side and cropped away. ``starts[k]``: first kept frame of window k
    (every ``window`` frames; the last window ends at the clip's end, overlapping its neighbour, so that all have
    one shape); ``decode_starts[k]``: its first decoded frame (the margin, clamped inside the clip)."""

    length: int
    window: int
    margin: int
    starts: tuple[int, ...]
    decode_starts: tuple[int, ...]

    @property
    def decode_length(self) -> int:
        return min(self.window + 2 * self.margin, self.length)


def chunk_plan(length: int, window: int, margin: int) -> ChunkPlan | None:
    """The windows for ``length`` latent frames, None when one window covers the clip (decode it whole)."""
    if window < 1 or margin < 0:
        raise ValueError(f"chunked decoding: window={window}, margin={margin} latent frames; need window >= 1, "
                         "margin >= 0")
    if length <= window:
        return None
    starts = [min(k * window, length - window) for k in range(-(-length // window))]
    decode_length = min(window + 2 * margin, length)
    decode = [min(max(s - margin, 0), length - decode_length) for s in starts]
    return ChunkPlan(length, window, margin, tuple(starts), tuple(decode))


def decode_in_chunks(decode: Callable, x, plan: ChunkPlan, frames_per_latent: int, samples_per_frame: int):
    """Applies a decoder that is local along time (its output at a frame depends on the input within ``plan.margin``
    latent frames of it: the vocoder) window by window (``lax.scan``: one window's activations live at a time).
    ``x [B, plan.length * frames_per_latent, ...]``; ``decode(x window [B, D * frames_per_latent, ...]) -> [B, >=
    D * frames_per_latent * samples_per_frame, ...]`` (D = ``plan.decode_length``). Each window's kept part is
    written in place, so with margins as wide as the decoder's reach the result is the whole decode's:
    ``[B, plan.length * frames_per_latent * samples_per_frame, ...]``."""
    f, per = frames_per_latent, frames_per_latent * samples_per_frame
    out_shape = jax.eval_shape(decode, jax.ShapeDtypeStruct((x.shape[0], plan.decode_length * f) + x.shape[2:],
                                                            x.dtype))
    out = jnp.zeros((x.shape[0], plan.length * per) + out_shape.shape[2:], out_shape.dtype)
    xs = (np.asarray(plan.starts, np.int32), np.asarray(plan.decode_starts, np.int32))

    def body(out, step):
        start, decode_start = step
        y = decode(jax.lax.dynamic_slice_in_dim(x, decode_start * f, plan.decode_length * f, axis=1))
        y = jax.lax.dynamic_slice_in_dim(y, (start - decode_start) * per, plan.window * per, axis=1)
        return jax.lax.dynamic_update_slice_in_dim(out, y, start * per, axis=1), None

    return jax.lax.scan(body, out, xs)[0]


def as_list(audio) -> list:
    """One input (a path or an array) or a list of them."""
    if isinstance(audio, (list, tuple)):
        return list(audio)
    return [audio]


__all__ = ["ChunkPlan", "EditPlan", "FrequencyBand", "InputAudio", "Reimposed", "TimeSpan", "check_strength",
           "chunk_plan", "decode_in_chunks", "detect_bandwidth", "edge_blend_weights", "edit_start", "fit_length",
           "latent_mask", "load_input", "log_mel", "mel_bin_frequencies", "mel_mask", "noise_levels", "start_step",
           "strength_plan"]
