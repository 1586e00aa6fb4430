"""The training step of a stage compiled for a topology, without its hardware and without data.

:func:`plan_step` builds the trainer of the config (:meth:`audioldm2_jax.train.loop.Trainer.build`) on the topology's
devices and compiles its step (:meth:`Trainer.compile`, the same jit, shardings, donation and compiler options as a
run) on abstract arguments: the train state and frozen networks as the trainer would restore them
(``ShapeDtypeStruct`` with their shardings) and a batch of the shapes the stage's ``host_batch`` makes of one
procedural clip of the config's length. What the compiled program reports (XLA's ``memory_analysis`` and
``cost_analysis``, per chip) becomes a :class:`StepPlan`; :func:`sweep` ranks layouts by the throughput their
roofline allows.

Planning runs never load weights (``config.init`` is cleared: the networks have the config's shapes) and make their
own small caption tokenizers when the config names none (only the token count matters).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from audioldm2_jax.data.pipeline import make_dataset
from audioldm2_jax.plan.topology import Topology
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import text as text_lib
from audioldm2_jax.train.checkpoint import abstract_with_shardings
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.metrics import compiled_flops

log = logging.getLogger(__name__)

# Networks with a named remat policy (model.<net>.remat, models/layers.py:REMAT_POLICIES).
REMAT_NETWORKS = ("unet", "vae", "gpt2")
TOKENIZER_CACHE = Path(tempfile.gettempdir()) / "audioldm2_jax_plan_tokenizers"


class Roofline:
    """Memory and roofline figures of a program compiled for a topology, from its per-chip analyses: the plans'
    common part. A plan holds ``topology``, ``argument_bytes``, ``output_bytes``, ``alias_bytes``, ``temp_bytes``,
    ``flops`` and ``bytes_accessed`` (per chip, one call of what it plans)."""

    @property
    def total_bytes(self) -> int:
        """Peak device memory of the program: its inputs, its outputs not written in place, its temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.topology.chip.hbm_bytes

    @property
    def compute_seconds(self) -> float:
        return self.flops / self.topology.chip.peak_bf16_flops

    @property
    def memory_seconds(self) -> float:
        return self.bytes_accessed / self.topology.chip.hbm_bytes_per_s

    @property
    def roofline_seconds(self) -> float:
        """The larger of compute at peak and HBM traffic at full bandwidth (communication between chips is not
        counted: a lower bound)."""
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_seconds >= self.memory_seconds else "HBM bandwidth"


@dataclasses.dataclass
class StepPlan(Roofline):
    """One compiled training step on one topology; byte and FLOP figures are per chip."""

    topology: Topology
    stage: str
    mesh: dict[str, int]
    batch_size: int
    micro_batches: int
    remat: str
    options: Any
    state_bytes: int  # trainable parameters, optimizer state and EMA (the train state's shard on a chip)
    frozen_bytes: int  # networks run but not trained
    batch_bytes: int
    argument_bytes: int  # memory_analysis: the step's inputs (state + frozen + batch + key)
    output_bytes: int
    alias_bytes: int  # outputs written into donated inputs (the new state)
    temp_bytes: int  # activations and every other temporary
    flops: float  # cost_analysis, one step
    bytes_accessed: float  # cost_analysis: HBM traffic of one step
    compile_seconds: float
    trainable_params: int = 0
    compute_dtype: str = ""  # the stage's compute dtype ("auto" resolved by the mesh's platform)
    prng_impl: str = ""  # the PRNG implementation the program's keys use

    @property
    def step_seconds(self) -> float:
        """The roofline step time (:attr:`Roofline.roofline_seconds`)."""
        return self.roofline_seconds

    @property
    def examples_per_second(self) -> float:
        return self.batch_size / self.step_seconds if self.step_seconds > 0 else float("inf")

    @property
    def utilisation(self) -> float:
        """The model-FLOP utilisation the roofline step time allows (1 when compute-bound)."""
        return self.compute_seconds / self.step_seconds if self.step_seconds > 0 else 0.0

    @property
    def layout(self) -> str:
        return describe_layout(self.mesh, self.remat, self.micro_batches)


