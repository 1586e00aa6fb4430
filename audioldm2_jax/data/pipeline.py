"""The input pipeline: source -> shuffle -> epochs -> clip transform -> this process's rows -> workers -> batches.

Built from grain's dataset API::

    MapDataset.source(source)                                every clip, in one global order for all processes
      .shuffle(seed).repeat(num_epochs)                      seeded, reshuffled every epoch
      .random_map(ClipTransform)                             decode, crop, resample, normalise, mel, fbank
      -> ProcessRows                                         this process's rows of every global batch
      .to_iter_dataset(ReadOptions(num_threads=...))         threads inside one process
      .mp_prefetch(MultiprocessingOptions(num_workers=...))  optional worker processes
      -> drop unusable clips (counted, reported by path)
      .batch(local_batch, drop_remainder=True)               dicts of NumPy arrays

:func:`make_dataset` returns an :class:`AudioBatchIterator`, a ``grain.DatasetIterator``: ``get_state()`` is a
small JSON-able dict to save beside a training checkpoint (grain's orbax handler ``grain.checkpoint.CheckpointSave``
takes the iterator itself), and ``set_state()`` resumes exactly where it was: the same batches, in the same order,
with the same random crops and captions.

Multi-process runs: global batch ``b`` is rows ``b * G .. (b + 1) * G - 1`` of the global stream (``G`` the global
batch size), and each process reads only the rows its devices hold under the batch sharding (the trainer derives
them from the ``act_batch`` rule: :func:`audioldm2_jax.parallel.partitioning.process_batch_rows`; by default process
``p`` of ``n`` reads rows ``p * L .. (p + 1) * L - 1``, ``L = G / n``), which :func:`global_batch` places at the same
rows of the global array. The clips, their order and their random
crops depend on the seed and ``G`` only, so a run on 2 processes sees exactly the batches of a run on 1 process, and
a state saved by ``n`` processes resumes on ``m`` (at the same global batch: ``batches`` in the state). The per-clip
randomness is keyed by the position in the global stream, never by the process.

A clip that turns out unusable is skipped on its host only (the host takes the next clip of its rows), so with a
finite ``num_epochs`` the hosts' last batches can differ in number by the skips; train with ``num_epochs=None``
(repeat forever) and count steps, the usual practice for pods.

:func:`global_batch` turns each host's batch into global ``jax.Array``s over the mesh
(``jax.make_array_from_process_local_data``); string fields stay host-local NumPy arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Mapping

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from audioldm2_jax.data import transforms
from audioldm2_jax.data.procedural import ProceduralSource
from audioldm2_jax.data.sources import ArrayRecordSource, ManifestSource, TFDSSource
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, batch_sharding

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What :func:`make_dataset` reads.

    source: ``"procedural"`` | ``"manifest"`` | ``"tfds"`` | ``"array_record"``.
    path: manifest file, TFDS name, or shard directory / glob (unused for procedural).
    global_batch_size: over all hosts; each host loads ``global_batch_size // process_count``.
    clip_seconds: output length; ``clip_seconds * 16000`` samples and ``* 100`` mel frames (10.24 s -> 1024).
    num_epochs: ``None`` repeats forever.
    num_workers: grain worker processes (0: threads in the main process only); read_threads per process.
    """

    source: str = "procedural"
    path: str = ""
    split: str = "train"
    data_dir: str | None = None  # TFDS data_dir
    audio_root: str | None = None  # manifest: directory relative paths start from
    audio_template: str | None = None  # manifest: path built from the row, e.g. "{youtube_id}.wav"
    tfds_features: Mapping[str, Any] | None = None  # TFDS: {"audio": ..., "caption": ..., "labels": [...]}
    global_batch_size: int = 8
    clip_seconds: float = 10.24
    num_epochs: int | None = None
    shuffle: bool = True
    random_crop: bool = True
    crop_retries: int = 10
    silence_peak: float = 1e-4
    drop_silent: bool = True
    compute_log_mel: bool = True
    compute_fbank: bool = True
    require_text: bool = True
    num_workers: int = 0
    read_threads: int = 4
    prefetch_buffer_size: int = 16
    worker_buffer_size: int = 2
    max_consecutive_skips: int = 1000
    # procedural dataset
    procedural_clips: int = 4096
    procedural_seed: int = 0
    procedural_instruments: tuple[str, ...] | None = None
    procedural_patterns: tuple[str, ...] | None = None
    procedural_tempos: tuple[int, ...] | None = None

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * transforms.TARGET_SAMPLE_RATE))

    @classmethod
    def from_config(cls, config: Any) -> "DataConfig":
        """From a DataConfig, a dict or an ``ml_collections.ConfigDict``; unknown keys raise a ValueError."""
        if isinstance(config, cls):
            return config
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        config = dict(config)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; known: {sorted(known)}")
        for key in ("procedural_instruments", "procedural_patterns", "procedural_tempos"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        made = cls(**config)
        made.validate()
        return made

    def validate(self) -> None:
        if self.source not in ("procedural", "manifest", "tfds", "array_record"):
            raise ValueError(f"data.source={self.source!r}: expected procedural, manifest, tfds or array_record")
        if self.source != "procedural" and not self.path:
            raise ValueError(f"data.path is required for data.source={self.source!r}")
        if self.global_batch_size <= 0:
            raise ValueError(f"data.global_batch_size={self.global_batch_size} must be positive")
        if self.clip_seconds <= 0.06:
            raise ValueError(f"data.clip_seconds={self.clip_seconds} is too short (> 0.06 s needed)")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"data.num_epochs={self.num_epochs} must be positive or None")


