"""The sampling program of a pipeline compiled for a topology, without its hardware and without weights.

:func:`plan_sampling` builds an :class:`~audioldm2_jax.pipeline.AudioLDM2Pipeline` of the networks of a training
config (``config.model``: the UNet, VAE, HiFi-GAN, CLAP, T5, projection and GPT-2 that config trains, i.e. the
pipeline its export would be) with abstract parameters (``jax.ShapeDtypeStruct`` with the shardings the pipeline
gives them on a mesh of the topology's devices) and compiles the program :meth:`AudioLDM2Pipeline.generate` runs for
a batch of prompts (:meth:`AudioLDM2Pipeline.compile_sampling`: the denoising loop, the VAE decoder and the vocoder;
the same function, shardings, attention and compiler options as a call). What the compiled program reports
(``memory_analysis``, ``cost_analysis``, per chip) becomes a :class:`SamplePlan`.

XLA's cost analysis counts the body of a loop once, whatever its trip count (checked in tests/test_plan.py), so the
program's own FLOP and byte counts hold one denoising step. The per-batch figures add the other steps: with
``F_program`` the program's count, ``F_decode`` that of the decoders (the pipeline's decode function compiled alone
for the same latents) and ``E`` the loop's steps, one step costs ``F_step = F_program - F_decode`` (the few
element-wise operations outside the loop and the decoders are counted with it) and a batch
``F_program + (E - 1) F_step``. The same holds for the bytes accessed, less exactly: the decoders fused into the
program need not read and write what they read and write compiled alone. Clips long enough for the pipeline to
decode them window by window (``AudioLDM2Pipeline.decode_chunking``), in programs of their own, are not planned;
below that, a clip whose attention computes its scores in blocks of queries (``layers.QUERY_CHUNK_MIN_SCORES``:
the published UNet past 20.48 s) has a loop inside the step as well, counted once: its FLOPs are a lower bound.

The text side (CLAP, T5, the projection and GPT-2's LOA tokens) is a separate program run once per batch, not
included: next to the loop's ``E`` UNet calls it is small. Classifier-free guidance doubles the UNet's rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from audioldm2_jax import components
from audioldm2_jax.convert import clap as clap_convert
from audioldm2_jax.parallel.partitioning import make_mesh
from audioldm2_jax.pipeline import AudioLDM2Pipeline, CompiledSampling, Timings
from audioldm2_jax.plan.topology import Topology
from audioldm2_jax.plan.training import TOKENIZER_CACHE, Roofline, prng_impl_of, shard_bytes
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import text as text_lib
from audioldm2_jax.train.export import scheduler_config

# The pipeline's networks: its constructor argument -> (component name, config.model section).
PIPELINE_NETWORKS = {"unet": "unet", "vae": "vae", "vocoder": "vocoder", "text_encoder": "clap",
                     "text_encoder_2": "t5", "projection_model": "projection", "language_model": "gpt2"}
# The parameters the sampling program reads: the UNet, the VAE's decoder half, the vocoder (the text side runs in
# a program of its own; the VAE's encoder only for audio-to-audio inputs, before the loop).
SAMPLING_PARAMS = {"unet": None, "vae": ("decoder", "post_quant_conv"), "vocoder": None}


def sampling_params(params: dict) -> dict:
    """The part of a pipeline's parameter tree (``pipe.params``) that its sampling program reads."""
    out = {}
    for network, parts in SAMPLING_PARAMS.items():
        tree = params[network]["params"]
        out[network] = tree if parts is None else {part: tree[part] for part in parts}
    return out


@dataclasses.dataclass
class SamplePlan(Roofline):
    """One compiled sampling program on one topology; bytes per chip, FLOPs and bytes accessed per chip and batch."""

    topology: Topology
    mesh: dict[str, int]
    batch_size: int  # prompts, one clip each
    steps: int  # the denoising loop's iterations (UNet calls; PNDM's warm-up included)
    seconds: float  # clip length
    guidance: bool  # classifier-free guidance: the UNet sees 2 x batch_size rows
    compute_dtype: str
    prng_impl: str
    param_bytes: int  # logical bytes of the UNet, VAE decoder and vocoder parameters a chip holds
    argument_bytes: int  # memory_analysis: the program's inputs as laid out (parameters, latents, conditioning)
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    program_flops: float  # cost_analysis of the program: one loop step counted
    program_bytes_accessed: float
    decode_flops: float  # cost_analysis of the decoders compiled alone
    decode_bytes_accessed: float
    compile_seconds: float

    @property
    def step_flops(self) -> float:
        """One denoising step (a UNet call on the batch, twice its rows with guidance, and the sampler's update)."""
        return self.program_flops - self.decode_flops

    @property
    def flops(self) -> float:
        """Per chip, one generated batch: every loop step and the decoders."""
        return self.program_flops + (self.steps - 1) * self.step_flops

    @property
    def bytes_accessed(self) -> float:
        return self.program_bytes_accessed + (self.steps - 1) * (self.program_bytes_accessed
                                                                 - self.decode_bytes_accessed)

    @property
    def batch_seconds(self) -> float:
        """The roofline time of a batch (:attr:`~audioldm2_jax.plan.training.Roofline.roofline_seconds`)."""
        return self.roofline_seconds

    @property
    def clips_per_second(self) -> float:
        return self.batch_size / self.batch_seconds if self.batch_seconds > 0 else float("inf")


