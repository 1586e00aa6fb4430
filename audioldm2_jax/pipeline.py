"""AudioLDM 2 inference: prompts -> waveforms.

    prompt ─────────► CLAP text tower ───────► [R, 1, 512] ──┐
    prompt ─────────► FLAN-T5 encoder ───────► [R, L, 1024] ─┼─► projection ─► GPT-2, max_new_tokens greedy
    (speech: transcription ─► VITS phoneme encoder [R, L, 192])   │               steps ─► LOA [R, N, 768]
                                                                  │                          │
    noise [Bn, T/4, 16, 8] ─► T-UNet (LOA stream; T5 stream + mask) x sampler steps, CFG ◄──┘
        ─► / scaling_factor ─► VAE decoder ─► log-mel [Bn, T, 64] ─► HiFi-GAN ─► waveforms [Bn, samples]
        ─► (n > 1 per prompt) CLAP audio tower ─► each prompt's waveforms ranked by their score to that prompt

R is the text batch: ``[negative prompts; prompts]`` (2B rows) with classifier-free guidance, B without. Every row
of the text side is computed once per prompt and repeated for its n waveforms (Bn rows) inside the sampling program.

Compiled pieces (each lowered and compiled ahead of time, once, then cached on the pipeline):
- ``encode``: CLAP + T5/VITS + projection + GPT-2 generation, per (text batch, CLAP length, T5 length). It
  zero-pads the T5 context (mask 0) to a fixed length, so that prompt lengths do not reach the sampling program's
  key: a masked key gets a bias of -10000 in the UNet's cross-attention, so its softmax weight is exactly 0 in
  float32 and the padding changes nothing;
- ``sample``: the whole denoising loop (``lax.fori_loop`` over the sampler's steps, CFG as one UNet call on the
  concatenated ``[uncond; cond]`` batch), the VAE decode and the vocoder, per (batch, latent length, steps,
  sampler, CFG on/off); the guidance scale is an argument, not a constant. It takes the conditioning as ``encode``
  left it on the devices (R rows) and repeats each row for its n waveforms itself;
- ``clap_audio``: CLAP audio embeddings for ranking, per batch; ``noise``: the initial latents, per batch.

Numerics follow diffusers' ``AudioLDM2Pipeline`` (transformers 5, diffusers 0.42), including its quirks: the
negative T5 prompt is padded / truncated to the positive prompts' length; the speech models' negative phoneme
stream is all zeros with a zero mask; the LOA positions run on contiguously after the (padded) prompt. Where the
reference has a bug it is fixed and said so: waveforms are ranked against their own prompt only.

Audio to audio (``transfer``, ``inpaint``, ``super_resolve``, ``continue_audio``; :mod:`audioldm2_jax.editing`,
docs/audio_to_audio.md): the input's VAE latent enters the same ``sample`` program, as the noised start of a
transfer (a sampler plan cut at diffusers' image-to-image ``t_start``) or as the known cells re-imposed inside the
loop; clips longer than ``decode_chunking.above_s`` leave the program as latents and are decoded exactly after it,
window by window (:class:`DecodeChunking`).

Noise: prompt p's k-th waveform starts from ``normal(fold_in(key(seed_p), k))`` (``initial_latents``, drawn in a
small compiled function of its own), so a clip depends on its own seed only, not on the batch it was generated in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax import components, editing
from audioldm2_jax.audio import mel as mel_lib
from audioldm2_jax.audio.clap_features import ClapFeatureConfig, clap_audio_inputs, resample_for_clap
from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.convert import clap as clap_convert
from audioldm2_jax.convert.weights import CheckpointError, resolve_checkpoint
from audioldm2_jax.diffusion import (
    SAMPLER_NAMES, Sampler, default_sampler_name, load_scheduler_config, make_sampler, sample_loop,
    scheduler_config_key)
from audioldm2_jax.models.clap import ClapConfig, ClapModel, own_prompt_scores, rank_waveforms
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, generate_loa
from audioldm2_jax.models.layers import resolve_attention, use_attention
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, context_dims
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig
from audioldm2_jax.models.vae_streaming import streamed_decode
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder, mark_end_of_phonemes
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig
from audioldm2_jax.parallel.partitioning import (
    DEFAULT_RULES, LogicalRules, batch_axes, batch_sharding, batch_size_divisor, logical_to_shardings)

logger = logging.getLogger(__name__)

Dtype = Any

# Tokenizer classes a checkpoint's model_index.json may name (transformers 5 keeps the *Fast names as aliases).
TOKENIZER_CLASSES = ("RobertaTokenizer", "RobertaTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "VitsTokenizer",
                     "AutoTokenizer")
# Beyond this the tokenizer's model_max_length is the "unset" sentinel, not a real limit.
_MAX_REAL_TOKENIZER_LENGTH = 4096


# ----------------------------------------------------------------------------------------------------------------
# A validated request
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EditInputs:
    plan: editing.EditPlan
    known: np.ndarray  # [Bn, T/f, W, C] the input's scaled VAE latents, one row per output row
    keep: np.ndarray | None  # [Bn, T/f, W, 1] bool, True = known (re-imposed); None for a transfer


@dataclasses.dataclass(frozen=True)
class _Request:
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] | None  # None without guidance
    transcriptions: tuple[str, ...] | None  # speech models only
    num_waveforms: int
    frames: int  # mel frames T (a multiple of the VAE's scale factor)
    num_samples: int  # output length after the cut to the requested duration
    sampler: Sampler
    sampler_key: tuple  # what identifies the sampler's tables: (name, steps, eta, scheduler config)
    guidance_scale: float
    seeds: tuple[int, ...]  # one per prompt, reduced to uint32
    latents: np.ndarray | None  # [Bn, T/f, W, C] channels-last, float32
    max_new_tokens: int
    tokens: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # AudioLDM2Pipeline.tokenize's output
    loa: np.ndarray | None = None  # [B, max_new_tokens, D] float32: the prompts' LOA, given instead of generated
    edit: _EditInputs | None = None  # audio-to-audio: the input latents and what the loop does with them

    @property
    def cfg(self) -> bool:
        return self.negative_prompts is not None

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.num_waveforms


@dataclasses.dataclass
class Timings:
    """Wall time of one call, in seconds. ``compile`` is ahead-of-time lowering + compilation of whatever was not
    cached yet; the other entries exclude it."""

    compile: float = 0.0
    encode: float = 0.0
    sample: float = 0.0
    rank: float = 0.0
    total: float = 0.0

    @property
    def run(self) -> float:
        return self.total - self.compile


@dataclasses.dataclass(frozen=True)
class Generation:
    """What :meth:`AudioLDM2Pipeline.generate` returns.

    Attributes:
      waveforms: float32 ``[B * n, samples]``; the n waveforms of prompt p are rows ``p * n .. p * n + n - 1``, best
        CLAP match first when n > 1.
      log_mel: float32 ``[B * n, frames, mel_bins]``, the VAE's output (the vocoder's input), same row order.
      ranking: ``[B * n]``, the order CLAP's ranking put the rows in, as indices of the rows as sampled (None when
        n = 1).
      timings: wall times of the call.
    """

    waveforms: np.ndarray
    log_mel: np.ndarray
    ranking: np.ndarray | None
    timings: Timings


@dataclasses.dataclass(frozen=True)
class Edit(Generation):
    """What the audio-to-audio methods (``transfer``, ``inpaint``, ``super_resolve``, ``continue_audio``) return:
    a :class:`Generation` and what it was made from.

    Attributes (beyond :class:`Generation`'s; I inputs, one per prompt or one for all):
      latents: float32 ``[B * n, C, T/f, W]`` the final latents (reference layout), same row order as waveforms.
      input_latents: float32 ``[I, C, T/f, W]`` the input's scaled VAE latents (zeros beyond a continued prefix).
      input_waveform: float32 ``[I, samples]`` the input as edited: mono, 16 kHz, normalised, cut / padded.
      input_log_mel: float32 ``[I, frames, mel_bins]`` its log-mel (the VAE encoder's input).
      regenerate: bool ``[I, T/f, W]`` the latent cells that were generated (None for a transfer).
      start_step: the first step of the sampler's plan that ran (a transfer's ``t_start``; 0 otherwise).
      cutoff_hz: per input, the bandwidth above which ``super_resolve`` regenerated (None otherwise).
    """

    latents: np.ndarray = None
    input_latents: np.ndarray = None
    input_waveform: np.ndarray = None
    input_log_mel: np.ndarray = None
    regenerate: np.ndarray | None = None
    start_step: int = 0
    cutoff_hz: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class DecodeChunking:
    """How clips longer than ``above_s`` (default: three windows) are decoded, so that device memory stays bounded
    by a window's: the sampling program returns their latents, then the VAE decoder runs layer by layer over
    windows of ``window_s`` (default: the checkpoint's default duration, 10.24 s) with the whole clip's GroupNorm
    statistics and attention (:func:`audioldm2_jax.models.vae_streaming.streamed_decode`), and the vocoder over the
    same windows with ``margin_s`` of context decoded on each side and cropped (:func:`audioldm2_jax.editing.
    decode_in_chunks`; at least the vocoder's reach, :func:`vocoder_reach_frames`, else a ValueError). Both are the
    whole decode's result up to float32 rounding. Set ``AudioLDM2Pipeline.decode_chunking`` to another instance (or
    None: always decode whole, inside the sampling program)."""

    window_s: float | None = None
    margin_s: float = 1.28
    above_s: float | None = None


def vocoder_reach_frames(config: VocoderConfig) -> int:
    """An upper bound on the mel frames on each side of a frame that HiFi-GAN's output samples there depend on:
    ``conv_post`` (3 samples), then per stage, last first, the widest residual block (per dilation ``d``:
    ``(k - 1) / 2 * (d + 1)`` samples) and the transposed convolution (``R`` output samples reach ``(R + k) / u``
    input ones), then ``conv_pre`` (3 frames)."""
    reach = 3
    for u, k in reversed(tuple(zip(config.upsample_rates, config.upsample_kernel_sizes))):
        reach += max(sum((rk - 1) // 2 * (d + 1) for d in dil)
                     for rk, dil in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
        reach = -(-(reach + k) // u)
    return reach + 3


@dataclasses.dataclass(frozen=True)
class CompiledSampling:
    """The sampling program :meth:`AudioLDM2Pipeline.compile_sampling` compiled: ``compiled`` (its
    ``memory_analysis`` / ``cost_analysis``), the abstract ``args`` it was compiled for (``params`` first), the clip's
    mel ``frames``, whether it runs classifier-free guidance (``cfg``: the UNet sees twice the rows), the denoising
    loop's iterations (``loop_steps``: one UNet call each) and the decoding windows (``chunks``; None: the clip is
    decoded whole)."""

    compiled: Any
    args: tuple
    frames: int
    cfg: bool
    loop_steps: int
    chunks: editing.ChunkPlan | None
    compile_seconds: float


def _mesh_platform(mesh: jax.sharding.Mesh | None) -> str:
    """The platform of ``mesh``'s devices, else of the default device ("cpu", "gpu", "tpu")."""
    return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform


class NonFiniteOutputError(FloatingPointError):
    """The sampling program returned NaN or infinite values: the model diverged (a NaN weight, float16 overflow,
    latents too large). Raised by ``AudioLDM2Pipeline.generate`` / ``__call__`` instead of returning them.

    Attributes:
      prompts: indices (into the call's prompt list) of the prompts with at least one non-finite waveform or
        log-mel; every waveform of the other prompts is finite.
      rows: indices of the non-finite rows of ``waveforms`` (``p * n + k``).
      waveforms, log_mel: float32 ``[B * n, samples]`` and ``[B * n, frames, mel_bins]``, what the call would have
        returned, non-finite rows included (within a prompt whose waveforms are all finite, in CLAP rank order).
      timings: wall times of the call.
    """

    def __init__(self, message: str, prompts: Sequence[int], rows: Sequence[int], waveforms: np.ndarray,
                 log_mel: np.ndarray, timings: Timings | None = None):
        super().__init__(message)
        self.prompts, self.rows = tuple(int(p) for p in prompts), tuple(int(r) for r in rows)
        self.waveforms, self.log_mel = waveforms, log_mel
        self.timings = timings or Timings()


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


class AudioLDM2Pipeline:
    """Text (and, for the speech checkpoints, transcription) to 16 kHz audio with AudioLDM 2.

    ``AudioLDM2Pipeline.from_pretrained(path_or_hub_id)`` reads a diffusers-layout checkpoint (published, or
    exported by the trainer); ``pipe(prompts, ...) -> float32 [B * n, samples]``; ``pipe.generate(prompts, ...)``
    returns a :class:`Generation` (waveforms, log-mel, ranking, timings). See ``generate``.

    ``dtype`` is the compute dtype of the UNet, the VAE and the vocoder (the 200-step loop and the decoders);
    parameters stay float32 and the text side (CLAP, T5 / VITS, projection, GPT-2: once per call) computes in
    float32 whatever ``dtype`` is (FLAN-T5 overflows in float16, and the LOA feeds every UNet step).

    With ``mesh`` (see ``parallel.partitioning.make_mesh``), every parameter is placed by its logical axis names
    under ``rules`` and the batch is split over the mesh axes of ``act_batch`` when they divide it (otherwise it is
    replicated, with a log line saying so).

    Recordings are edited with :meth:`transfer` (text-guided style transfer), :meth:`inpaint`,
    :meth:`super_resolve` and :meth:`continue_audio`; clips longer than ``decode_chunking.above_s`` are decoded
    exactly over windows, with device memory bounded by a window's (:class:`DecodeChunking`).
    """

    decode_chunking: DecodeChunking | None = DecodeChunking()

    def __init__(self, *, unet: tuple[UNetConfig, dict], vae: tuple[VAEConfig, dict],
                 vocoder: tuple[VocoderConfig, dict], text_encoder: tuple[ClapConfig, dict],
                 text_encoder_2: tuple[T5Config | VitsTextConfig, dict],
                 projection_model: tuple[ProjectionConfig, dict], language_model: tuple[GPT2Config, dict],
                 tokenizer, tokenizer_2,
                 scheduler_config: Mapping[str, Any], clap_features: ClapFeatureConfig | None = None,
                 unet_sample_size: int | None = None, dtype: Dtype = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                 rules: LogicalRules = DEFAULT_RULES, scheduler_class: str | None = None, attention: str = "auto"):
        """Each model argument is ``(config, params)``, the parameter tree as ``components.load`` returns it
        (CLAP's may hold the text tower only). ``scheduler_class``: the checkpoint's diffusers scheduler class, whose
        sampler runs by default (default: the config's ``_class_name``; DDIM when it names none). ``attention``: the
        attention implementation (``models.layers.ATTENTION_IMPLEMENTATIONS``), or "auto": the one that suits the
        platform the pipeline runs on (its mesh's devices, else the default device)."""
        self.dtype = dtype
        self.attention = attention
        resolve_attention(attention, "cpu")  # a bad name fails here, not at the first call
        self.unet_config, self.vae_config = unet[0], vae[0]
        self.vocoder_config, self.clap_config = vocoder[0], text_encoder[0]
        self.text_encoder_2_config, self.projection_config = text_encoder_2[0], projection_model[0]
        self.language_model_config = language_model[0]
        self.is_speech = isinstance(self.text_encoder_2_config, VitsTextConfig)

        self.unet = AudioLDM2UNet(self.unet_config, dtype=dtype)
        self.vae = AutoencoderKL(self.vae_config, dtype=dtype)
        self.vocoder = HifiGanVocoder(self.vocoder_config, dtype=dtype)
        self.clap = ClapModel(self.clap_config)
        self.text_encoder_2 = (VitsTextEncoder(self.text_encoder_2_config) if self.is_speech
                               else T5EncoderModel(self.text_encoder_2_config))
        self.projection = AudioLDM2ProjectionModel(self.projection_config)
        self.language_model = GPT2Model(self.language_model_config)

        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.scheduler_config = dict(scheduler_config)
        self.scheduler_class = scheduler_class or self.scheduler_config.get("_class_name")
        self.clap_features = clap_features or ClapFeatureConfig()
        self.unet_sample_size = unet_sample_size
        self.context_dims = context_dims(self.unet_config)
        self._check_components()

        self.vae_scale_factor = self.vae_config.downsample_factor
        self.hop_length = self.vocoder_config.hop_length
        self.sampling_rate = self.vocoder_config.sampling_rate
        # The reference's arithmetic, kept in float64 so that durations round to the same frame count.
        self.seconds_per_frame = float(self.hop_length) / float(self.sampling_rate)

        self.mesh, self.rules = mesh, tuple(rules)
        if jnp.dtype(dtype) == jnp.float16 and _mesh_platform(mesh) == "cpu":
            raise ValueError("dtype float16 is not supported on CPU: XLA:CPU has no float16 matrix product with "
                             "float32 accumulation (the attention's logits); use float32 or bfloat16")
        variables = {name: {"params": value[1]} for name, value in dict(
            unet=unet, vae=vae, vocoder=vocoder, clap=text_encoder, text_encoder_2=text_encoder_2,
            projection=projection_model, language_model=language_model).items()}
        # A trained export's CLAP is the text tower alone: no audio embeddings, so no ranking. ClapModel's setup
        # still declares the two logit scales; they get their initial value (the text path never reads them).
        self.has_clap_audio = "audio_model" in variables["clap"]["params"]
        if not self.has_clap_audio:
            scale = np.float32(math.log(self.clap_config.logit_scale_init_value))
            variables["clap"] = {"params": {"logit_scale_a": scale, "logit_scale_t": scale,
                                            **variables["clap"]["params"]}}
        self.params = self._place_params(variables)
        self._compiled: dict[tuple, Callable] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype: Dtype = jnp.float32,
                        mesh: jax.sharding.Mesh | None = None, rules: LogicalRules = DEFAULT_RULES,
                        attention: str = "auto") -> "AudioLDM2Pipeline":
        """Reads a diffusers-layout pipeline folder: a local directory, a hub id such as ``cvssp/audioldm2``, the
        ``export/`` folder the trainer writes, or a training workdir holding one. It has ``model_index.json`` and
        the folders ``unet``, ``vae``, ``vocoder``, ``text_encoder`` (CLAP), ``text_encoder_2`` (T5 or VITS),
        ``projection_model``, ``language_model`` (GPT-2), ``tokenizer``, ``tokenizer_2``, ``scheduler`` and
        optionally ``feature_extractor``; each network is read through its :mod:`audioldm2_jax.components` entry.
        Tokenizers are transformers' classes named in ``model_index.json``. ``dtype``, ``mesh``, ``rules`` and
        ``attention``: see the constructor. Raises ``CheckpointError`` naming the missing or inconsistent piece.

        A CLAP with the text tower only (what the trainer exports: it never trains the audio branch) gives a
        pipeline without CLAP ranking: more than one waveform per prompt is then an error."""
        root = resolve_checkpoint(path_or_hub_id)
        if not (root / "model_index.json").is_file() and (root / "export").is_dir():
            root = root / "export"  # a training workdir
        index_path = root / "model_index.json"
        if not index_path.is_file():
            present = [c.folder for c in components.COMPONENTS.values() if (root / c.folder / "config.json").is_file()]
            hint = (f" (it holds {', '.join(present)}: a training stage's export becomes a whole pipeline once every "
                    "network is in it, at the joint stage)" if present else "")
            raise CheckpointError(f"{root} has no model_index.json: not a diffusers-layout pipeline checkpoint{hint}")
        index = json.loads(index_path.read_text())
        for folder in ("unet", "vae", "vocoder", "text_encoder", "text_encoder_2", "projection_model",
                       "language_model", "tokenizer", "tokenizer_2", "scheduler"):
            if not (root / folder).is_dir():
                raise CheckpointError(f"{root}: missing component folder {folder}/")
        pair = {name: components.load(name, root)[:2]  # (config, params)
                for name in components.PIPELINE_COMPONENTS + (components.text_encoder_2_name(root),)}

        scheduler_path = root / "scheduler" / "scheduler_config.json"
        if not scheduler_path.is_file():
            raise CheckpointError(f"missing {scheduler_path}")
        feature_path = root / "feature_extractor" / "preprocessor_config.json"
        try:
            clap_features = (ClapFeatureConfig.from_preprocessor_config(json.loads(feature_path.read_text()))
                             if feature_path.is_file() else ClapFeatureConfig())
        except ValueError as err:
            raise CheckpointError(f"{feature_path}: {err}") from err

        return cls(
            unet=pair["unet"], vae=pair["vae"], vocoder=pair["vocoder"], text_encoder=pair["clap"],
            text_encoder_2=pair.get("vits") or pair["t5"], projection_model=pair["projection"],
            language_model=pair["gpt2"], tokenizer=_load_tokenizer(root, "tokenizer", index),
            tokenizer_2=_load_tokenizer(root, "tokenizer_2", index),
            scheduler_config=_read_scheduler_config(scheduler_path), clap_features=clap_features,
            unet_sample_size=pair["unet"][0].sample_size, dtype=dtype, mesh=mesh, rules=rules,
            scheduler_class=_index_class(index, "scheduler"), attention=attention)

    def on_mesh(self, mesh: jax.sharding.Mesh | None, rules: LogicalRules = DEFAULT_RULES) -> "AudioLDM2Pipeline":
        """The same pipeline (shared configs, tokenizers and weights) with its parameters placed over ``mesh``
        (None: back on the default device), without reading the checkpoint again. Nothing compiled is shared."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.mesh, other.rules = mesh, tuple(rules)
        other.params = other._place_params(self.params)
        other._compiled = {}
        return other

    def _check_components(self):
        """The components must fit each other; a checkpoint assembled from mismatched parts fails here, naming
        the two sizes, rather than deep inside a trace."""
        problems = []
        te2_dim = (self.text_encoder_2_config.hidden_size if self.is_speech else self.text_encoder_2_config.d_model)
        p, lm = self.projection_config, self.language_model_config
        for what, got, want in (
                ("projection text_encoder_dim vs CLAP projection_dim", p.text_encoder_dim,
                 self.clap_config.projection_dim),
                ("projection text_encoder_1_dim vs text_encoder_2 width", p.text_encoder_1_dim, te2_dim),
                ("projection langauge_model_dim vs GPT-2 n_embd", p.language_model_dim, lm.n_embd),
                ("UNet LOA-stream cross_attention_dim vs GPT-2 n_embd", self.context_dims[0], lm.n_embd),
                ("UNet in_channels vs VAE latent_channels", self.unet_config.in_channels,
                 self.vae_config.latent_channels),
                ("VAE out_channels (mel spectrogram channels)", self.vae_config.out_channels, 1)):
            if got != want:
                problems.append(f"{what}: {got} != {want}")
        if self.context_dims[1] is not None and self.context_dims[1] != te2_dim:
            problems.append(f"UNet T5-stream cross_attention_dim vs text_encoder_2 width: {self.context_dims[1]} != "
                            f"{te2_dim}")
        if self.vocoder_config.model_in_dim % self.vae_config.downsample_factor:
            problems.append(f"vocoder model_in_dim={self.vocoder_config.model_in_dim} is not divisible by the VAE "
                            f"scale factor {self.vae_config.downsample_factor}")
        if self.is_speech and not p.use_learned_position_embedding:
            problems.append("a VITS text_encoder_2 needs a projection model with a learned position table")
        if problems:
            raise CheckpointError("pipeline components do not fit together:\n  " + "\n  ".join(problems))

    def _place_params(self, variables: dict[str, dict]) -> dict[str, dict]:
        """Device arrays: on the default device, or sharded over ``self.mesh`` by logical axis names. Abstract
        parameters (``jax.ShapeDtypeStruct`` leaves: a pipeline that only compiles its programs, e.g. for a TPU
        topology from a CPU host, :meth:`compile_sampling`) stay abstract, with the shardings they would have."""
        abstract_leaves = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(variables))
        if self.mesh is None:
            if abstract_leaves:
                return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
            return jax.device_put(variables)
        configs = dict(unet=("unet", self.unet_config), vae=("vae", self.vae_config),
                       vocoder=("vocoder", self.vocoder_config),
                       text_encoder_2=("vits" if self.is_speech else "t5", self.text_encoder_2_config),
                       projection=("projection", self.projection_config),
                       language_model=("gpt2", self.language_model_config))
        abstract = {key: {"params": components.get(name).abstract_params(config)}
                    for key, (name, config) in configs.items()}
        # the text tower alone in a trained export
        abstract["clap"] = _prune_like(clap_convert.abstract_params(self.clap_config), variables["clap"])
        with nn.logical_axis_rules(self.rules):
            shardings = {name: logical_to_shardings(abstract[name], self.mesh, self.rules) for name in variables}
        if abstract_leaves:
            return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), variables, shardings)
        # One device_put for the whole tree, from host arrays: JAX then copies each shard straight to its device
        # (a device array would be resliced by a small compiled program per shape).
        return jax.device_put(jax.device_get(variables), shardings)

    # ------------------------------------------------------------------------------------------------------------
    # Derived sizes
    # ------------------------------------------------------------------------------------------------------------

    @property
    def min_duration_s(self) -> float:
        return self.seconds_per_frame * self.vae_scale_factor

    @property
    def default_duration_s(self) -> float:
        """The UNet's ``sample_size`` latent frames (10.24 s for the published checkpoints)."""
        size = self.unet_sample_size or 256
        if isinstance(size, (tuple, list)):  # (latent frames, latent width) of a non-square sample_size
            size = size[0]
        return size * self.vae_scale_factor * self.seconds_per_frame

    def frames_for(self, duration_s: float) -> int:
        """Mel frames for a duration: ``int(duration / 0.01)`` rounded up to the VAE's scale factor (as the
        reference computes it, so that e.g. 10.24 s, which is 1023.99.. frames in float64, gives 1024)."""
        frames = int(duration_s / self.seconds_per_frame)
        if frames % self.vae_scale_factor:
            frames = int(math.ceil(frames / self.vae_scale_factor)) * self.vae_scale_factor
        return frames

    def latent_shape(self, batch: int, duration_s: float) -> tuple[int, int, int, int]:
        """Initial latents in the reference's layout ``[B, C, T/f, mel_bins/f]``."""
        f = self.vae_scale_factor
        return (batch, self.unet_config.in_channels, self.frames_for(duration_s) // f,
                self.vocoder_config.model_in_dim // f)

    def _unet_context_length(self, length: int) -> int:
        """The fixed length the T5 stream is zero-padded to for the UNet (see the module docstring)."""
        limit = int(self.tokenizer_2.model_max_length)
        if limit <= _MAX_REAL_TOKENIZER_LENGTH:
            return max(limit, length)
        return -(-length // 64) * 64

    # ------------------------------------------------------------------------------------------------------------
    # The call
    # ------------------------------------------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 transcription: str | Sequence[str] | None = None, audio_length_in_s: float | None = None,
                 num_inference_steps: int = 200, guidance_scale: float = 3.5, num_waveforms_per_prompt: int = 1,
                 scheduler: str | None = None, eta: float = 0.0, seed: int | Sequence[int] = 0,
                 latents: np.ndarray | None = None, max_new_tokens: int | None = None,
                 loa: np.ndarray | None = None) -> Generation:
        """Generates ``num_waveforms_per_prompt`` waveforms per prompt: validate -> encode -> sample -> rank.

        Args:
          prompt: one text or a list of B texts.
          negative_prompt: what to steer away from (one text for all prompts, or B texts); "" when None. Used only
            with guidance (``guidance_scale > 1``).
          transcription: the words to speak (speech checkpoints only; required there): one text for all prompts
            or B texts.
          audio_length_in_s: duration; the checkpoint's default (10.24 s) when None. Rounded up internally to a
            multiple of 40 ms and cut back at the end.
          num_inference_steps, scheduler, eta: sampler ("ddim", "dpmsolver++", "pndm"; None: the one of the
            checkpoint's scheduler class, as diffusers runs it), its step count, and DDIM's eta (the added noise is
            then drawn from the first prompt's seed). "pndm" runs diffusers' Runge-Kutta warm-up, so it needs at
            least 4 steps unless the scheduler config sets ``skip_prk_steps``.
          guidance_scale: classifier-free guidance weight ``g`` in ``uncond + g * (cond - uncond)``; off at <= 1.
          seed: an int (prompt p uses ``seed + p``) or one int per prompt.
          latents: initial noise in the reference's layout ``[B * n, C, T/f, mel_bins/f]`` (rows grouped by
            prompt); drawn from the seeds when None.
          max_new_tokens: LOA length (the language model config's ``max_new_tokens`` when None).
          loa: the prompts' Language of Audio, float ``[B, N, D]`` (N tokens of the language model's width D), to
            condition on instead of the one GPT-2 generates from them: e.g. AudioMAE features of real clips, which
            the LDM stage trains on, to tell the diffusion model's prompt following apart from the language
            model's. The prompts still give the T5 stream and the negative prompts their own LOA (generated, N
            tokens long); N is ``max_new_tokens``. Both streams are diffusers' ``prompt_embeds`` /
            ``generated_prompt_embeds`` given together.

        Returns:
          a :class:`Generation`: waveforms float32 ``[B * n, samples]`` at ``self.sampling_rate`` (the n waveforms of
          prompt p are rows ``p * n .. p * n + n - 1``, best CLAP match first when n > 1), the log-mel spectrograms
          the VAE decoded ``[B * n, frames, mel_bins]`` in the same row order (frames of the rounded-up duration:
          100 per second), the ranking and the wall times.

        Raises:
          ValueError: a bad argument, before anything is compiled or run.
          NonFiniteOutputError: NaN / inf in a waveform or log-mel (the model diverged); it names the prompts and
            carries the outputs, so that a batch job can keep the other prompts' waveforms.
        """
        start = time.perf_counter()
        request = self._validate(prompt, negative_prompt, transcription, audio_length_in_s, num_inference_steps,
                                 guidance_scale, num_waveforms_per_prompt, scheduler, eta, seed, latents,
                                 max_new_tokens, loa)
        return self._generate(request, Timings(), start)[0]

    def _generate(self, request: _Request, timings: Timings, start: float) -> tuple[Generation, np.ndarray]:
        """encode -> sample -> rank for a validated request: the :class:`Generation` and the final latents
        ``[B * n, T/f, W, C]`` (channels-last), rows in the same order."""
        text_embeds, conditioning = self._encode(request, timings)
        waveforms, log_mel, latents = self._sample(request, conditioning, timings)
        bad_mel = ~np.isfinite(log_mel).reshape(log_mel.shape[0], -1).all(axis=1)
        bad = bad_mel | ~np.isfinite(waveforms).all(axis=1)
        order = None
        if request.num_waveforms > 1:
            # A diverged row is ranked as silence: CLAP's features of the others stay finite (the rows of a prompt
            # with a diverged waveform are not returned anyway).
            order = self._rank(request, text_embeds, np.where(bad[:, None], np.float32(0), waveforms), timings)
            waveforms, log_mel, bad, bad_mel = waveforms[order], log_mel[order], bad[order], bad_mel[order]
            latents = latents[order]
        timings.total = time.perf_counter() - start
        if bad.any():
            raise _non_finite_error(request, bad, bad_mel, waveforms, log_mel, timings)
        return Generation(waveforms=waveforms, log_mel=log_mel, ranking=order, timings=timings), latents

    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 transcription: str | Sequence[str] | None = None, audio_length_in_s: float | None = None,
                 num_inference_steps: int = 200, guidance_scale: float = 3.5, num_waveforms_per_prompt: int = 1,
                 scheduler: str | None = None, eta: float = 0.0, seed: int | Sequence[int] = 0,
                 latents: np.ndarray | None = None, max_new_tokens: int | None = None,
                 return_mel: bool = False, loa: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """:meth:`generate`'s waveforms ``[B * n, samples]`` (with ``return_mel``, the pair ``(waveforms,
        log_mel)``); same arguments and errors."""
        out = self.generate(prompt, negative_prompt, transcription, audio_length_in_s, num_inference_steps,
                            guidance_scale, num_waveforms_per_prompt, scheduler, eta, seed, latents, max_new_tokens,
                            loa)
        return (out.waveforms, out.log_mel) if return_mel else out.waveforms

    # ------------------------------------------------------------------------------------------------------------
    # Audio to audio
    # ------------------------------------------------------------------------------------------------------------

    def transfer(self, audio, prompt: str | Sequence[str], strength: float = 0.5, **options) -> Edit:
        """Text-guided style transfer (SDEdit, as AudioLDM's ``style_transfer``): the input's VAE latent noised to
        the sampler's step ``t_start`` and denoised from there with ``prompt``. The steps are diffusers'
        image-to-image ``get_timesteps``: ``t_start = S - min(int(S * strength), S)``, timesteps
        ``scheduler.timesteps[t_start:]`` (:func:`audioldm2_jax.editing.strength_plan`); strength 0 runs no step
        (the VAE's reconstruction of the input), 1 the whole schedule from the input noised to its first timestep.

        ``audio``: a file path or an array (``audio_sampling_rate``, default 16 kHz), or a list of one per prompt;
        ``options``: see :meth:`_edit` (prompt-side options as :meth:`generate`, ``audio_length_in_s`` defaulting
        to the input's length). Returns an :class:`Edit`."""
        strength = editing.check_strength(strength)
        return self._edit("transfer", audio, prompt, strength=strength, **options)

    def inpaint(self, audio, prompt: str | Sequence[str], mask=None, blend_s: float = 0.0, **options) -> Edit:
        """Regenerates the masked part of a recording, keeping the rest (AudioLDM's masked DDIM: before every step
        the known latent cells are set to the input's latent noised to that step; after the last, to the input's
        latent itself).

        ``mask`` (True = regenerate): an :class:`audioldm2_jax.editing.TimeSpan` / ``(start_s, end_s)``, a
        :class:`audioldm2_jax.editing.FrequencyBand` (Hz), a boolean log-mel mask ``[frames, mel_bins]`` (one for
        all inputs, or a list of one per input), or None: the 40-60 % span of the clip (AudioLDM 2's default).
        ``blend_s`` > 0 (time masks only): the output is the input waveform outside the regenerated span, cross-faded
        linearly into the generated audio over ``blend_s`` seconds at its edges. Other options: :meth:`_edit`."""
        return self._edit("inpaint", audio, prompt, mask=mask, blend_s=blend_s, **options)

    def super_resolve(self, audio, prompt: str | Sequence[str], cutoff_hz: float | None = None, **options) -> Edit:
        """Bandwidth extension: the mel bins above ``cutoff_hz`` are regenerated, the ones below kept (inpainting
        in frequency, as AudioLDM's super-resolution). The input may have any sample rate; without ``cutoff_hz``
        each input's bandwidth is detected (:func:`audioldm2_jax.editing.detect_bandwidth`). Options:
        :meth:`_edit`."""
        return self._edit("sr", audio, prompt, cutoff_hz=cutoff_hz, **options)

    def continue_audio(self, audio, prompt: str | Sequence[str], seconds: float = 5.0, blend_s: float = 0.0,
                       **options) -> Edit:
        """Continues a recording by ``seconds``: the input is the known prefix (its whole latent frames, encoded on
        their own, re-imposed at every step), the rest is generated. ``blend_s``: as :meth:`inpaint`'s. Options:
        :meth:`_edit` (the duration is the input's plus ``seconds``)."""
        seconds = editing.check_number(seconds, "seconds")
        if seconds <= 0:
            raise ValueError(f"seconds={seconds:g} must be > 0: how much audio to add after the input")
        return self._edit("continue", audio, prompt, seconds=seconds, blend_s=blend_s, **options)

    def _edit(self, mode: str, audio, prompt, *, strength: float = 1.0, mask=None, cutoff_hz=None,
              seconds: float | None = None, blend_s: float = 0.0, audio_sampling_rate: int | None = None,
              normalize: bool = True, sample_posterior: bool = False, negative_prompt=None, transcription=None,
              audio_length_in_s: float | None = None, num_inference_steps: int = 200, guidance_scale: float = 3.5,
              num_waveforms_per_prompt: int = 1, scheduler: str | None = None, eta: float = 0.0,
              seed: int | Sequence[int] = 0, latents: np.ndarray | None = None,
              max_new_tokens: int | None = None) -> Edit:
        """The audio-to-audio methods' shared path: load the inputs, validate as :meth:`generate` (same options:
        ``negative_prompt``, ``transcription``, ``num_inference_steps``, ``guidance_scale``,
        ``num_waveforms_per_prompt``, ``scheduler``, ``eta``, ``seed``, ``latents`` = the noise ``eps``,
        ``max_new_tokens``), encode the inputs, then encode -> sample -> rank in the compiled programs.

        Input options: ``audio_sampling_rate`` (arrays), ``normalize`` (AudioLDM's: zero mean, peak 0.5),
        ``sample_posterior`` (a draw of the VAE posterior, from the prompt's seed, instead of its mode),
        ``audio_length_in_s`` (default: the longest input; shorter inputs are padded with silence)."""
        start = time.perf_counter()
        if self.sampling_rate != mel_lib.SAMPLE_RATE or self.hop_length != mel_lib.HOP_LENGTH:
            raise ValueError(f"audio-to-audio needs the 16 kHz, 160-sample-hop front end the VAE was trained on; this "
                             f"checkpoint's vocoder runs at {self.sampling_rate} Hz with hop {self.hop_length}")
        clips = [editing.load_input(a, self.sampling_rate, audio_sampling_rate, normalize)
                 for a in editing.as_list(audio)]
        prompts = _as_texts(prompt, "prompt")
        if len(clips) not in (1, len(prompts)):
            raise ValueError(f"audio: {len(clips)} inputs for {len(prompts)} prompts; give one input or one per prompt")
        f, mel_bins = self.vae_scale_factor, self.vocoder_config.model_in_dim
        if mode == "continue":
            if audio_length_in_s is not None:
                raise ValueError("continue_audio: the duration is the input's plus seconds=; audio_length_in_s does "
                                 "not apply")
            audio_length_in_s = max(c.duration_s for c in clips) + seconds
        elif audio_length_in_s is None:
            audio_length_in_s = max(c.duration_s for c in clips)
        request = self._validate(prompts, negative_prompt, transcription, audio_length_in_s, num_inference_steps,
                                 guidance_scale, num_waveforms_per_prompt, scheduler, eta, seed, latents,
                                 max_new_tokens)
        frames, duration = request.frames, float(audio_length_in_s)
        length = frames // f
        waves = np.stack([editing.fit_length(c.wave, frames * self.hop_length) for c in clips])  # [I, T * hop]
        mels = editing.log_mel(waves, mel_bins)  # [I, T, mel_bins]
        regenerate, cutoffs, t_start, sampler = None, None, 0, request.sampler
        if mode == "continue":
            prefix = [int(c.wave.shape[0] // self.hop_length // f) for c in clips]
            if min(prefix) < 1 or max(prefix) >= length:
                raise ValueError(f"continue_audio: the input must hold at least one latent frame ({f} mel frames, "
                                 f"{f * self.seconds_per_frame:g} s) and be shorter than the {duration:g} s output")
            regenerate = np.ones((len(clips), length, mel_bins // f), bool)
            for i, p in enumerate(prefix):
                regenerate[i, :p] = False
        elif mode == "transfer":
            sampler, t_start = editing.strength_plan(request.sampler, self.scheduler_config,
                                                     int(num_inference_steps), strength)
        else:
            nyquist = self.sampling_rate / 2
            if mode == "sr":
                cutoffs = tuple(self._check_cutoff(cutoff_hz, c, nyquist) for c in clips)
                masks = [editing.mel_mask(editing.FrequencyBand(cut, nyquist), frames, mel_bins, duration,
                                          self.seconds_per_frame, nyquist) for cut in cutoffs]
            else:
                given = mask if isinstance(mask, list) else [mask] * len(clips)
                if len(given) != len(clips):
                    raise ValueError(f"mask: {len(given)} masks for {len(clips)} inputs; give one or one per input")
                given = [editing.TimeSpan(0.4 * duration, 0.6 * duration) if m is None else m for m in given]
                masks = [editing.mel_mask(m, frames, mel_bins, duration, self.seconds_per_frame, nyquist)
                         for m in given]
            regenerate = np.stack([editing.latent_mask(m, f) for m in masks])
        blend = int(round(editing.check_number(blend_s, "blend_s") * self.sampling_rate))
        if blend < 0 or (blend and mode not in ("inpaint", "continue")):
            raise ValueError(f"blend_s={blend_s!r}: a duration >= 0, for inpaint and continue_audio only")
        time_only = regenerate is not None and bool(np.all(regenerate.all(axis=2) | ~regenerate.any(axis=2)))
        if blend and not time_only:
            raise ValueError("blend_s: waveform blending needs a mask that regenerates whole time frames (a time span "
                             "or a continuation), not a frequency band")

        # Every check passed: encode the inputs (continuation: each prefix on its own, so that no padding reaches its
        # latent; the frames after it are generated).
        timings, seeds = Timings(), request.seeds[:len(clips)]
        if mode == "continue":
            known = np.zeros((len(clips), length) + self._latent_cell(), np.float32)
            for i, (c, p) in enumerate(zip(clips, prefix)):
                head = editing.log_mel(c.wave[:p * f * self.hop_length], mel_bins)[None]
                known[i, :p] = self.encode_audio(head, seeds[i:i + 1], sample_posterior, timings)[0]
        else:
            known = self.encode_audio(mels, seeds, sample_posterior, timings)

        kind = "transfer" if mode == "transfer" else "masked"
        signal, noise = editing.noise_levels(sampler, self.scheduler_config)
        plan = editing.EditPlan(kind, signal, noise, key=(kind, t_start))
        rows = np.arange(request.batch) // request.num_waveforms  # output row -> prompt
        source = rows if len(clips) > 1 else np.zeros_like(rows)  # output row -> input
        keep = None if regenerate is None else ~regenerate[source][..., None]
        request = dataclasses.replace(request, sampler=sampler,
                                      edit=_EditInputs(plan, np.ascontiguousarray(known[source]), keep))
        generation, final = self._generate(request, timings, start)
        waveforms = generation.waveforms
        if blend:
            inputs = np.stack([editing.fit_length(w, request.num_samples) for w in waves])
            span = np.repeat(regenerate.all(axis=2), f * self.hop_length, axis=1)[:, :request.num_samples]
            weights = np.stack([editing.edge_blend_weights(s, blend) for s in span])[source]
            waveforms = (weights * waveforms + (1 - weights) * inputs[source]).astype(np.float32)
        to_reference = lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # noqa: E731
        return Edit(waveforms=waveforms, log_mel=generation.log_mel, ranking=generation.ranking,
                    timings=generation.timings, latents=to_reference(final), input_latents=to_reference(known),
                    input_waveform=waves[:, :request.num_samples], input_log_mel=mels, regenerate=regenerate,
                    start_step=t_start, cutoff_hz=cutoffs)

    def _latent_cell(self) -> tuple[int, int]:
        """``(W, C)``: a latent frame's width and channels."""
        return self.vocoder_config.model_in_dim // self.vae_scale_factor, self.unet_config.in_channels

    def _check_cutoff(self, cutoff_hz, clip: editing.InputAudio, nyquist: float) -> float:
        """``super_resolve``'s cutoff: the given one, checked, or the input's detected bandwidth."""
        if cutoff_hz is None:
            cutoff = editing.detect_bandwidth(clip)
            if cutoff >= nyquist * 0.97:
                raise ValueError(f"{clip.name}: the input already spans the whole band (detected bandwidth "
                                 f"{cutoff:.0f} Hz of {nyquist:.0f}); pass cutoff_hz= to regenerate above a lower "
                                 "frequency")
            return cutoff
        cutoff = editing.check_number(cutoff_hz, "cutoff_hz")
        if not 0 < cutoff < nyquist:
            raise ValueError(f"cutoff_hz={cutoff:g} must lie between 0 and the Nyquist frequency {nyquist:g} Hz (the "
                             "band above it is regenerated)")
        return cutoff

    def encode_audio(self, log_mel: np.ndarray, seeds: Sequence[int] = (0,), sample_posterior: bool = False,
                     timings: Timings | None = None) -> np.ndarray:
        """The VAE latents of log-mel spectrograms ``[I, T, mel_bins]`` (T a multiple of the scale factor f), times
        ``scaling_factor``: channels-last ``[I, T/f, W, C]``, the posterior's mode (or, with ``sample_posterior``, a
        draw from input i's ``seeds[i]``), as AudioLDM's ``get_first_stage_encoding``."""
        log_mel = np.asarray(log_mel, np.float32)
        vae, scaling = self.vae, float(self.vae_config.scaling_factor)

        def encode(params, mel):
            posterior = vae.apply(params["vae"], mel[..., None], method=AutoencoderKL.encode)
            return posterior.mean * scaling, posterior.std * scaling

        with self._mesh_context(log_mel.shape[0]) as put:
            args = (self.params, put(log_mel))
            compiled = self._compile(("vae_encode",) + log_mel.shape, encode, args, timings)
            mean, std = (np.asarray(x, np.float32) for x in jax.device_get(compiled(*args)))
        if not sample_posterior:
            return mean
        # a stream apart from the initial noise's (which uses the same seeds)
        draws = self.initial_latents([(int(s) ^ 0x5F3759DF) % 2 ** 32 for s in seeds], 1, log_mel.shape[1])
        return mean + std * draws

    def _validate(self, prompt, negative_prompt, transcription, audio_length_in_s, num_inference_steps,
                  guidance_scale, num_waveforms_per_prompt, scheduler, eta, seed, latents, max_new_tokens,
                  loa=None) -> _Request:
        """Every check that can fail, before anything is compiled or run."""
        prompts = _as_texts(prompt, "prompt")
        if not prompts:
            raise ValueError("prompt: empty list; give at least one prompt")
        b = len(prompts)
        if isinstance(num_waveforms_per_prompt, bool) or not isinstance(num_waveforms_per_prompt, (int, np.integer)) \
                or num_waveforms_per_prompt < 1:
            raise ValueError(f"num_waveforms_per_prompt={num_waveforms_per_prompt!r} must be an integer >= 1")
        n = int(num_waveforms_per_prompt)
        if n > 1 and not self.has_clap_audio:
            raise ValueError(f"num_waveforms_per_prompt={n}: ranking several waveforms per prompt needs CLAP's audio "
                             "branch, and this checkpoint's CLAP has the text tower only (a training export); use "
                             "num_waveforms_per_prompt=1 (and more seeds for more variations)")

        duration = self.default_duration_s if audio_length_in_s is None else audio_length_in_s
        if isinstance(duration, bool) or not isinstance(duration, (int, float, np.integer, np.floating)) \
                or not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"audio_length_in_s={audio_length_in_s!r} must be a positive number of seconds")
        if duration < self.min_duration_s:
            raise ValueError(f"audio_length_in_s={duration} is shorter than the shortest clip the model makes, "
                             f"{self.min_duration_s:g} s (one latent frame)")
        duration = float(duration)
        frames = self.frames_for(duration)
        num_samples = min(int(duration * self.sampling_rate), self.vocoder_config.output_length(frames))

        if self.is_speech:
            if transcription is None:
                raise ValueError("this is a speech checkpoint (VITS phoneme encoder): pass transcription=, the "
                                 "words to speak")
            transcriptions = _broadcast_texts(transcription, b, "transcription")
        else:
            if transcription is not None:
                raise ValueError("transcription= is only for speech checkpoints (with a VITS phoneme encoder); this "
                                 "checkpoint's text_encoder_2 is T5")
            transcriptions = None

        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number")
        cfg = guidance_scale > 1.0
        negatives = None
        if cfg:
            negatives = ("",) * b if negative_prompt is None else _broadcast_texts(negative_prompt, b,
                                                                                    "negative_prompt")
        if scheduler is None:
            scheduler = default_sampler_name(self.scheduler_class)
        if scheduler not in SAMPLER_NAMES:
            raise ValueError(f"scheduler={scheduler!r} is unknown; valid names: {', '.join(SAMPLER_NAMES)}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1")
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)) \
                or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta!r} must be a finite number >= 0 (DDIM's added noise: 0 deterministic, 1 the "
                             "DDPM posterior's)")
        sampler = make_sampler(scheduler, self.scheduler_config, int(num_inference_steps), eta=eta)

        def is_integer(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if is_integer(seed):
            seeds = tuple((int(seed) + p) % 2 ** 32 for p in range(b))
        else:
            listed = isinstance(seed, (list, tuple)) or (isinstance(seed, np.ndarray) and seed.ndim == 1)
            if not listed or not all(is_integer(s) for s in seed):
                raise ValueError(f"seed={seed!r} must be an integer (prompt p then uses seed + p) or a list of one "
                                 "integer per prompt")
            seeds = tuple(int(s) % 2 ** 32 for s in seed)
            if len(seeds) != b:
                raise ValueError(f"seed: {len(seeds)} seeds for {b} prompts; give one int or one per prompt")

        if latents is not None:
            latents = np.asarray(latents)
            want = self.latent_shape(b * n, duration)
            if latents.shape != want:
                raise ValueError(f"latents have shape {latents.shape}; {b} prompt(s) x {n} waveform(s) of "
                                 f"{duration:g} s need {want} ([B * n, channels, frames / "
                                 f"{self.vae_scale_factor}, mel bins / {self.vae_scale_factor}])")
            if latents.dtype.kind not in "fiu":
                raise ValueError(f"latents must be a real-valued array, got dtype {latents.dtype}")
            with np.errstate(over="ignore"):  # values beyond float32's range become inf: refused just below
                latents = np.ascontiguousarray(latents.transpose(0, 2, 3, 1), np.float32)
            bad = int(np.count_nonzero(~np.isfinite(latents)))
            if bad:
                raise ValueError(f"latents hold {bad} non-finite value(s) (NaN {int(np.isnan(latents).sum())}, inf "
                                 f"{int(np.isinf(latents).sum())}, counted in float32) of {latents.size}; initial "
                                 "noise must be finite")

        if loa is not None:
            loa = self._check_loa(loa, b)
            if max_new_tokens is None:
                max_new_tokens = loa.shape[1]
            elif max_new_tokens != loa.shape[1]:
                raise ValueError(f"max_new_tokens={max_new_tokens!r} but loa has {loa.shape[1]} tokens; the given LOA "
                                 "sets the length (omit max_new_tokens)")
        if max_new_tokens is None:
            max_new_tokens = self.language_model_config.max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        request = _Request(prompts=prompts, negative_prompts=negatives, transcriptions=transcriptions,
                           num_waveforms=n, frames=frames, num_samples=num_samples, sampler=sampler,
                           sampler_key=(scheduler, int(num_inference_steps), float(eta),
                                        scheduler_config_key(self.scheduler_config)),
                           guidance_scale=float(guidance_scale), seeds=seeds, latents=latents,
                           max_new_tokens=int(max_new_tokens), loa=loa)
        # GPT-2 reads the projected prompt (CLAP's token, then the T5 / phoneme stream, each between a learned SOS
        # and EOS) followed by the generated states but the last (returned, never fed back): positions 0 ..
        # prompt + max_new_tokens - 2 must all have a row in its position table (the reference indexes past it).
        request = dataclasses.replace(request, tokens=self.tokenize(request))  # tokenised once, read by _encode
        length_2 = request.tokens["ids_2"].shape[1]
        prompt_length = (1 + 2) + (length_2 + 2)
        positions = self.language_model_config.n_positions
        if request.max_new_tokens > positions - prompt_length + 1:
            raise ValueError(f"max_new_tokens={request.max_new_tokens} is too many for the language model: GPT-2 has "
                             f"n_positions={positions} and the prompt it extends is {prompt_length} embeddings long "
                             f"(CLAP 1 + {'phonemes' if self.is_speech else 'T5'} {length_2} + 4 SOS / EOS), so at "
                             f"most {positions} - {prompt_length} + 1 = {positions - prompt_length + 1} new tokens fit")
        return request

    def _check_loa(self, loa, num_prompts: int) -> np.ndarray:
        """A caller's LOA as float32 ``[B, N, D]``, or a ValueError naming what is wrong with it."""
        loa = np.asarray(loa)
        width = self.language_model_config.n_embd
        if loa.ndim != 3 or loa.shape[0] != num_prompts or loa.shape[1] < 1 or loa.shape[2] != width:
            raise ValueError(f"loa has shape {loa.shape}; {num_prompts} prompt(s) need [{num_prompts}, tokens, "
                             f"{width}] (tokens >= 1, the language model's width n_embd={width})")
        if loa.dtype.kind not in "fiu":
            raise ValueError(f"loa must be a real-valued array, got dtype {loa.dtype}")
        with np.errstate(over="ignore"):
            loa = np.asarray(loa, np.float32)
        bad = int(np.count_nonzero(~np.isfinite(loa)))
        if bad:
            raise ValueError(f"loa holds {bad} non-finite value(s) of {loa.size} (counted in float32)")
        return loa

    # ------------------------------------------------------------------------------------------------------------
    # Text side
    # ------------------------------------------------------------------------------------------------------------

    def tokenize(self, request: _Request) -> dict[str, np.ndarray]:
        """Token ids and masks for the text batch ``[negatives; prompts]`` (or the prompts alone).

        CLAP: truncated at the tokenizer's ``model_max_length`` as the reference does, but padded only to the
        longest row rounded up to 16 (the reference pads to ``model_max_length``; padded keys have zero attention
        weight, so the pooled output is the same). T5: prompts padded to the longest (at most ``model_max_length``),
        negatives padded or truncated to that same length, as the reference. VITS: transcriptions padded to
        ``model_max_length`` with the end-of-phonemes mark (negatives get no phonemes at all).
        """
        texts = (request.negative_prompts or ()) + request.prompts
        tok = self.tokenizer
        clap = tok(list(texts), padding="longest", truncation=True, max_length=tok.model_max_length,
                   return_tensors="np")
        clap_ids, clap_mask = np.asarray(clap["input_ids"]), np.asarray(clap["attention_mask"])
        length = min(-(-clap_ids.shape[1] // 16) * 16, max(int(tok.model_max_length), clap_ids.shape[1]))
        if length > clap_ids.shape[1]:
            pad = ((0, 0), (0, length - clap_ids.shape[1]))
            clap_ids = np.pad(clap_ids, pad, constant_values=tok.pad_token_id)
            clap_mask = np.pad(clap_mask, pad)
        out = dict(clap_ids=clap_ids.astype(np.int32), clap_mask=clap_mask.astype(np.int32))

        tok2 = self.tokenizer_2
        if self.is_speech:
            phonemes = tok2(list(request.transcriptions), padding="max_length", truncation=True,
                            max_length=tok2.model_max_length, return_tensors="np")
            ids, mask = mark_end_of_phonemes(np.asarray(phonemes["input_ids"]), np.asarray(phonemes["attention_mask"]))
        else:
            pos = tok2(list(request.prompts), padding="longest", truncation=True, max_length=tok2.model_max_length,
                       return_tensors="np")
            ids, mask = np.asarray(pos["input_ids"]), np.asarray(pos["attention_mask"])
            if request.cfg:
                neg = tok2(list(request.negative_prompts), padding="max_length", truncation=True,
                           max_length=ids.shape[1], return_tensors="np")
                ids = np.concatenate([np.asarray(neg["input_ids"]), ids])
                mask = np.concatenate([np.asarray(neg["attention_mask"]), mask])
        out.update(ids_2=ids.astype(np.int32), mask_2=mask.astype(np.int32))
        return out

    def _encode_fn(self, num_negative: int, max_new_tokens: int):
        """The compiled text side: ``(params, clap_ids, clap_mask, ids_2, mask_2) -> (text_embeds [B, P] of the
        prompts, (loa [R, N, D], context_1 [R, Lc, D1] | None, mask_1 [R, Lc] | None))``, the T5 stream zero-padded
        to the UNet's fixed context length Lc (None when the UNet attends to the LOA stream only: speech)."""
        clap, te2, projection, lm = self.clap, self.text_encoder_2, self.projection, self.language_model
        speech, unet_reads_context = self.is_speech, self.context_dims[1] is not None

        def encode(params, clap_ids, clap_mask, ids_2, mask_2):
            text = clap.apply(params["clap"], clap_ids, clap_mask, method=ClapModel.get_text_features)
            if speech:
                hidden = te2.apply(params["text_encoder_2"], ids_2, mask_2).last_hidden_state
                mask = mask_2
                if num_negative:  # the reference's negative phoneme stream: zeros, fully masked
                    hidden = jnp.concatenate([jnp.zeros((num_negative,) + hidden.shape[1:], hidden.dtype), hidden])
                    mask = jnp.concatenate([jnp.zeros((num_negative, mask.shape[1]), mask.dtype), mask])
            else:
                hidden = te2.apply(params["text_encoder_2"], ids_2, mask_2)
                mask = mask_2
            ones = jnp.ones((text.shape[0], 1), mask.dtype)  # CLAP's single pooled token is always attended
            prompt, prompt_mask = projection.apply(params["projection"], text[:, None, :], hidden, ones, mask)
            loa = generate_loa(lm, params["language_model"]["params"], prompt, prompt_mask, max_new_tokens)
            if not unet_reads_context:
                return text[num_negative:], (loa, None, None)
            pad = self._unet_context_length(hidden.shape[1]) - hidden.shape[1]
            context = jnp.pad(hidden.astype(jnp.float32), ((0, 0), (0, pad), (0, 0)))
            return text[num_negative:], (loa, context, jnp.pad(mask.astype(jnp.int32), ((0, 0), (0, pad))))

        return encode

    def _encode(self, request: _Request, timings: Timings) -> tuple[np.ndarray, tuple]:
        """Runs the text side once per prompt (and negative prompt): the prompts' CLAP text embeddings ``[B, P]``
        (host, for ranking) and the conditioning the sampling program reads, device arrays of R rows (see
        ``_encode_fn``)."""
        tokens = request.tokens
        num_negative = len(request.prompts) if request.cfg else 0
        fn = self._encode_fn(num_negative, request.max_new_tokens)
        args = (self.params, tokens["clap_ids"], tokens["clap_mask"], tokens["ids_2"], tokens["mask_2"])
        key = ("encode", num_negative, request.max_new_tokens) + tuple(tokens[k].shape for k in sorted(tokens))
        start, compile_before = time.perf_counter(), timings.compile
        with self._mesh_context(tokens["clap_ids"].shape[0]) as put:
            args = (args[0],) + tuple(put(a) for a in args[1:])
            compiled = self._compile(key, fn, args, timings)
            text_embeds, conditioning = jax.block_until_ready(compiled(*args))
            if request.loa is not None:  # the caller's LOA for the prompts; the negatives keep the generated one
                generated = conditioning[0]
                given = jnp.concatenate([generated[:num_negative], jnp.asarray(request.loa, generated.dtype)])
                conditioning = (jax.device_put(given, generated.sharding),) + tuple(conditioning[1:])
        timings.encode += time.perf_counter() - start - (timings.compile - compile_before)
        return np.asarray(jax.device_get(text_embeds)), conditioning

    # ------------------------------------------------------------------------------------------------------------
    # Sampling, decoding
    # ------------------------------------------------------------------------------------------------------------

    def initial_latents(self, seeds: Sequence[int], num_waveforms: int, frames: int) -> np.ndarray:
        """The noise the pipeline starts from when no latents are given, channels-last ``[B * n, T/f, W, C]``:
        row ``p * n + k`` is ``normal(fold_in(key(seeds[p]), k))``, so it depends on its own seed and index only."""
        f = self.vae_scale_factor
        shape = (frames // f, self.vocoder_config.model_in_dim // f, self.unet_config.in_channels)

        def draw(seeds, index):
            one = lambda row: jax.random.normal(jax.random.fold_in(jax.random.key(row[0]), row[1]), shape,
                                                jnp.float32)
            # lax.map, not vmap: batched draws of the non-default PRNG implementations (rbg) differ from one-by-one
            # draws, and a row's noise must not depend on the batch around it.
            return jax.lax.map(one, (seeds, index))

        seeds = np.repeat(np.asarray(seeds, np.uint32), num_waveforms)
        index = np.tile(np.arange(num_waveforms, dtype=np.uint32), len(seeds) // num_waveforms)
        compiled = self._compile(("noise", len(seeds)) + shape, draw, (seeds, index))
        return np.asarray(compiled(seeds, index))

    def _sample_fn(self, sampler: Sampler, cfg: bool, num_samples: int, num_waveforms: int,
                   edit: editing.EditPlan | None = None, chunks: editing.ChunkPlan | None = None):
        """The compiled loop: ``(params, latents [Bn, T/f, W, C], loop_seed, loa [R, N, D], context_1 [R, L, D1],
        mask_1 [R, L], guidance, known, keep) -> (waveforms [Bn, num_samples], log-mel [Bn, T, mel_bins], final
        latents [Bn, T/f, W, C])``; R = 2B with guidance (``[uncond; cond]``), else B: each conditioning row is
        repeated for its ``num_waveforms``. With an ``edit``, ``known [Bn, T/f, W, C]`` is the input's latents and
        ``keep [Bn, T/f, W, 1]`` (masked edits) its known cells (:func:`audioldm2_jax.editing.edit_start`). With
        ``chunks`` (a long clip) it returns the final latents only: :meth:`_decode_long` decodes them."""
        unet = self.unet
        decode = self._decode_fn()

        def run(params, latents, loop_seed, loa, context_1, mask_1, guidance, known=None, keep=None):
            loa, context_1, mask_1 = (None if c is None else jnp.repeat(c, num_waveforms, axis=0)
                                      for c in (loa, context_1, mask_1))  # rows p*n .. p*n+n-1: prompt p
            x, loop = editing.edit_start(sampler, edit, latents.astype(jnp.float32), known, keep)

            def denoise(x, t):
                unet_in = jnp.concatenate([x, x]) if cfg else x
                eps = unet.apply(params["unet"], unet_in, t, loa, None, context_1, mask_1).astype(jnp.float32)
                if not cfg:
                    return eps
                uncond, cond = jnp.split(eps, 2)
                return uncond + guidance * (cond - uncond)

            if loop.num_steps:  # a transfer at strength 0 runs no step (and its empty tables cannot be indexed)
                x = sample_loop(loop, denoise, x, jax.random.key(loop_seed))
            if chunks is not None:
                return x
            mel, waveforms = decode(params, x)
            return waveforms[:, :num_samples].astype(jnp.float32), mel.astype(jnp.float32), x

        return run

    def _decode_fn(self):
        """``(params, latents [B, L, W, C] scaled) -> (log-mel [B, L * f, mel_bins], waveforms [B, samples])``:
        the VAE decoder (after dividing by ``scaling_factor``), then the vocoder."""
        vae, vocoder = self.vae, self.vocoder
        scaling = float(self.vae_config.scaling_factor)

        def decode(params, z):
            mel = vae.apply(params["vae"], z / scaling, method=AutoencoderKL.decode)[..., 0]  # [B, T, mel_bins]
            return mel, vocoder.apply(params["vocoder"], mel)

        return decode

    def _chunk_plan(self, frames: int) -> editing.ChunkPlan | None:
        """The decoding windows for a clip of ``frames`` mel frames under ``decode_chunking`` (None: whole)."""
        chunking = self.decode_chunking
        if chunking is None:
            return None
        window_s = chunking.window_s or self.default_duration_s
        above_s = 3 * window_s if chunking.above_s is None else chunking.above_s
        if frames * self.seconds_per_frame <= above_s:
            return None
        f = self.vae_scale_factor
        margin = int(math.ceil(chunking.margin_s / self.seconds_per_frame / f - 1e-9))
        reach = vocoder_reach_frames(self.vocoder_config)
        if margin * f < reach:
            raise ValueError(f"decode_chunking.margin_s={chunking.margin_s} s ({margin * f} mel frames) is shorter "
                             f"than the vocoder's reach ({reach} frames, {reach * self.seconds_per_frame:g} s): its "
                             "windows would differ from the whole decode")
        return editing.chunk_plan(frames // f, max(1, int(round(window_s / self.seconds_per_frame / f))), margin)

    def _decode_long(self, latents: np.ndarray, plan: editing.ChunkPlan, num_samples: int, put,
                     timings: Timings) -> tuple[np.ndarray, np.ndarray]:
        """``latents [B, L, W, C]`` (scaled, host) -> ``(log-mel [B, L * f, mel_bins], waveforms [B, num_samples])``,
        float32 host arrays: the VAE decoder streamed over ``plan.window`` latent frames at a time (exact: whole-clip
        GroupNorm statistics and attention), then the vocoder over the plan's windows in one compiled program."""
        z = np.asarray(latents, np.float32) / np.float32(self.vae_config.scaling_factor)  # as the program's z / s
        mel = streamed_decode(self.vae, self.params["vae"], z, plan.window)[..., 0]  # [B, T, mel_bins]
        vocoder, f, hop = self.vocoder, self.vae_scale_factor, self.hop_length

        def vocode(params, mel):
            return editing.decode_in_chunks(lambda m: vocoder.apply(params["vocoder"], m), mel, plan, f, hop)

        args = (self.params, put(mel))
        compiled = self._compile(("vocode", mel.shape, str(mel.dtype), plan), vocode, args, timings)
        waveforms = np.asarray(jax.device_get(compiled(*args)), np.float32)[:, :num_samples]
        return np.asarray(mel, np.float32), waveforms

    def _sample(self, request: _Request, conditioning: tuple, timings: Timings
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, compile_before = time.perf_counter(), timings.compile
        latents = request.latents
        if latents is None:
            latents = self.initial_latents(request.seeds, request.num_waveforms, request.frames)
        with self._mesh_context(request.batch) as put:
            key, fn, args = self._sample_program(request, conditioning, latents, put)
            compiled = self._compile(key, fn, args, timings)
            chunks = self._chunk_plan(request.frames)
            if chunks is None:
                waveforms, log_mel, final = (np.asarray(x, np.float32) for x in jax.device_get(compiled(*args)))
            else:  # a long clip: the program returned its latents
                final = np.asarray(jax.device_get(compiled(*args)), np.float32)
                log_mel, waveforms = self._decode_long(final, chunks, request.num_samples, put, timings)
        timings.sample += time.perf_counter() - start - (timings.compile - compile_before)
        return waveforms, log_mel, final

    def _sample_program(self, request: _Request, conditioning: tuple, latents, put) -> tuple[tuple, Callable, tuple]:
        """``(cache key, fn, args)`` of the sampling program (:meth:`_sample_fn`) of ``request``: ``args`` placed by
        ``put`` (from :meth:`_mesh_context`), ``latents [Bn, T/f, W, C]`` and ``conditioning`` (``_encode``'s) as
        arrays or, to compile without running (:meth:`compile_sampling`), as ``jax.ShapeDtypeStruct``."""
        edit, chunks = request.edit, self._chunk_plan(request.frames)
        fn = self._sample_fn(request.sampler, request.cfg, request.num_samples, request.num_waveforms,
                             None if edit is None else edit.plan, chunks)
        # DDIM's eta noise (if any) comes from the first prompt's seed, on a stream apart from the latents'.
        loop_seed = np.uint32((request.seeds[0] + 0x9E3779B9) % 2 ** 32)
        key = ("sample", request.batch, request.frames, request.sampler_key, request.cfg, request.num_samples,
               request.num_waveforms, None if edit is None else edit.plan.key, chunks
               ) + tuple(None if c is None else c.shape for c in conditioning)
        args = (self.params, put(latents), put(loop_seed, batched=False), *(put(c) for c in conditioning),
                put(np.float32(request.guidance_scale), batched=False))
        if edit is not None:
            args += (put(edit.known), put(edit.keep))
        return key, fn, args

    # ------------------------------------------------------------------------------------------------------------
    # Ranking
    # ------------------------------------------------------------------------------------------------------------

    def clap_audio_embeddings(self, waveforms: np.ndarray, seed: int = 0, timings: Timings | None = None
                              ) -> np.ndarray:
        """L2-normalised CLAP audio embeddings ``[B, P]`` of waveforms ``[B, N]`` at ``self.sampling_rate``
        (resampled to CLAP's rate, then the feature extractor's mel views: 1 for ``rand_trunc``, 4 for ``fusion``;
        the extractor's random choices, crops of clips longer than its window, are drawn from ``seed``)."""
        if not self.has_clap_audio:
            raise ValueError("CLAP audio embeddings need CLAP's audio branch; this checkpoint's CLAP has the text "
                             "tower only (a trained export)")
        cfg = self.clap_features
        audio = resample_for_clap(np.asarray(waveforms, np.float32), self.sampling_rate, cfg.sampling_rate)
        features, is_longer = clap_audio_inputs(audio, cfg, rng=np.random.RandomState(seed))  # [B, V, T, F], [B]
        # Only a fused model reads is_longer (diffusers does not pass it, so its fused CLAP cannot rank at all).
        is_longer = is_longer if self.clap_config.audio.enable_fusion else None
        clap = self.clap

        def embed(params, feats, longer):
            return clap.apply(params["clap"], feats, longer, method=ClapModel.get_audio_features)

        with self._mesh_context(features.shape[0]) as put:
            args = (self.params, put(features), put(is_longer))
            compiled = self._compile(("clap_audio", is_longer is not None) + features.shape, embed, args, timings)
            return np.asarray(jax.device_get(compiled(*args)))

    def _rank(self, request: _Request, text_embeds: np.ndarray, waveforms: np.ndarray, timings: Timings
              ) -> np.ndarray:
        """The row order that puts, within each prompt's waveforms, the best CLAP match to that prompt first (the
        reference compares every waveform with every prompt and can hand one prompt another's audio; here a prompt
        only ranks its own)."""
        start, compile_before = time.perf_counter(), timings.compile
        audio_embeds = self.clap_audio_embeddings(waveforms, request.seeds[0], timings)
        order = np.asarray(rank_waveforms(own_prompt_scores(jnp.asarray(text_embeds), jnp.asarray(audio_embeds))))
        timings.rank += time.perf_counter() - start - (timings.compile - compile_before)
        return order

    # ------------------------------------------------------------------------------------------------------------
    # Compilation and placement
    # ------------------------------------------------------------------------------------------------------------

    def compile_sampling(self, batch_size: int = 1, audio_length_in_s: float | None = None,
                         num_inference_steps: int = 200, guidance_scale: float = 3.5, scheduler: str | None = None,
                         eta: float = 0.0, max_new_tokens: int | None = None, prompt: str = "a sound",
                         transcription: str | None = None) -> CompiledSampling:
        """Compiles, without running anything, the sampling program :meth:`generate` runs for ``batch_size``
        prompts (one waveform each) with these options (see :meth:`generate`): the denoising loop and the decoders
        (:meth:`_sample_fn`; for a clip long enough to be decoded window by window, the loop alone: the windows are
        decoded by programs of their own, not compiled here), on the pipeline's mesh. The text side is traced for
        its output shapes only (``jax.eval_shape``) and every input is abstract, so a pipeline built with abstract
        parameters (``jax.ShapeDtypeStruct`` leaves; :mod:`audioldm2_jax.plan` builds one for a TPU topology on a
        CPU host) compiles it as well. The program is cached as generate's own: a later call of the same shapes reuses it."""
        request = self._validate([prompt] * int(batch_size), None, transcription,
                                 audio_length_in_s, num_inference_steps, guidance_scale, 1, scheduler, eta, 0, None,
                                 max_new_tokens)
        tokens, timings = request.tokens, Timings()
        encode = self._encode_fn(len(request.prompts) if request.cfg else 0, request.max_new_tokens)
        with self._mesh_context(tokens["clap_ids"].shape[0], abstract=True) as put:
            _, conditioning = jax.eval_shape(encode, self.params, *(put(tokens[k]) for k in (
                "clap_ids", "clap_mask", "ids_2", "mask_2")))
        f = self.vae_scale_factor
        latents = jax.ShapeDtypeStruct((request.batch, request.frames // f, self.vocoder_config.model_in_dim // f,
                                        self.unet_config.in_channels), jnp.float32)
        with self._mesh_context(request.batch, abstract=True) as put:
            key, fn, args = self._sample_program(request, conditioning, latents, put)
            compiled = self._compile(key, fn, args, timings)
        return CompiledSampling(compiled=compiled, args=args, frames=request.frames, cfg=request.cfg,
                                loop_steps=int(request.sampler.num_steps), chunks=self._chunk_plan(request.frames),
                                compile_seconds=timings.compile)

    def _compile(self, key: tuple, fn: Callable, args: tuple, timings: Timings | None = None) -> Callable:
        """``jax.jit(fn)`` lowered (with the attention implementation of the target platform) and compiled
        (:func:`~audioldm2_jax.compilation.compile_lowered`) for ``args`` once per ``key``; the compile time is added
        to ``timings``."""
        if key not in self._compiled:
            start = time.perf_counter()
            platform = _mesh_platform(self.mesh)
            with use_attention(resolve_attention(self.attention, platform)):
                lowered = jax.jit(fn).lower(*args)
            self._compiled[key] = compile_lowered(lowered, platform=platform)
            seconds = time.perf_counter() - start
            if timings is not None:
                timings.compile += seconds
            logger.info("compiled %s in %.1f s", key[0], seconds)
        return self._compiled[key]

    @contextlib.contextmanager
    def _mesh_context(self, batch: int, abstract: bool = False):
        """Yields ``put(array, batched=True)``, which places an input (host or device array): on the default device
        without a mesh; under a mesh split over the batch axes when they divide ``batch`` and the array's leading
        dimension (replicated otherwise). Traces and runs inside the mesh and the logical-axis rules. ``abstract``:
        ``put`` gives the ``jax.ShapeDtypeStruct`` of what it would place (arrays or ``ShapeDtypeStruct``), with the
        same sharding, and places nothing."""
        if self.mesh is None:
            if abstract:
                yield lambda x, batched=True: None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype)
            else:
                yield lambda x, batched=True: None if x is None else jnp.asarray(x)
            return
        rules, size = self.rules, batch_size_divisor(self.rules, self.mesh)
        if batch % size:
            logger.warning("batch %d does not divide over the mesh's batch axes %s (size %d): replicating it; use a "
                           "batch that is a multiple of %d to split it", batch, batch_axes(rules, self.mesh), size,
                           size)
            rules = tuple((name, None if name == "act_batch" else target) for name, target in self.rules)
            size = 1
        split, whole = batch_sharding(self.mesh, rules), NamedSharding(self.mesh, PartitionSpec())

        def put(x, batched=True):
            if x is None:
                return None
            x = x if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else np.asarray(x)
            sharding = split if batched and x.shape[0] % size == 0 else whole
            if abstract:
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
            return jax.device_put(x, sharding)

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(rules):
            yield put


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _prune_like(tree, like):
    """The subtrees of ``tree`` whose keys ``like`` has (``like`` may hold fewer branches)."""
    if not hasattr(like, "items") or not hasattr(tree, "items"):
        return tree
    return {k: _prune_like(tree[k], v) for k, v in like.items() if k in tree}


def _non_finite_error(request: _Request, bad: np.ndarray, bad_mel: np.ndarray, waveforms: np.ndarray,
                      log_mel: np.ndarray, timings: Timings) -> NonFiniteOutputError:
    """The error for output rows ``bad [B * n]`` (bool) that hold NaN / inf (``bad_mel``: already in the log-mel),
    naming each prompt, its rows and the stage that diverged."""
    n = request.num_waveforms
    rows = np.flatnonzero(bad)
    prompts = sorted({int(r) // n for r in rows})
    parts = []
    for p in prompts[:8]:
        mine = [int(r) for r in rows if r // n == p]
        stage = ("in the log-mel already: the UNet or the VAE decoder" if bad_mel[p * n:(p + 1) * n].any()
                 else "in the waveform only: the vocoder")
        parts.append(f"prompt {p} {request.prompts[p][:60]!r} (row{'s' if len(mine) > 1 else ''} "
                     f"{', '.join(map(str, mine))}; {stage})")
    if len(prompts) > 8:
        parts.append(f"and {len(prompts) - 8} more")
    message = (f"the sampling program returned non-finite values (NaN / inf) for {len(prompts)} of "
               f"{len(request.prompts)} prompt(s), {len(rows)} of {len(bad)} waveform(s): {'; '.join(parts)}. The "
               "model diverged; usual causes: a NaN weight in the checkpoint, float16 overflow (use float32 or "
               "bfloat16), initial latents far from N(0, 1)")
    return NonFiniteOutputError(message, prompts, rows, waveforms, log_mel, timings)


def _as_texts(value, name: str) -> tuple[str, ...]:
    texts = (value,) if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    return tuple(texts)


def _broadcast_texts(value, count: int, name: str) -> tuple[str, ...]:
    """One text for every prompt, or exactly one per prompt."""
    if isinstance(value, str):
        return (value,) * count
    texts = _as_texts(value, name)
    if len(texts) != count:
        raise ValueError(f"{name}: {len(texts)} entries for {count} prompts; give one text or one per prompt")
    return texts


def _index_class(index: Mapping[str, Any], component: str) -> str | None:
    """The class ``model_index.json`` names for ``component`` (``["diffusers", "DDIMScheduler"]`` ->
    ``"DDIMScheduler"``), None when it names none."""
    entry = index.get(component)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return None


def _read_scheduler_config(path: Path) -> dict:
    """``scheduler/scheduler_config.json`` read as diffusers' ``load_config`` does (every key kept: the samplers
    apply diffusers' cross-class rules, see ``diffusion.schedule.read_scheduler_config``)."""
    try:
        return load_scheduler_config(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def _load_tokenizer(root: Path, folder: str, index: Mapping[str, Any]):
    import transformers

    name = _index_class(index, folder) or "AutoTokenizer"
    if name not in TOKENIZER_CLASSES:
        raise CheckpointError(f"{root / 'model_index.json'}: {folder} class {name!r} is not a supported tokenizer "
                              f"({', '.join(TOKENIZER_CLASSES)})")
    try:
        return getattr(transformers, name).from_pretrained(str(root / folder))
    except Exception as err:  # transformers' own message names the missing file
        raise CheckpointError(f"cannot load {name} from {root / folder}: {err}") from err