def describe_layout(mesh: dict, remat: str, micro_batches: int) -> str:
    """``"data 16 x fsdp 4, remat full, 2 micro-batches"``."""
    axes = " x ".join(f"{k} {v}" for k, v in mesh.items() if int(v) > 1) or "1 chip"
    return f"{axes}, remat {remat}, {micro_batches} micro-batch{'es' if micro_batches > 1 else ''}"


# ----------------------------------------------------------------------------------------------------------------
# The config a plan compiles
# ----------------------------------------------------------------------------------------------------------------


def planning_config(config, topology: Topology, *, batch_size: int | None = None, mesh: dict | None = None,
                    remat: str | None = None, micro_batches: int | None = None,
                    tokenizer_dir: str | Path | None = None) -> ml_collections.ConfigDict:
    """A copy of ``config`` that builds without weights, data or tokenizers of its own, for ``topology``:

    - ``init`` cleared (random-shaped networks of ``config.model``'s sizes; no earlier stage's export is read);
    - the data source the procedural one, at the config's clip length (the batch shapes are what matter), read in
      the main process;
    - caption tokenizers made under ``tokenizer_dir`` where the config names no existing folder;
    - for GPU estimates, whose mesh is made of CPU devices standing in for the GPUs, what "auto" would choose by
      the mesh's platform is chosen for the GPU instead: ``compute_dtype`` bfloat16 and ``model.attention`` "xla"
      (the fused cuDNN kernel cannot compile on a CPU, and the CPU's per-head attention loop would hide its FLOPs
      from the cost analysis). TPU plans keep "auto": the trainer resolves it by the platform of its mesh's
      devices, which is the TPU's, whatever the host's backend (the PRNG: :func:`plan_step`);
    - ``batch_size``, ``mesh`` (``{"data": ..., "fsdp": ..., "tensor": ...}``), ``grad_accum_steps`` and the remat
      policy of every network that has one, when given.
    """
    c = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    for name in list(c.init.keys()):
        c.init[name] = ""
    c.data.update(dict(source="procedural", path="", procedural_clips=8, num_workers=0, read_threads=1,
                       prefetch_buffer_size=1, random_crop=False))
    for key in ("procedural_instruments", "procedural_patterns", "procedural_tempos"):
        c.data[key] = None
    missing = [k for k in ("t5_tokenizer", "clap_tokenizer") if not (c.text.get(k) and Path(c.text[k]).is_dir())]
    if missing:  # only the token count (text.*_max_length) shapes the step
        made = dict(zip(("clap_tokenizer", "t5_tokenizer"),
                        text_lib.build_caption_tokenizers(Path(tokenizer_dir or TOKENIZER_CACHE), vocab_size=200)))
        for key in missing:
            c.text[key] = str(made[key])
    if topology.estimate:
        if c.compute_dtype == "auto":
            c.compute_dtype = jnp.dtype(config_lib.resolve_compute_dtype("auto", topology.chip.platform)).name
        if c.model.get("attention", "auto") == "auto":
            c.model.attention = "xla"
    c.log.progress_bar = False
    c.log.tensorboard = False
    if batch_size is not None:
        c.batch_size = int(batch_size)
    if mesh is not None:
        c.mesh = ml_collections.ConfigDict({k: int(v) for k, v in mesh.items()})
    if micro_batches is not None:
        c.grad_accum_steps = int(micro_batches)
    if remat is not None:
        for net in REMAT_NETWORKS:
            if net in c.model:
                c.model[net].remat = remat
    return c


def prng_impl_of(config, topology: Topology) -> str:
    """The PRNG implementation a run of ``config`` on ``topology``'s chips uses (``config.prng_impl``; "auto"
    resolved for the chips' platform, not the host's)."""
    return config_lib.resolve_prng_impl(config.get("prng_impl", "auto"), topology.chip.platform) or "threefry2x32"


