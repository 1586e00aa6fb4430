"""Where the evaluation's feature extractors run: a data-parallel mesh of this process's devices.

Each batch of clips is split over the devices along its rows and every network's parameters are replicated (the
extractors are small next to an accelerator's memory, and inference needs no parameter sharding). The mesh has the
project's axis names (``data`` = all the devices, ``fsdp`` = ``tensor`` = 1) and the batch goes where the default
rules put ``act_batch`` (:func:`audioldm2_jax.parallel.partitioning.batch_sharding`), as the pipeline places its
batches, so the models' logical activation constraints mean the same thing here. Batches are padded to a multiple
of the device count by the callers and the padding rows dropped: rows never interact in these networks (BatchNorm
is frozen), so a clip's features do not depend on the device count.

Programs are compiled ahead of time with the project's XLA options (:func:`audioldm2_jax.compilation.compile_lowered`,
as the pipeline compiles): on XLA:CPU, YNNPACK's library fusions run VGGish's convolutions on a batch of 8 examples
about 7x slower than XLA's own emitters (3.4 s against 0.3-0.55 s on the shared 2-core CPU; equal from 16 examples
on), docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax.compilation import compile_lowered
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, batch_sharding, batch_size_divisor, make_mesh

# Compiled programs by (function, devices, argument structure and shapes), least recently used first. Bounded: an
# evaluation creates new CLAP functions with each ClapEmbedder, and old ones must not pile up.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
MAX_COMPILED = 32


def local_devices(devices: int | Sequence[jax.Device] | None = None) -> list[jax.Device]:
    """``None``: every device of this process; an int ``n``: the first ``n`` of them; or the devices given. A count
    outside ``1 .. len(jax.local_devices())`` or an empty sequence is a ValueError."""
    available = jax.local_devices()
    if devices is None:
        return list(available)
    if isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: this process has {len(available)} device(s) "
                             f"({available[0].platform}); choose 1 .. {len(available)}")
        return list(available[:int(devices)])
    chosen = list(devices)
    if not chosen:
        raise ValueError("devices: an empty list")
    return chosen


class BatchMesh:
    """A mesh ``{"data": n, "fsdp": 1, "tensor": 1}`` over ``devices`` (see :func:`local_devices`).

    ``size``: how many rows a batch must be a multiple of (the device count); :meth:`rows` rounds a batch size up to
    it; :meth:`replicate` places a parameter tree on every device; :meth:`split` places a batch ``[B, ...]`` (``B`` a
    multiple of ``size``) one contiguous share of rows per device; :meth:`call` runs a function on arguments
    placed so, compiled once per function and shapes; :meth:`context` is where it traces (the mesh and the
    logical-axis rules)."""

    def __init__(self, devices: int | Sequence[jax.Device] | None = None):
        chosen = local_devices(devices)
        self.mesh = make_mesh({"data": len(chosen), "fsdp": 1, "tensor": 1}, devices=chosen)
        self.rules = DEFAULT_RULES
        self.size = batch_size_divisor(self.rules, self.mesh)
        self._split = batch_sharding(self.mesh, self.rules)
        self._whole = NamedSharding(self.mesh, PartitionSpec())
        self.key = tuple(d.id for d in chosen)  # identifies the placement (replicas and programs are cached per key)
        self.platform = chosen[0].platform

    def rows(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a multiple of :attr:`size`."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: at least 1 clip per batch")
        return -(-batch_size // self.size) * self.size

    def replicate(self, tree: Any) -> Any:
        """Every leaf whole on every device (from host copies: one transfer per device, no resharding program)."""
        return jax.device_put(jax.device_get(tree), self._whole)

    def split(self, batch: Any) -> jax.Array:
        """``[B, ...]`` host or device array -> device array whose rows are split over the devices."""
        batch = batch if isinstance(batch, jax.Array) else np.asarray(batch)
        if batch.shape[0] % self.size:
            raise ValueError(f"a batch of {batch.shape[0]} rows does not split over {self.size} devices; pad it to "
                             f"a multiple of {self.size} (BatchMesh.rows)")
        return jax.device_put(batch, self._split)

    def call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` jitted, for arguments placed by :meth:`replicate` / :meth:`split` (or None): compiled with
        the project's XLA options the first time a function meets these devices and argument shapes."""
        leaves, treedef = jax.tree.flatten(args)
        key = (fn, self.key, treedef, tuple((x.shape, str(x.dtype)) for x in leaves))
        compiled = _COMPILED.get(key)
        if compiled is None:
            with self.context():
                compiled = compile_lowered(jax.jit(fn).lower(*args), platform=self.platform)
            _COMPILED[key] = compiled
            while len(_COMPILED) > MAX_COMPILED:
                _COMPILED.popitem(last=False)
        else:
            _COMPILED.move_to_end(key)
        return compiled(*args)

    @contextlib.contextmanager
    def context(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def describe(self) -> dict:
        """What the results record: the device count and platform."""
        return {"devices": self.size, "platform": self.platform}


def pad_rows(batch: np.ndarray, rows: int) -> np.ndarray:
    """``[B, ...]`` -> ``[rows, ...]`` (``rows >= B``), the extra rows copies of the last one: valid inputs for any
    network (a row of zeros is not, e.g. an all-padding attention mask), dropped after the call."""
    batch = np.asarray(batch)
    if rows < batch.shape[0]:
        raise ValueError(f"pad_rows: {batch.shape[0]} rows do not fit in {rows}")
    if rows == batch.shape[0]:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], rows - batch.shape[0], axis=0)])
