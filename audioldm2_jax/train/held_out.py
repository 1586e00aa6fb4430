"""Evaluation on held-out clips during training (``config.eval``).

Every ``eval.every_steps`` steps and at the last step the trainer evaluates the parameters it would export (the EMA
copy when kept) on a held-out split of the data (:mod:`audioldm2_jax.data.split`, or ``eval.path`` /
``eval.tfds_split``) and logs ``eval/<name>`` to ``metrics.jsonl`` and TensorBoard. What is measured is the stage's
(:meth:`~audioldm2_jax.train.stages.Stage.held_out_losses`): the denoising loss at fixed noise and fixed, stratified
timesteps for the LDM, GPT-2's LOA loss, the VAE's and the vocoder's reconstruction losses, the masked-patch loss of
AudioMAE. Every random draw is a function of the clip's number in the held-out set and ``eval.seed``, so a value
depends on the parameters alone: points are comparable across steps, runs and model sizes (what scaling-law fits
need), and a restarted run evaluates exactly what the uninterrupted one would have.

A stage returns ``{name: (sum, count)}`` per batch; the values are ``sum / count`` over the whole split, so they do
not depend on how the clips are batched.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.data.pipeline import DataConfig, make_dataset, make_source
from audioldm2_jax.data.split import split_held_out
from audioldm2_jax.parallel import partitioning
from audioldm2_jax.train.config import ConfigError, data_config

log = logging.getLogger(__name__)

# The key of each batch's clip numbers (int32 [B]: the clip's position in the held-out split).
CLIP_INDEX = "eval_index"


# ---- what stages return ----------------------------------------------------------------------------------------


def total(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum, count)`` of per-example (or per-draw) values, float32."""
    values = values.astype(jnp.float32)
    return jnp.sum(values), jnp.asarray(values.size, jnp.float32)