def remat_of(config) -> str:
    """The remat policies of the networks that have one, as one label ("none", "full", "unet=full,vae=none,...")."""
    names = {net: str(config.model[net].get("remat", "none")) for net in REMAT_NETWORKS if net in config.model}
    values = set(names.values())
    return values.pop() if len(values) == 1 else ",".join(f"{k}={v}" for k, v in names.items())


# ----------------------------------------------------------------------------------------------------------------
# Abstract arguments and the compile
# ----------------------------------------------------------------------------------------------------------------


def abstract_batch(trainer: Trainer) -> dict[str, jax.ShapeDtypeStruct]:
    """The step's batch as ``ShapeDtypeStruct`` on the trainer's batch sharding: the arrays ``stage.host_batch``
    makes of one clip of the config's input pipeline, with the global batch size as leading dimension."""
    config = trainer.config
    iterator = make_dataset(config_lib.data_config(config), seed=0, rows=(0, 1))
    try:
        host = trainer.stage.host_batch(next(iterator))
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    size = int(config.batch_size)
    return {k: jax.ShapeDtypeStruct((size,) + np.shape(v)[1:], np.asarray(v).dtype, sharding=trainer.batch_sharding)
            for k, v in host.items()}


def abstract_arguments(trainer: Trainer):
    """``(state, frozen, batch, key)`` of the trainer's step, as abstract values with the run's shardings."""
    state = abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
    frozen = trainer.abstract_frozen()
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=trainer.replicated)
    return state, frozen, abstract_batch(trainer), key


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ``ShapeDtypeStruct`` with shardings (the largest shard of each leaf)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return int(total)


def step_option(trainer: Trainer, option: Any = None):
    """The static step option to compile: ``option`` if given, else the stage's largest step: of the options its
    first steps draw, the smallest (the LDM's pooling rate lambda: the smallest gives the UNet the most LOA tokens)."""
    if option is not None:
        return option
    drawn = {trainer.stage.step_options(step) for step in range(64)}
    numeric = [v for v in drawn if isinstance(v, (int, float))]
    return min(numeric) if numeric and len(numeric) == len(drawn) else sorted(drawn, key=repr)[0]


def build_trainer(config, topology: Topology, devices: Sequence | None = None, workdir: str | Path | None = None):
    """The trainer of a :func:`planning_config` on ``devices`` (default: the topology's). Config problems (a mesh
    that does not divide the chips, a batch the data axes cannot split) raise ``ConfigError`` naming them."""
    devices = topology.devices() if devices is None else list(devices)
    return Trainer.build(config, workdir or Path(tempfile.gettempdir()) / "audioldm2_jax_plan", devices=devices)


def input_bytes(config, topology: Topology, devices: Sequence | None = None, **overrides) -> dict[str, int]:
    """Without compiling: the bytes of the step's inputs one chip holds under the trainer's shardings (``state``:
    parameters, optimizer state and EMA; ``frozen``; ``batch``), and the trainable parameter count (``params``)."""
    trainer = build_trainer(planning_config(config, topology, **overrides), topology, devices)
    state, frozen, batch, _ = abstract_arguments(trainer)
    return dict(state=shard_bytes(state), frozen=shard_bytes(frozen), batch=shard_bytes(batch),
                params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.params)))


