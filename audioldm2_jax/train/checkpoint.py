"""Checkpoints: orbax's CheckpointManager with the train state and the input pipeline's state side by side, resume
from the latest complete step onto any mesh, preemption (SIGTERM) handling, and the once-per-run copy of the frozen
networks.

Layout of a workdir::

    checkpoints/<step>/state/     the TrainState (orbax, sharded arrays)
    checkpoints/<step>/data/      process_<i>-of-<n>.json: each host's grain iterator state
    frozen/                       frozen parameters, written once when the run starts
    export/                       inference components (see audioldm2_jax.train.export)

Multi-process runs write one checkpoint together: each process writes the array shards it holds (orbax; process 0
writes the metadata and renames the finished step) and its own ``data/process_<i>-of-<n>.json``. Arrays restore onto
any mesh and any number of processes; the input pipeline's state of another number of processes resumes at the
same global batch (see :mod:`audioldm2_jax.data.pipeline`).

Saves are asynchronous (the arrays are copied off the devices, then written in the background while training
goes on). A step's directory is written under a temporary name and renamed when complete, so a save cut short by a
hard kill is never mistaken for a checkpoint: resume takes the latest *finalised* step. The input pipeline's state
is captured when the save is requested (the iterator itself keeps moving while the write finishes).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class _IteratorSnapshot:
    """The state of a data iterator frozen at save time, in the form grain's checkpoint handler writes
    (``get_state() -> bytes``); restore reads it back the same way."""

    def __init__(self, state: dict | None = None):
        self._state = json.dumps(state).encode() if state is not None else b"null"

    def get_state(self) -> bytes:
        return self._state

    def set_state(self, state: bytes) -> None:
        self._state = state

    def start_prefetch(self) -> None:  # called by grain's handler after a restore
        pass

    @property
    def state(self) -> dict | None:
        return json.loads(self._state.decode() if isinstance(self._state, bytes) else self._state)


class Checkpointer:
    """Saves every ``every_steps`` steps (plus forced saves), keeps the last ``keep``."""

    def __init__(self, directory: str | Path, every_steps: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(every_steps), 1), max_to_keep=int(keep) if keep else None,
            enable_async_checkpointing=bool(async_save), create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        data = _IteratorSnapshot(data_iterator.get_state() if data_iterator is not None else None)
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data)), force=force)
        if saved:
            log.info("checkpoint %d requested", step)
        return saved

    def restore(self, step: int, abstract_state, data_iterator=None):
        """The state at ``step`` placed as ``abstract_state``'s shardings say (any mesh, any number of processes);
        sets the data iterator."""
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        if data_iterator is not None:
            data_state = read_data_state(self.directory / str(step) / "data")
            if data_state is not None:
                data_iterator.set_state(data_state)
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True when jax's preemption service (multi-host runs) says every host has reached a sync point."""
        try:
            return bool(self.manager.reached_preemption(step))
        except Exception:  # noqa: BLE001 -- no preemption service in single-process runs
            return False

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def read_data_state(directory: str | Path, process_index: int | None = None,
                    process_count: int | None = None) -> dict | None:
    """The input pipeline's state for this process from a step's ``data/`` folder: its own file when the step was
    written by as many processes, otherwise process 0's (every process of a run is at the same global batch;
    checked), which the iterator maps onto the new layout. None when no state was saved."""
    directory = Path(directory)
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    own = directory / f"process_{index}-of-{count}.json"
    if own.is_file():
        return json.loads(own.read_text())
    files = {}
    for path in directory.glob("process_*-of-*.json"):
        match = _DATA_FILE.fullmatch(path.name)
        if match:
            files[(int(match.group(1)), int(match.group(2)))] = path
    counts = sorted({n for _, n in files})
    if not counts:
        if directory.is_dir():
            raise FileNotFoundError(f"{directory} holds no input-pipeline state (process_<i>-of-<n>.json)")
        return None
    if len(counts) > 1:
        raise ValueError(f"{directory} mixes input-pipeline states of {counts} processes")
    saved_count = counts[0]
    missing = sorted(set(range(saved_count)) - {i for i, _ in files})
    if missing:
        raise ValueError(f"{directory}: the states of processes {missing} of {saved_count} are missing")
    states = [json.loads(files[(i, saved_count)].read_text()) for i in range(saved_count)]
    if any(s is None for s in states):
        return None
    positions = {s.get("batches") for s in states}
    if len(positions) != 1:
        raise ValueError(f"{directory}: the {saved_count} processes saved different global batch positions "
                         f"{sorted(positions, key=str)}")
    log.info("input pipeline: step written by %d processes, read by process %d of %d", saved_count, index, count)
    return states[0]


def abstract_with_shardings(abstract_tree, shardings):
    """``ShapeDtypeStruct`` leaves carrying the target shardings (what StandardRestore places onto)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def save_frozen(directory: str | Path, frozen) -> None:
    """The frozen parameters, written once (synchronously) at the start of a run."""
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, frozen)
        checkpointer.wait_until_finished()


def restore_frozen(directory: str | Path, abstract_frozen):
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, abstract_frozen)


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT when asked): the loop then saves a checkpoint and returns cleanly."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