def batch_mean(mean: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``(sum, count)`` of a loss that is already a mean over ``batch_size`` equally shaped examples."""
    return mean.astype(jnp.float32) * batch_size, jnp.asarray(batch_size, jnp.float32)


def timestep_bands(errors: jax.Array, num_train_timesteps: int, prefix: str = "loss") -> dict:
    """The denoising errors ``[B, K]`` of :func:`~audioldm2_jax.diffusion.fixed_draw_errors` as ``{prefix: all draws,
    prefix_t<lo>-<hi>: the draws of stratum k}`` (draw ``k`` of every clip lies in stratum ``k``)."""
    per_clip = errors.shape[1]
    out = {prefix: total(errors)}
    for k in range(per_clip):
        lo, hi = k * num_train_timesteps // per_clip, (k + 1) * num_train_timesteps // per_clip - 1
        out[f"{prefix}_t{lo}-{hi}"] = total(errors[:, k])
    return out


def eval_key(seed: int) -> jax.Array:
    """The key of every held-out draw: threefry whatever the run's PRNG, because the draws are made per clip under
    ``vmap``, and only threefry gives a clip the same values whichever batch (and row) it is evaluated in (the rbg
    implementations the CPU runs use may not)."""
    return jax.random.key(int(seed), impl="threefry2x32")


# ---- the evaluator ---------------------------------------------------------------------------------------------


def split_sources(config) -> tuple[Any, Any]:
    """``(training source, held-out source)`` of the run's data: held-out ``None`` when evaluation is off. With
    ``eval.path`` / ``eval.tfds_split`` the held-out clips come from there and training keeps every clip."""
    data = DataConfig.from_config(data_config(config))
    source = make_source(data)
    ev = config.eval
    if int(ev.every_steps) <= 0:
        return source, None
    if ev.path or ev.tfds_split:
        if ev.path and ev.tfds_split:
            raise ConfigError("config error: set eval.path (a manifest or ArrayRecord location) or eval.tfds_split, "
                              "not both")
        if ev.tfds_split and data.source != "tfds":
            raise ConfigError(f"config error: eval.tfds_split={ev.tfds_split!r} names a TFDS split, but "
                              f"data.source={data.source!r}; use eval.path for held-out files")
        if ev.path and data.source not in ("manifest", "array_record"):
            raise ConfigError(f"config error: eval.path names held-out files, which data.source={data.source!r} does "
                              "not read: TFDS takes eval.tfds_split (e.g. 'test'); leave both empty to hold out "
                              "procedural clips")
        held = make_source(dataclasses.replace(data, path=ev.path or data.path, split=ev.tfds_split or data.split))
        return source, held
    try:
        return split_held_out(source, float(ev.held_out_fraction), int(ev.max_clips), int(ev.seed))
    except ValueError as err:
        raise ConfigError(f"config error: eval.held_out_fraction / eval.max_clips: {err}") from err


class HeldOutEvaluator:
    """The held-out batches (this process's rows, prepared by the stage) and the evaluation program, compiled on
    first use for the parameters' shardings."""

    def __init__(self, trainer, source):
        """Reads the held-out ``source`` once: batches of ``eval.batch_size`` (default the training batch, or fewer when
        the split is smaller) in a fixed order, with the clips' starts (no random crop) and fixed captions; a last
        partial batch is left out."""
        config = trainer.config
        ev = config.eval
        self.trainer = trainer
        divisor = partitioning.batch_size_divisor(trainer.rules, trainer.mesh)
        # default: the training batch, or the held-out clips that split evenly over the devices when fewer
        self.batch_size = int(ev.batch_size) or min(int(config.batch_size), len(source) // divisor * divisor)
        if self.batch_size % divisor or len(source) < self.batch_size or self.batch_size == 0:
            raise ConfigError(f"config error: the held-out split has {len(source)} clips and eval.batch_size="
                              f"{int(ev.batch_size)} (0: the training batch, {int(config.batch_size)}): a held-out "
                              f"batch needs at least one clip per device of the batch axes ({divisor}), a multiple "
                              "of them, and no more clips than the split has; raise eval.held_out_fraction / "
                              "eval.max_clips or set eval.batch_size")
        started = time.perf_counter()
        # (caption, waveform) of the first held-out clips, for the generation metrics (held_out_metrics.py)
        self.references: list[tuple[str, np.ndarray]] = []
        self.batches = self._read(source, int(ev.num_generated) if int(ev.metrics_every_steps) > 0 else 0)
        self.clips = len(self.batches) * self.batch_size
        self.seconds = {"read": time.perf_counter() - started}
        key = eval_key(int(ev.seed))
        per_clip = int(ev.timesteps_per_clip)
        self._jitted = jax.jit(lambda params, frozen, extras, batch: trainer.stage.held_out_losses(
            params, frozen, extras, batch, key, per_clip), out_shardings=trainer.replicated)
        self._program = None

    def _read(self, source, keep_references: int) -> list[dict]:
        trainer = self.trainer
        data = data_config(trainer.config, self.batch_size)
        # one pass in a fixed order, in this process (no worker processes for a small set)
        data.update(shuffle=False, num_epochs=1, random_crop=False, num_workers=0)
        rows = partitioning.process_batch_rows(trainer.batch_sharding, self.batch_size)
        iterator = make_dataset(data, seed=int(trainer.config.eval.seed), source=source, rows=rows)
        batches = []
        for index, host in enumerate(iterator):  # no worker processes: nothing to close
            prepared = trainer.stage.host_batch(host)
            for caption, wave, samples in zip(host["caption"], host["waveform"], host["num_samples"]):
                if len(self.references) < keep_references:
                    self.references.append((str(caption), np.asarray(wave[:int(samples)], np.float32)))
            prepared[CLIP_INDEX] = (index * self.batch_size + np.arange(*rows)).astype(np.int32)
            batches.append(prepared)
        if jax.process_count() > 1:  # a clip skipped on one host only: every host evaluates as many batches
            batches = batches[:int(np.min(multihost_utils.process_allgather(np.asarray(len(batches)))))]
        skipped = iterator.skip_report()
        if not batches:
            raise ConfigError(f"config error: no usable held-out batch of {self.batch_size} clips in {source!r}"
                              + (f" ({skipped})" if skipped else ""))
        log.info("held-out evaluation: %d batches of %d clips from %r%s", len(batches), self.batch_size, source,
                 f"; {skipped}" if skipped else "")
        return batches

    def __call__(self, params, frozen, extras) -> dict[str, float]:
        """``{name: value}`` of the stage's held-out losses for ``params`` (the export's: EMA when kept)."""
        trainer = self.trainer
        started = time.perf_counter()
        sums: dict[str, list[float]] = {}
        for host in self.batches:
            batch = trainer.place_batch(host)
            with trainer.context():
                if self._program is None:
                    self._program = compile_lowered(self._jitted.lower(params, frozen, extras, batch),
                                                    platform=trainer.mesh.devices.flat[0].platform)
                    self.seconds["compile"] = time.perf_counter() - started
                out = self._program(params, frozen, extras, batch)
            for name, (value, count) in jax.device_get(out).items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += float(value)
                acc[1] += float(count)
        self.seconds["last"] = time.perf_counter() - started
        return {name: value / max(count, 1.0) for name, (value, count) in sums.items()}