def plan_step(config, topology: Topology, devices: Sequence | None = None, option: Any = None,
              **overrides) -> tuple[StepPlan, Any]:
    """Compiles the training step of ``config`` (``overrides``: :func:`planning_config`'s ``batch_size``, ``mesh``,
    ``remat``, ``micro_batches``, ``tokenizer_dir``) for ``topology`` and returns ``(plan, compiled)``."""
    c = planning_config(config, topology, **overrides)
    impl = prng_impl_of(c, topology)
    # jax's PRNG implementation is process-wide (a training process sets it for its own devices: unsafe_rbg on a
    # CPU host, config.resolve_prng_impl); the plan's keys and random bits are those of a run on the topology's chips
    with jax.default_prng_impl(impl):
        trainer = build_trainer(c, topology, devices)
        state, frozen, batch, key = abstract_arguments(trainer)
        option = step_option(trainer, option)
        compiled = trainer.compile(state, frozen, batch, key, option)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    plan = StepPlan(
        topology=topology, stage=trainer.stage.name, mesh={k: int(v) for k, v in trainer.mesh.shape.items()},
        batch_size=int(c.batch_size), micro_batches=int(c.grad_accum_steps), remat=remat_of(c), options=option,
        state_bytes=shard_bytes(state), frozen_bytes=shard_bytes(frozen), batch_bytes=shard_bytes(batch),
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        flops=float(compiled_flops(compiled) or 0.0), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        compile_seconds=float(trainer.compile_seconds[option]),
        trainable_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state.params)),
        compute_dtype=jnp.dtype(trainer.stage.dtype).name, prng_impl=impl)
    return plan, compiled


# ----------------------------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------------------------


def mesh_candidates(num_chips: int, batch_size: int, tensor: Iterable[int] = (1, 2, 4)) -> list[dict[str, int]]:
    """``data x fsdp x tensor`` layouts of ``num_chips`` whose batch axes (data x fsdp) divide ``batch_size``: per
    tensor size, pure data parallelism, pure FSDP, and the even split between them (powers of two)."""
    out = []
    for t in tensor:
        if num_chips % t:
            continue
        rest = num_chips // t  # data x fsdp
        even = 2 ** (int(math.log2(rest)) // 2) if rest & (rest - 1) == 0 else 1
        for fsdp in sorted({1, even, rest}):
            mesh = {"data": rest // fsdp, "fsdp": fsdp, "tensor": t}
            if batch_size % rest == 0:
                out.append(mesh)
    return out


@dataclasses.dataclass
class SweepResult:
    plans: list[StepPlan]
    failures: list[tuple[str, str]]  # (layout, error) of candidates the config rejected or that did not compile

    def ranked(self) -> list[StepPlan]:
        """The plans that fit, fastest first (ties: less memory)."""
        fitting = [p for p in self.plans if p.fits]
        return sorted(fitting, key=lambda p: (-p.examples_per_second, p.total_bytes))


def sweep(config, topology: Topology, *, batch_size: int | None = None, meshes: Sequence[dict] | None = None,
          remats: Sequence[str] = ("none", "full"), micro_batches: Sequence[int] = (1,), option: Any = None,
          tokenizer_dir: str | Path | None = None, progress=None) -> SweepResult:
    """Every combination of ``meshes`` (default :func:`mesh_candidates`), ``remats`` and ``micro_batches`` compiled
    for ``topology``, one after the other; a combination the config rejects (e.g. micro-batches the batch axes
    cannot split) or the compiler fails on is recorded with its error."""
    devices = topology.devices()
    batch = int(batch_size or config.batch_size)
    meshes = list(meshes or mesh_candidates(topology.num_chips, batch))
    plans, failures = [], []
    for mesh, remat, count in itertools.product(meshes, remats, micro_batches):
        layout = describe_layout(mesh, remat, int(count))
        try:
            plan, _ = plan_step(config, topology, devices, option=option, batch_size=batch, mesh=mesh, remat=remat,
                                micro_batches=count, tokenizer_dir=tokenizer_dir)
        except (ValueError, RuntimeError) as err:  # ConfigError is a ValueError; XLA errors are RuntimeErrors
            failures.append((layout, f"{type(err).__name__}: {err}".splitlines()[0]))
            if progress:
                progress(None, layout, failures[-1][1])
            continue
        plans.append(plan)
        if progress:
            progress(plan, layout, None)
    return SweepResult(plans, failures)