def sampling_mesh(topology: Topology, mesh: dict | None) -> dict[str, int]:
    """The pipeline's mesh: ``mesh`` (one axis may be -1), default data parallelism over every chip (each chip
    generates its share of the prompts with a whole copy of the networks)."""
    shape = dict(mesh or {"data": -1})
    return config_lib.resolved_mesh_shape(ml_collections.ConfigDict({"mesh": {
        axis: int(shape.get(axis, 1)) for axis in ("data", "fsdp", "tensor")}}), topology.num_chips)


def abstract_pipeline(config, devices: Sequence, mesh: dict[str, int], dtype, attention: str = "auto",
                      text_tokens: int | None = None, tokenizer_dir: str | Path | None = None) -> AudioLDM2Pipeline:
    """The pipeline of ``config.model``'s networks over ``devices`` (``mesh``: data / fsdp / tensor sizes), with
    abstract parameters (no weights), the config's noise schedule (the scheduler its export writes) and small caption
    tokenizers (only the token counts shape the programs): the T5 one's ``model_max_length``, the length of the T5
    stream the UNet attends to, is ``text_tokens`` (default ``config.text.t5_max_length``, what the config's export
    writes for a tokenizer without a real limit; the published FLAN-T5 tokenizer's is 512)."""
    if config.model.get("text_encoder_2", "t5") != "t5":
        raise ValueError(f"model.text_encoder_2={config.model.text_encoder_2!r}: --sample plans text-to-audio "
                         "pipelines (T5); a speech pipeline (VITS phonemes) is not planned")
    models = {arg: config_lib.model_config(config, section) for arg, section in PIPELINE_NETWORKS.items()}
    params = {}
    for arg, section in PIPELINE_NETWORKS.items():
        if section == "clap":  # the pipeline takes both towers (the published checkpoints' CLAP)
            params[arg] = nn.unbox(clap_convert.abstract_params(models[arg]))["params"]
        else:
            params[arg] = nn.unbox(components.get(section).abstract_params(models[arg]))
    clap_dir, t5_dir = text_lib.build_caption_tokenizers(Path(tokenizer_dir or TOKENIZER_CACHE), vocab_size=200)
    tokenizer, tokenizer_2 = text_lib.load_tokenizer(clap_dir), text_lib.load_tokenizer(t5_dir)
    tokenizer.model_max_length = int(config.text.clap_max_length)
    tokenizer_2.model_max_length = int(text_tokens or config.text.t5_max_length)
    return AudioLDM2Pipeline(
        **{arg: (models[arg], params[arg]) for arg in PIPELINE_NETWORKS}, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, scheduler_config=scheduler_config(config), dtype=dtype, attention=attention,
        mesh=make_mesh(mesh, devices=list(devices)))


def plan_sampling(config, topology: Topology, devices: Sequence | None = None, *, batch_size: int | None = None,
                  steps: int = 200, seconds: float | None = None, guidance: float = 3.5, mesh: dict | None = None,
                  scheduler: str | None = None, text_tokens: int | None = None,
                  tokenizer_dir: str | Path | None = None) -> tuple[SamplePlan, CompiledSampling, object]:
    """Compiles the sampling program of ``config``'s pipeline (:func:`planning_pipeline`) for ``batch_size``
    prompts, ``steps`` sampler steps, clips of ``seconds`` (default ``config.data.clip_seconds``) and ``guidance``
    (> 1: classifier-free guidance) on ``topology`` (``devices``: default the topology's), and its decoders
    alone: :func:`plan_pipeline_sampling`. The default batch is one prompt per batch shard (the mesh's data x
    fsdp); a batch those axes do not divide runs whole on every chip, as the pipeline runs it."""
    pipe = planning_pipeline(config, topology, devices, mesh=mesh, text_tokens=text_tokens,
                             tokenizer_dir=tokenizer_dir)
    if batch_size is None:
        batch_size = int(pipe.mesh.shape["data"] * pipe.mesh.shape["fsdp"])
    return plan_pipeline_sampling(pipe, topology, prng_impl_of(config, topology), batch_size=batch_size,
                                  steps=steps, seconds=float(config.data.clip_seconds if seconds is None else seconds),
                                  guidance=guidance, scheduler=scheduler)