def make_source(config: DataConfig):
    """The random-access source a config names."""
    if config.source == "procedural":
        kwargs = {}
        if config.procedural_instruments:
            kwargs["instruments"] = config.procedural_instruments
        if config.procedural_patterns:
            kwargs["patterns"] = config.procedural_patterns
        if config.procedural_tempos:
            kwargs["tempos"] = config.procedural_tempos
        return ProceduralSource(num_clips=config.procedural_clips, seed=config.procedural_seed,
                                duration=config.clip_seconds, **kwargs)
    if config.source == "manifest":
        return ManifestSource(config.path, audio_root=config.audio_root, audio_template=config.audio_template)
    if config.source == "tfds":
        return TFDSSource(config.path, split=config.split, data_dir=config.data_dir, **dict(config.tfds_features or {}))
    return ArrayRecordSource(config.path)


def _derived_seed(seed: int, *salt: int) -> int:
    return int(np.random.SeedSequence([int(seed), *map(int, salt)]).generate_state(1)[0])


class SkipLog:
    """Counts of skipped clips by reason, and the last few paths, for the run's logs."""

    def __init__(self, keep: int = 50):
        self.by_reason: collections.Counter = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=keep)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, path: str, reason: str) -> None:
        short = reason.split(":", 1)[0] if len(reason) > 60 else reason
        self.by_reason[short] += 1
        self.recent.append((path, reason))

    def report(self) -> str:
        if not self.total:
            return "no clips skipped"
        lines = [f"{self.total} clips skipped:"]
        lines += [f"  {count:6d}  {reason}" for reason, count in self.by_reason.most_common()]
        lines += ["  recent:"] + [f"    {path}: {reason}" for path, reason in list(self.recent)[-10:]]
        return "\n".join(lines)

    def state(self) -> dict:
        return {"by_reason": dict(self.by_reason), "recent": [list(item) for item in self.recent]}

    def restore(self, state: Mapping) -> None:
        self.by_reason = collections.Counter({str(k): int(v) for k, v in state.get("by_reason", {}).items()})
        self.recent.clear()
        self.recent.extend(tuple(item) for item in state.get("recent", []))


class _DropUnusable(grain.IterDataset):
    """Drops skip markers, logging each with its path and counting them in a :class:`SkipLog`."""

    def __init__(self, parent: grain.IterDataset, skip_log: SkipLog, max_consecutive: int):
        super().__init__(parent)
        self._skip_log = skip_log
        self._max_consecutive = max_consecutive

    def __iter__(self):
        return _DropUnusableIterator(self._parent.__iter__(), self._skip_log, self._max_consecutive)


class _DropUnusableIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, skip_log: SkipLog, max_consecutive: int):
        super().__init__(parent)
        self._skip_log = skip_log
        self._max_consecutive = max_consecutive

    def __next__(self):
        consecutive = 0
        while True:
            element = next(self._parent)
            if not transforms.is_skip(element):
                return element
            path, reason = element["path"], element[transforms.SKIP_KEY]
            self._skip_log.add(path, reason)
            log.warning("skipping %s: %s", path, reason)
            consecutive += 1
            if consecutive >= self._max_consecutive:
                raise RuntimeError(f"{consecutive} clips in a row were unusable; the data is broken, not noisy.\n"
                                   + self._skip_log.report())

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skipped": self._skip_log.state()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._skip_log.restore(state.get("skipped", {}))


