"""The training loop shared by every stage.

::

    train(config, workdir)
      runtime      jax.distributed (multi-host), PRNG implementation, config checks before any compilation
      mesh         data x fsdp x tensor from the config; logical -> mesh rules
      stage        the model-specific half (audioldm2_jax.train.stages): groups, frozen networks, losses
      state        TrainState born sharded (or restored from the latest checkpoint onto this mesh)
      step         one jit per static step option: in/out shardings, the state donated; per group: micro-batch
                   gradient accumulation (lax.scan), clipping + AdamW, EMA; a non-finite loss or gradient keeps
                   the previous parameters and is counted
      loop         data -> step -> metrics (JSONL, TensorBoard, progress bar) -> samples -> checkpoints; SIGTERM
                   saves and returns; too many non-finite steps in a row stop the run
      export       inference components of the final parameters (EMA when kept)

The random stream of step ``s`` is ``fold_in(key(seed), s)`` and the input pipeline's position is checkpointed,
so a resumed run continues with exactly the batches and random draws the uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax import components
from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.data.pipeline import global_batch, make_dataset
from audioldm2_jax.models.layers import resolve_attention, use_attention
from audioldm2_jax.parallel import distributed as dist
from audioldm2_jax.parallel import partitioning
from audioldm2_jax.parallel.partitioning import logical_to_shardings, make_mesh, training_rules
from audioldm2_jax.train import checkpoint as ckpt_lib
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import export as export_lib
from audioldm2_jax.train import held_out as held_out_lib
from audioldm2_jax.train import held_out_metrics
from audioldm2_jax.train import metrics as metrics_lib
from audioldm2_jax.train import state as state_lib
from audioldm2_jax.train.config import data_config
from audioldm2_jax.train.stages import Stage, make_stage

log = logging.getLogger(__name__)

FAST_CPU_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# ----------------------------------------------------------------------------------------------------------------
# Runtime set-up
# ----------------------------------------------------------------------------------------------------------------


def setup_runtime(config) -> None:
    """Process-level settings, before any device is touched: XLA:CPU compile flags, multi-process initialisation
    (:func:`audioldm2_jax.parallel.distributed.initialize`: the coordinator from ``JAX_COORDINATOR_ADDRESS`` /
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` as :mod:`audioldm2_jax.launch` sets them, or SLURM, Open MPI and
    TPU pods by jax's cluster detection; gloo collectives on the CPU), the PRNG implementation and the persistent
    compilation cache."""
    if config.get("xla_cpu_fast_compile", False):
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " " + FAST_CPU_COMPILE_FLAGS).strip()
    mode = config.get("distributed", "auto")
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed={mode!r} is not one of auto, on, off")
    settings = dist.DistributedSettings.from_env()
    if mode == "off" and settings.explicit and not jax.distributed.is_initialized():
        # N copies of a single-process run would overwrite each other's checkpoints in the same workdir.
        raise config_lib.ConfigError(
            f"distributed='off', but this process was launched as process {settings.process_id} of "
            f"{settings.num_processes} ({dist.ENV_NUM_PROCESSES}); pass --config.distributed=auto")
    if mode == "on" or (mode == "auto" and dist.launched_multiprocess(settings)):
        dist.initialize(settings, force=True)
    # process-wide, for the devices the run uses: the default backend's (build_mesh's default devices)
    impl = config_lib.resolve_prng_impl(config.get("prng_impl", "auto"), jax.default_backend())
    if impl is not None:
        jax.config.update("jax_default_prng_impl", impl)
    cache_dir = config.get("compilation_cache_dir", "")
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(str(cache_dir)))


def build_mesh(config, devices=None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = config_lib.resolved_mesh_shape(config, len(devices))
    return make_mesh({k: shape[k] for k in ("data", "fsdp", "tensor") if k in shape}, devices=devices)


# ----------------------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------------------


def _micro_batches(batch, count: int):
    """``[B, ...]`` leaves -> ``[count, B / count, ...]``: micro-batch ``i`` takes rows ``i, i + count, ...``, so each
    device's contiguous shard of the batch contributes equally to every micro-batch (no cross-device shuffle)."""
    def split(x):
        return jnp.swapaxes(x.reshape((x.shape[0] // count, count) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: Callable, params, batch, key, count: int, batch_sharding=None):
    """Mean loss, aux and gradients of ``loss_fn(params, batch, key) -> (loss, aux)`` over ``count`` micro-batches
    (micro-batch ``i`` gets ``fold_in(key, i)``), accumulated in float32 by a ``lax.scan``."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        (loss, aux), grads = grad_fn(params, batch, key)
        return loss, aux, grads
    micro = _micro_batches(batch, count)

    def body(carry, inputs):
        index, mb = inputs
        if batch_sharding is not None:
            mb = jax.lax.with_sharding_constraint(mb, batch_sharding)
        (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(key, index))
        total = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry, (loss, aux, grads))
        return total, None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                         jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), key)))
    (loss_aux, grads) = zeros
    init = (loss_aux[0], loss_aux[1], grads)
    (loss, aux, grads), _ = jax.lax.scan(body, init, (jnp.arange(count), micro))
    scale = 1.0 / count
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)
    return loss * scale, jax.tree.map(lambda a: a * scale, aux), grads


def make_train_step(stage: Stage, optimizers: dict, schedules: dict, config, batch_sharding):
    """``step(state, frozen, batch, base_key, options) -> (state, metrics)``; ``options`` is static."""
    accum = int(config.grad_accum_steps)
    ema_decay = float(config.ema.decay)
    ema_warmup = bool(config.ema.warmup)
    single = len(stage.groups) == 1

    def step(state: state_lib.TrainState, frozen, batch, base_key, options):
        rng = jax.random.fold_in(base_key, state.step)
        params = dict(state.params)
        opt_states = dict(state.opt_state)
        metrics: dict[str, jax.Array] = {}
        finite = jnp.asarray(True)
        for index, group in enumerate(stage.groups):
            def loss_fn(group_params, micro, key, group=group, current=dict(params)):
                current[group] = group_params
                return stage.loss(group, current, frozen, state.extras, micro, key, state.step, options)

            loss, aux, grads = accumulate_gradients(loss_fn, params[group], batch, jax.random.fold_in(rng, index),
                                                    accum, batch_sharding)
            # float32 whatever the parameters' dtype, as the clipping's norm
            grad_norm = optax.tree.norm(optax.tree.cast(grads, jnp.float32))
            updates, opt_states[group] = optimizers[group].update(grads, state.opt_state[group], params[group])
            params[group] = optax.apply_updates(params[group], updates)
            finite = finite & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            prefix = "" if single else f"{group}/"
            metrics[f"{prefix}loss"] = loss
            metrics[f"{prefix}grad_norm"] = grad_norm
            metrics[f"{prefix}learning_rate"] = schedules[group](state.step)
            metrics.update({f"{prefix}{k}": v for k, v in aux.items()})

        # A non-finite step keeps every group's parameters, optimizer state and EMA. Not optax.apply_if_finite:
        # it looks at one group's gradients only (a NaN loss with finite gradients, e.g. from a jnp.where, passes;
        # the other groups of a GAN step would still move), applies the update anyway after
        # ``max_consecutive_errors`` (the loop stops the run instead), and wraps the optimizer state in its own
        # counters, which would change the checkpoints' layout.
        new_params = optax.tree.where(finite, params, state.params)
        new_opt = optax.tree.where(finite, opt_states, state.opt_state)
        new_ema = state.ema
        if state.ema:
            decay = state_lib.ema_decay_at(ema_decay, state.step, ema_warmup)
            new_ema = optax.tree.where(
                finite, {g: optax.incremental_update(new_params[g], state.ema[g], 1.0 - decay) for g in state.ema},
                state.ema)
        skipped = jnp.where(finite, 0, 1).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1, params=new_params, opt_state=new_opt, ema=new_ema,
            skipped=state.skipped + skipped,
            consecutive_skipped=jnp.where(finite, 0, state.consecutive_skipped + 1).astype(jnp.int32))
        metrics["nonfinite_skipped"] = new_state.skipped.astype(jnp.float32)
        metrics["consecutive_nonfinite"] = new_state.consecutive_skipped.astype(jnp.float32)
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trainer:
    """Everything built for a run; :meth:`run` trains. Tests drive the pieces directly."""

    config: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    rules: tuple
    stage: Stage
    optimizers: dict
    schedules: dict
    state_shardings: state_lib.TrainState
    abstract_state: state_lib.TrainState
    frozen_shardings: Any
    batch_sharding: NamedSharding
    replicated: NamedSharding
    step_fn: Callable
    attention: str  # the attention implementation (models/layers.py) for the mesh's platform or config.model.attention
    compiled: dict = dataclasses.field(default_factory=dict)
    flops_per_step: dict = dataclasses.field(default_factory=dict)
    compile_seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def use_ema(self) -> bool:
        return float(self.config.ema.decay) > 0

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def build(cls, config, workdir, devices=None) -> "Trainer":
        """``devices``: the mesh's devices (default all; tests pass a subset to compare meshes in one process)."""
        num_devices = jax.device_count() if devices is None else len(devices)
        config_lib.validate(config, num_devices, jax.process_count())
        mesh = build_mesh(config, devices)
        # the platform the step compiles for, which need not be the host's (a TPU AOT compile on a CPU)
        platform = mesh.devices.flat[0].platform
        dtype = config_lib.resolve_compute_dtype(config.compute_dtype, platform)
        rules = training_rules(config_lib.logical_rules(config), mesh)
        stage = make_stage(config, dtype)
        optimizers, schedules = {}, {}
        for group in stage.groups:
            optimizers[group], schedules[group] = state_lib.make_optimizer(
                config_lib.optimizer_section(config, group), int(config.num_steps))
        use_ema = float(config.ema.decay) > 0
        init_params = lambda rng: {g: stage.init_group(g, k)  # noqa: E731
                                   for g, k in zip(stage.groups, jax.random.split(rng, len(stage.groups)))}
        with nn.logical_axis_rules(rules):
            abstract_boxed = jax.eval_shape(init_params, jax.random.key(0))
        abstract, shardings = state_lib.state_shardings(abstract_boxed, optimizers, use_ema, stage.extras_template(),
                                                        mesh, rules)
        frozen_abstract = {name: jax.eval_shape(lambda k, n=name: stage.init_frozen_component(n, k),
                                                jax.random.key(0)) for name in stage.frozen_components}
        with nn.logical_axis_rules(rules):
            frozen_shardings = {name: logical_to_shardings(tree, mesh, rules) for name, tree in frozen_abstract.items()}
        batch_sharding = partitioning.batch_sharding(mesh, rules)
        step_fn = make_train_step(stage, optimizers, schedules, config, batch_sharding)
        attention = resolve_attention(config.model.get("attention", "auto"), platform)
        return cls(config=config, workdir=Path(workdir), mesh=mesh, rules=rules, stage=stage, optimizers=optimizers,
                   schedules=schedules, state_shardings=shardings, abstract_state=abstract,
                   frozen_shardings=frozen_shardings, batch_sharding=batch_sharding,
                   replicated=NamedSharding(mesh, PartitionSpec()), step_fn=step_fn, attention=attention)

    def context(self):
        """The mesh, logical rules and attention implementation every trace of model code needs."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        stack.enter_context(use_attention(self.attention))
        return stack

    # ---- parameters ------------------------------------------------------------------------------------------

    def _place(self, host_tree, shardings, what: str):
        """Host arrays -> global arrays on ``shardings`` (each process provides the shards it holds)."""
        def put(x, sharding):
            x = np.asarray(x, np.float32)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        try:
            return jax.tree.map(put, host_tree, shardings)
        except ValueError as err:
            raise ValueError(f"{what}: loaded parameters do not match the configured model: {err}") from err

    def init_frozen(self, rng):
        """Frozen parameters: loaded weights where the config names them, random otherwise; sharded."""
        frozen = {}
        for index, name in enumerate(self.stage.frozen_components):
            if name in self.stage.loaded:
                host = self.stage.frozen_from_loaded(name, self.stage.loaded[name][1])
                abstract = nn.unbox(jax.eval_shape(lambda k, n=name: self.stage.init_frozen_component(n, k),
                                                   jax.random.key(0)))
                _check_same_shapes(name, abstract, host)
                frozen[name] = self._place(host, self.frozen_shardings[name], name)
            else:
                key = jax.random.fold_in(rng, 1000 + index)
                with self.context():
                    frozen[name] = jax.jit(lambda k, n=name: nn.unbox(self.stage.init_frozen_component(n, k)),
                                           out_shardings=self.frozen_shardings[name])(key)
        return frozen

    def init_state(self, rng) -> state_lib.TrainState:
        """A fresh state: groups randomly initialised on their shards, then loaded weights swapped in."""
        extras = self.stage.extras_template()

        def make(key):
            params = {g: nn.unbox(self.stage.init_group(g, k))
                      for g, k in zip(self.stage.groups, jax.random.split(key, len(self.stage.groups)))}
            return state_lib.init_train_state(params, self.optimizers, self.use_ema, extras)

        loaded_any = any(self.stage.loaded_group_params(g) for g in self.stage.groups)
        with self.context():
            if not loaded_any:
                return jax.jit(make, out_shardings=self.state_shardings)(rng)
            params = jax.jit(lambda k: make(k).params, out_shardings=self.state_shardings.params)(rng)
            params = dict(params)
            for group in self.stage.groups:
                group_params = dict(params[group])
                for name, host in self.stage.loaded_group_params(group).items():
                    _check_same_shapes(name, self.abstract_state.params[group][name], host)
                    group_params[name] = self._place(host, self.state_shardings.params[group][name], name)
                params[group] = group_params
            return state_lib.state_from_params(params, self.optimizers, self.use_ema, extras, self.state_shardings,
                                               self.mesh)

    def abstract_frozen(self):
        return {name: ckpt_lib.abstract_with_shardings(
            nn.unbox(jax.eval_shape(lambda k, n=name: self.stage.init_frozen_component(n, k), jax.random.key(0))),
            self.frozen_shardings[name]) for name in self.stage.frozen_components}

    def restore_target(self):
        return ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)

    # ---- batches and compilation -----------------------------------------------------------------------------

    def device_batch(self, host_batch: dict) -> dict:
        return self.place_batch(self.stage.host_batch(host_batch))

    def place_batch(self, arrays: dict) -> dict:
        """This process's rows of a prepared batch (``stage.host_batch``) -> global arrays on the batch sharding."""
        return global_batch(arrays, self.mesh, self.batch_sharding.spec)

    def compile(self, state, frozen, batch, key, options):
        """The step compiled (ahead of time) for ``options``; its FLOPs come from XLA's cost analysis."""
        if options in self.compiled:
            return self.compiled[options]
        jitted = jax.jit(lambda s, f, b, k: self.step_fn(s, f, b, k, options),
                         in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_sharding,
                                       self.replicated),
                         out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))
        started = time.perf_counter()
        with self.context():
            lowered = jitted.lower(state, frozen, batch, key)
        self.compile_seconds[("lower", options)] = time.perf_counter() - started
        compiled = compile_lowered(lowered, platform=self.mesh.devices.flat[0].platform)
        self.compile_seconds[options] = time.perf_counter() - started
        log.info("compiled the %s step (options=%r) in %.1f s", self.stage.name, options, self.compile_seconds[options])
        self.compiled[options] = compiled
        self.flops_per_step[options] = metrics_lib.compiled_flops(compiled)
        return compiled

    def step(self, state, frozen, batch, key, options):
        compiled = self.compile(state, frozen, batch, key, options)
        with self.context():
            return compiled(state, frozen, batch, key)

    def initial_extras(self, frozen, batch, key):
        fn = jax.jit(self.stage.initial_extras, out_shardings=self.replicated)
        with self.context():
            return fn(frozen, batch, key)

    def export_params(self, state) -> dict:
        """The parameters to export: the EMA copy when kept."""
        return state.ema if state.ema else state.params

    # ---- the run ---------------------------------------------------------------------------------------------

    def run(self, stop_at_step: int | None = None) -> dict:
        return _run(self, stop_at_step)


def _check_same_shapes(name: str, expected, got) -> None:
    problem = components.shape_mismatch(expected, got)
    if problem:
        raise ValueError(f"the weights loaded for {name!r} do not fit config.model.{name}: {problem}")


def _save_run_config(config, workdir: Path) -> None:
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True)
                                         if hasattr(config, "to_json_best_effort") else json.dumps(dict(config)))


def _run(trainer: Trainer, stop_at_step: int | None) -> dict:
    config, workdir = trainer.config, trainer.workdir
    num_steps = int(config.num_steps)
    _save_run_config(config, workdir)
    writer = metrics_lib.MetricWriter(workdir, tensorboard=bool(config.log.tensorboard), jsonl=bool(config.log.jsonl))
    # Several processes must agree on the step at which they save: jax's preemption service does (SIGTERM to any
    # process -> reached_preemption at the same step everywhere), a per-process flag would not.
    preemption = ckpt_lib.PreemptionFlag(signals=() if jax.process_count() > 1 else (signal.SIGTERM,))
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", int(config.checkpoint.every_steps),
                                         int(config.checkpoint.keep), bool(config.checkpoint.async_save))
    train_source, held_out_source = held_out_lib.split_sources(config)
    iterator = make_dataset(data_config(config), seed=int(config.seed), source=train_source,
                            rows=partitioning.process_batch_rows(trainer.batch_sharding, int(config.batch_size)))
    evaluator = held_out_lib.HeldOutEvaluator(trainer, held_out_source) if held_out_source is not None else None
    every_eval, every_metrics = int(config.eval.every_steps), int(config.eval.metrics_every_steps)
    generation_metrics = (held_out_metrics.HeldOutMetrics(trainer, evaluator.references)
                          if evaluator is not None and every_metrics > 0 else None)
    base_key = jax.random.key(int(config.seed))
    init_key, base_key = jax.random.split(base_key)
    summary: dict[str, Any] = {"stage": trainer.stage.name, "workdir": str(workdir), "preempted": False}
    timings: dict[str, float] = {}
    summary["timings"] = timings
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock[0]
        clock[0] = now

    try:
        # ---- frozen networks: saved once, so that randomly initialised ones stay the same across restarts
        frozen_dir = workdir / "frozen"
        dist.sync("frozen-check")  # every process decides on the same view of the workdir
        if trainer.stage.frozen_components and frozen_dir.is_dir():
            frozen = ckpt_lib.restore_frozen(frozen_dir, trainer.abstract_frozen())
        else:
            frozen = trainer.init_frozen(init_key)
            if trainer.stage.frozen_components:
                ckpt_lib.save_frozen(frozen_dir, frozen)
        lap("frozen")

        # ---- state: resume from the latest complete checkpoint, or start fresh
        latest = checkpointer.latest_step() if config.checkpoint.restore else None
        first_batch = None
        if latest is not None:
            state = checkpointer.restore(latest, trainer.restore_target(), iterator)
            log.info("resumed from step %d", latest)
            summary["resumed_from"] = int(latest)
        else:
            state = trainer.init_state(init_key)
            first_batch = trainer.device_batch(next(iterator))
            extras = trainer.initial_extras(frozen, first_batch, jax.random.fold_in(init_key, 7))
            if extras:
                state = state.replace(extras=jax.device_put(extras, trainer.replicated))
        start = int(jax.device_get(state.step))
        lap("state")
        summary["start_step"] = start
        n_params = {g: config_lib.count_params(p) for g, p in state.params.items()}
        log.info("stage %s: %s trainable parameters, mesh %s", trainer.stage.name,
                 {g: config_lib.describe_size(n) for g, n in n_params.items()}, dict(trainer.mesh.shape))
        summary["num_params"] = n_params

        sample_batch = None
        progress = None
        if config.log.progress_bar and jax.process_index() == 0:
            from tqdm.auto import tqdm

            progress = tqdm(total=num_steps, initial=start, desc=f"train {trainer.stage.name}", dynamic_ncols=True)
        throughput = None
        pending = None  # (step, metrics) of the previous step, read one step late to keep the device busy
        last_metrics: dict = {}
        last_saved = start if latest is not None else None
        step = start
        stop = num_steps if stop_at_step is None else min(num_steps, stop_at_step)
        while step < stop:
            host = first_batch if first_batch is not None else trainer.device_batch(next(iterator))
            first_batch = None
            if sample_batch is None:
                sample_batch = host
            options = trainer.stage.step_options(step)
            lap("data")
            state, step_metrics = trainer.step(state, frozen, host, base_key, options)
            step += 1
            if throughput is None:  # the first step includes compilation: time from the second
                jax.block_until_ready(step_metrics)
                lap("first_step")
                flops = trainer.flops_per_step.get(options)
                device = trainer.mesh.devices.flat[0]
                dtype_name = "bfloat16" if config_lib.resolve_compute_dtype(
                    config.compute_dtype, device.platform) == jnp.bfloat16 else "float32"
                throughput = metrics_lib.Throughput(int(config.batch_size), flops, trainer.mesh.size,
                                                    metrics_lib.peak_flops_per_device(device, dtype_name))
            else:
                throughput.tick()
            if pending is not None:
                _check_nonfinite(pending[1], int(config.max_consecutive_nonfinite), pending[0])
            pending = (step, step_metrics)

            if step % int(config.log.every_steps) == 0 or step == stop:
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                _check_nonfinite(step_metrics, int(config.max_consecutive_nonfinite), step)
                values.update(throughput.report())
                flops = trainer.flops_per_step.get(options)
                if flops:
                    values["perf/flops_per_step"] = flops * trainer.mesh.size
                writer.scalars(step, values)
                last_metrics = values
                if progress is not None:
                    progress.set_postfix_str(metrics_lib.format_metrics(
                        values, [k for k in values if k.endswith("loss")] + ["perf/steps_per_s"]))
            if progress is not None:
                progress.update(1)

            every_sample = int(config.log.sample_every_steps)
            if every_sample > 0 and step % every_sample == 0:
                _write_samples(trainer, state, frozen, sample_batch, base_key, step, writer)
            if evaluator is not None and (step % every_eval == 0 or step == num_steps):
                lap("steps")
                summary["eval"] = _evaluate(trainer, evaluator, state, frozen, step, writer)
                lap("eval")
            if generation_metrics is not None and (step % every_metrics == 0 or step == num_steps):
                lap("steps")
                summary["eval_metrics"] = _generation_metrics(generation_metrics, state, frozen, step, writer)
                lap("eval_metrics")

            lap("steps")
            if step % int(config.checkpoint.every_steps) == 0 and step < num_steps:
                checkpointer.save(step, state, iterator, force=True)
                last_saved = step
                lap("checkpoint")
            if preemption or checkpointer.reached_preemption(step):
                log.warning("preemption signal: saving step %d and stopping", step)
                if last_saved != step:
                    checkpointer.save(step, state, iterator, force=True)
                    last_saved = step
                checkpointer.wait()
                summary["preempted"] = True
                break

        if pending is not None:
            _check_nonfinite(pending[1], int(config.max_consecutive_nonfinite), pending[0])
        if progress is not None:
            progress.close()
        final_step = int(jax.device_get(state.step))
        summary["final_step"] = final_step
        if not summary["preempted"]:
            if config.checkpoint.save_final and last_saved != final_step:
                checkpointer.save(final_step, state, iterator, force=True)
            if final_step >= num_steps:
                summary["export"] = str(export_lib.export_stage(trainer, *_exportable(state, frozen),
                                                                workdir / "export"))
                lap("export")
                every_sample = int(config.log.sample_every_steps)
                if every_sample > 0 and final_step % every_sample and sample_batch is not None:
                    _write_samples(trainer, state, frozen, sample_batch, base_key, final_step, writer)
        checkpointer.wait()
        lap("checkpoint")
        summary["skipped_steps"] = int(jax.device_get(state.skipped))
        summary["last_metrics"] = last_metrics
        return summary
    finally:
        checkpointer.close()
        writer.close()
        preemption.restore_handlers()
        if hasattr(iterator, "close"):
            try:
                iterator.close()
            except Exception:  # noqa: BLE001
                pass


def _check_nonfinite(step_metrics, limit: int, step: int) -> None:
    consecutive = int(jax.device_get(step_metrics["consecutive_nonfinite"]))
    if consecutive >= limit:
        raise NonFiniteError(
            f"{consecutive} consecutive steps (up to step {step}) had a non-finite loss or gradient; their updates "
            f"were skipped and the run is stopped (max_consecutive_nonfinite={limit}). Lower the learning rate, "
            "check the data for NaN/inf, or use float32 compute.")


def _evaluate(trainer: Trainer, evaluator: held_out_lib.HeldOutEvaluator, state, frozen, step: int,
              writer) -> dict[str, float]:
    """The held-out losses of the parameters the run would export now, logged as ``eval/<name>``."""
    values = evaluator(trainer.export_params(state), frozen, state.extras)
    writer.scalars(step, {f"eval/{name}": value for name, value in values.items()})
    log.info("step %d held-out (%d clips): %s", step, evaluator.clips, metrics_lib.format_metrics(values, list(values)))
    return values


def _exportable(state, frozen):
    """``(state, frozen)`` whole on every host: parameters sharded across processes are gathered."""
    if jax.process_count() == 1:
        return state, frozen
    return (state.replace(params=dist.gather_to_host(state.params), ema=dist.gather_to_host(state.ema)),
            dist.gather_to_host(frozen))


def _generation_metrics(metrics: held_out_metrics.HeldOutMetrics, state, frozen, step: int, writer) -> dict:
    """The field's metrics of clips generated from held-out captions, logged as ``eval/<metric>``; a failure is
    logged and training goes on."""
    try:
        values = metrics(*_exportable(state, frozen), step)
    except Exception as err:  # noqa: BLE001 -- an evaluation problem must never stop training
        log.warning("generation metrics at step %d failed: %s: %s", step, type(err).__name__, err)
        return {}
    writer.scalars(step, {f"eval/{name}": value for name, value in values.items()})
    log.info("step %d generation metrics: %s", step, metrics_lib.format_metrics(values, list(values)))
    return values


def _write_samples(trainer: Trainer, state, frozen, batch, base_key, step: int, writer) -> None:
    """Audio and spectrogram samples from the stage (when it makes any)."""
    try:
        key = jax.random.fold_in(jax.random.fold_in(base_key, 1 << 20), step)
        with trainer.context():
            out = trainer.stage.samples(trainer.export_params(state), frozen, state.extras, batch, key)
        out = dist.gather_to_host(out) if jax.process_count() > 1 else out
        for name, item in out.items():
            if item.get("waveform") is not None:
                writer.audio(step, f"samples/{name}", np.asarray(item["waveform"]))
            if item.get("mel") is not None:
                writer.spectrogram(step, f"samples/{name}", np.asarray(item["mel"]))
    except Exception as err:  # noqa: BLE001 -- a failed sample must never stop training
        log.warning("writing samples at step %d failed: %s", step, err)


def train(config, workdir) -> dict:
    """Sets up the runtime, builds the trainer and runs ``config.stage``; returns the run's summary."""
    setup_runtime(config)
    # In a multi-process run an error in one process stops all of them, each reporting its index.
    with dist.exit_together({config_lib.ConfigError: 2, NonFiniteError: 2}):
        trainer = Trainer.build(config, workdir)
        return trainer.run()