def planning_pipeline(config, topology: Topology, devices: Sequence | None = None, *, mesh: dict | None = None,
                      text_tokens: int | None = None, tokenizer_dir: str | Path | None = None) -> AudioLDM2Pipeline:
    """:func:`abstract_pipeline` of ``config`` on ``topology`` (``devices``: default the topology's; ``mesh``:
    :func:`sampling_mesh`), with "auto" compute dtype and attention chosen for the topology's chips (for GPU
    estimates, whose mesh is CPU devices standing in for the GPUs: bfloat16 and XLA attention, as the training
    plan's :func:`~audioldm2_jax.plan.training.planning_config`)."""
    devices = topology.devices() if devices is None else list(devices)
    dtype = config_lib.resolve_compute_dtype(config.compute_dtype, topology.chip.platform)
    attention = config.model.get("attention", "auto")
    if topology.estimate and attention == "auto":
        attention = "xla"
    with jax.default_prng_impl(prng_impl_of(config, topology)):  # parameter shapes only, but keys are typed
        return abstract_pipeline(config, devices, sampling_mesh(topology, mesh), dtype, attention, text_tokens,
                                 tokenizer_dir)


def plan_pipeline_sampling(pipe: AudioLDM2Pipeline, topology: Topology, prng_impl: str = "threefry2x32", *,
                           batch_size: int = 1, steps: int = 200, seconds: float | None = None,
                           guidance: float = 3.5, scheduler: str | None = None
                           ) -> tuple[SamplePlan, CompiledSampling, object]:
    """Compiles ``pipe``'s sampling program (:meth:`AudioLDM2Pipeline.compile_sampling`) and its decoders alone
    (:func:`compile_decode`) with ``prng_impl`` (the PRNG of a run on the topology's chips: DDIM's eta noise is
    drawn in the program); returns ``(plan, program, decode)``. A clip the pipeline decodes window by window is a
    ValueError (not planned)."""
    frames = pipe.frames_for(pipe.default_duration_s if seconds is None else seconds)
    if pipe._chunk_plan(frames) is not None:
        raise ValueError(f"a clip of {frames * pipe.seconds_per_frame:g} s: the pipeline decodes clips this long "
                         "window by window, in programs of their own (AudioLDM2Pipeline.decode_chunking), which the "
                         "planner does not compile; plan a shorter clip")
    # the process-wide PRNG implementation is the host's, which need not be the chips'
    with jax.default_prng_impl(prng_impl):
        program = pipe.compile_sampling(batch_size, seconds, steps, guidance, scheduler)
        decode, decode_seconds = compile_decode(pipe, batch_size, program.frames // pipe.vae_scale_factor)
    memory = program.compiled.memory_analysis()
    cost = first(program.compiled.cost_analysis())
    decode_cost = first(decode.cost_analysis())
    plan = SamplePlan(
        topology=topology, mesh={k: int(v) for k, v in pipe.mesh.shape.items()}, batch_size=int(batch_size),
        steps=program.loop_steps, seconds=program.frames * pipe.seconds_per_frame, guidance=program.cfg,
        compute_dtype=jnp.dtype(pipe.dtype).name, prng_impl=prng_impl,
        param_bytes=shard_bytes(sampling_params(program.args[0])),
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        program_flops=float(cost.get("flops", 0.0)), program_bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        decode_flops=float(decode_cost.get("flops", 0.0)),
        decode_bytes_accessed=float(decode_cost.get("bytes accessed", 0.0)),
        compile_seconds=program.compile_seconds + decode_seconds)
    return plan, program, decode


def compile_decode(pipe: AudioLDM2Pipeline, batch_size: int, latent_frames: int):
    """The pipeline's decoder function (VAE decoder, then vocoder: what the sampling program runs on the final
    latents) compiled alone for ``batch_size`` rows of ``latent_frames`` latent frames, on the pipeline's mesh and
    batch sharding. Returns ``(compiled, seconds)``."""
    f = pipe.vae_scale_factor
    z = jax.ShapeDtypeStruct((batch_size, latent_frames, pipe.vocoder_config.model_in_dim // f,
                              pipe.unet_config.in_channels), jnp.float32)
    timings = Timings()
    with pipe._mesh_context(batch_size, abstract=True) as put:
        compiled = pipe._compile(("plan_decode", batch_size, latent_frames), pipe._decode_fn(),
                                 (pipe.params, put(z)), timings)
    return compiled, timings.compile


def first(analysis):
    """``cost_analysis()`` as one dict (some jax versions return a list of one per program)."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return analysis or {}