class ProcessRows(grain.MapDataset):
    """One process's rows ``first .. first + local - 1`` of every global batch of ``parent``: element ``k`` is
    parent element ``(start_batch + k // local) * global_batch + first + k % local``; whole global batches only."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int, first: int,
                 start_batch: int = 0):
        super().__init__(parent)
        self._global, self._local, self._first, self._start = global_batch, local_batch, first, start_batch
        self._batches = max(len(parent) // global_batch - start_batch, 0)

    def __len__(self) -> int:
        return self._batches * self._local

    def _row(self, k: int) -> int:
        batch, row = divmod(k, self._local)
        return (self._start + batch) * self._global + self._first + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._row(index)]

    def __str__(self) -> str:
        return (f"ProcessRows(rows {self._first}..{self._first + self._local - 1} of every {self._global}, "
                f"from batch {self._start})")


# The parts of an iterator's fingerprint that only say how the global stream is split over processes: a state saved
# under another split resumes at the same global batch.
_LAYOUT_KEYS = ("process_index", "process_count", "local_batch_size", "first_row", "num_workers")


class AudioBatchIterator(grain.DatasetIterator):
    """Batches of one host, with checkpointable state.

    Each batch is a dict of NumPy arrays: ``waveform [B, N]``, ``log_mel [B, N // 160, 64]``, ``fbank [B, 1024,
    128]`` (when computed), ``caption [B]``, ``transcription [B]`` and ``path [B]`` (``np.str_``),
    ``num_samples [B]`` (samples before padding) and, for procedural clips, ``attributes`` (a dict of
    ``[B, ...]`` arrays). ``batches`` counts the (global) batches taken so far.
    """

    def __init__(self, parent: grain.DatasetIterator, skip_log: SkipLog, fingerprint: dict, source, config,
                 rebuild=None):
        super().__init__(parent)
        self.skip_log = skip_log
        self.fingerprint = fingerprint
        self.source = source
        self.config = config
        self.batches = 0
        self._rebuild = rebuild  # start_batch -> a fresh parent iterator (restores from another process layout)

    @property
    def local_batch_size(self) -> int:
        return self.fingerprint["local_batch_size"]

    def __next__(self) -> dict:
        batch = next(self._parent)
        self.batches += 1
        return batch

    def get_state(self) -> dict:
        return {"pipeline": self._parent.get_state(), "fingerprint": dict(self.fingerprint),
                "batches": self.batches}

    def set_state(self, state: dict) -> None:
        """Resumes from ``state``; one saved by another number of processes (or workers) resumes at its global
        batch (``state["batches"]``)."""
        saved = state.get("fingerprint", {})
        changed = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if k in saved and saved[k] != v}
        if changed and (set(changed) - set(_LAYOUT_KEYS) or self._rebuild is None or "batches" not in state):
            raise ValueError("the saved input-pipeline state belongs to a different setup; (saved, now): "
                             f"{changed}")
        if not changed:
            self._parent.set_state(state["pipeline"])
            self.batches = int(state.get("batches", 0))
            return
        batches = int(state["batches"])
        skipped = sum(state["pipeline"].get("skipped", {}).get("by_reason", {}).values()) \
            if isinstance(state.get("pipeline"), dict) else 0
        log.info("input pipeline: resuming a state saved by %s processes on %s, at global batch %d",
                 saved.get("process_count"), self.fingerprint["process_count"], batches)
        if skipped:
            log.warning("input pipeline: the saved process had skipped %d unusable clips, so its position in the "
                        "global stream is approximate", skipped)
        old = self._parent
        new = self._rebuild(batches)
        self._parents = (new,)
        self._ctx = new._ctx
        self.batches = batches
        if hasattr(old, "close"):
            try:
                old.close()
            except Exception:  # noqa: BLE001
                pass

    def skip_report(self) -> str:
        return self.skip_log.report()


def make_dataset(config: Any, process_index: int | None = None, process_count: int | None = None,
                 seed: int = 0, source=None, rows: tuple[int, int] | None = None) -> AudioBatchIterator:
    """This host's batch iterator (see the module docstring).

    Args:
      config: :class:`DataConfig`, dict or ConfigDict.
      process_index / process_count: default ``jax.process_index()`` / ``jax.process_count()``; pass them to
        simulate hosts.
      seed: shuffling and per-clip randomness (crops, caption choice) derive from it.
      source: an already built source (otherwise made from the config).
      rows: ``(first, stop)``, the rows of every global batch this process loads, as its devices hold them under
        the batch sharding (:func:`audioldm2_jax.parallel.partitioning.process_batch_rows`; the trainer passes
        them). Default: an equal share per process, ``process_index * L .. (process_index + 1) * L``.
    Raises:
      ValueError: an empty dataset, or one with fewer clips than hosts, or a batch size hosts cannot split.
    """
    config = DataConfig.from_config(config)
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside process_count={process_count}")
    if rows is None:
        if config.global_batch_size % process_count:
            raise ValueError(f"global_batch_size={config.global_batch_size} does not split over {process_count} "
                             "processes")
        local_batch = config.global_batch_size // process_count
        first_row = process_index * local_batch
    else:
        first_row, stop = (int(r) for r in rows)
        if not 0 <= first_row < stop <= config.global_batch_size:
            raise ValueError(f"rows={tuple(rows)} are not a non-empty range of the global batch of "
                             f"{config.global_batch_size}")
        local_batch = stop - first_row
    source = make_source(config) if source is None else source
    total = len(source)
    if total == 0:
        raise ValueError(f"the dataset is empty: {source!r}")
    if total < process_count:
        raise ValueError(f"{total} clips cannot be shared by {process_count} processes")
    if config.num_epochs is not None and total * config.num_epochs < config.global_batch_size:
        raise ValueError(f"{total} clips x {config.num_epochs} epochs make no batch of {config.global_batch_size}")

    ds = grain.MapDataset.source(source)
    if config.shuffle:
        ds = ds.shuffle(seed=_derived_seed(seed, 1))
    ds = ds.repeat(config.num_epochs)
    clip_transform = transforms.ClipTransform(
        clip_samples=config.clip_samples, random_crop=config.random_crop, crop_retries=config.crop_retries,
        silence_peak=config.silence_peak, drop_silent=config.drop_silent, compute_log_mel=config.compute_log_mel,
        compute_fbank=config.compute_fbank, require_text=config.require_text)
    ds = ds.random_map(clip_transform, seed=_derived_seed(seed, 2))
    skip_log = SkipLog()

    def build(start_batch: int) -> grain.DatasetIterator:
        process_rows = ProcessRows(ds, config.global_batch_size, local_batch, first_row, start_batch)
        iter_ds = process_rows.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                         prefetch_buffer_size=config.prefetch_buffer_size))
        if config.num_workers > 0:
            _ensure_absl_flags_parsed()
            iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size))
        iter_ds = _DropUnusable(iter_ds, skip_log, config.max_consecutive_skips)
        iter_ds = iter_ds.batch(local_batch, drop_remainder=True, batch_fn=transforms.collate)
        return iter_ds.__iter__()

    fingerprint = {"source": repr(source), "clips": total, "process_index": process_index,
                   "process_count": process_count, "local_batch_size": local_batch, "first_row": first_row,
                   "global_batch_size": config.global_batch_size, "seed": int(seed),
                   "clip_samples": config.clip_samples, "num_workers": config.num_workers}
    return AudioBatchIterator(build(0), skip_log, fingerprint, source, config, rebuild=build)


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside ``absl.app.run`` (notebooks, tests, plain scripts) they
    are unparsed and the first read fails. Marking them parsed keeps every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def global_batch(local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                 spec: PartitionSpec | None = None) -> dict:
    """Each host's batch -> global ``jax.Array``s split along the batch over ``spec`` (default: the axes the
    default rules map ``act_batch`` to, :func:`~audioldm2_jax.parallel.partitioning.batch_sharding`). String
    arrays stay host-local NumPy arrays."""
    sharding = batch_sharding(mesh, DEFAULT_RULES) if spec is None else NamedSharding(mesh, spec)

    def place(value):
        if isinstance(value, Mapping):
            return {key: place(item) for key, item in value.items()}
        array = np.asarray(value)
        if array.dtype.kind in "USO":
            return array
        return jax.make_array_from_process_local_data(sharding, array)

    return place(local_batch)
