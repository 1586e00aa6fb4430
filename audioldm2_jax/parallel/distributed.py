"""Multi-process JAX: starting ``jax.distributed`` from flags or the environment, and failing together.

A multi-host run is N copies of the same program (``train.py``, ``sample.py``), one per host (or, for development,
several on one machine: :mod:`audioldm2_jax.launch`). Each copy calls :func:`initialize` before touching a device:

- the coordinator, process count and process id come from explicit settings (flags), else from the environment
  (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), else from jax's cluster detection
  (SLURM, Open MPI, TPU pods, Kubernetes);
- on the CPU, cross-process collectives go through gloo (``jax_cpu_collectives_implementation``) and each process
  may simulate several devices (``JAX_NUM_CPU_DEVICES`` / ``jax_num_cpu_devices``);
- the heartbeat timeout bounds how long the others wait for a process that died: the coordination service then
  reports it to every process, and jax terminates them (``Terminating process because the JAX distributed service
  detected fatal errors``), so a hard kill never leaves the survivors hanging in a collective.

A Python exception in one process is a different failure: the process is alive (its heartbeats go on) while the
others wait for it in the next collective. :func:`exit_together` handles it: the failing process logs the error
with its index, posts it to the coordination service's key-value store and exits at once (a normal exit would wait
at jax's shutdown barrier for processes that never get there); every process watches that store
(:class:`PeerFailureWatcher`) and exits within about a second of a peer's report, naming the peer and its error.

A finished run must end as carefully: process 0 hosts the coordination service, and when it exits, any call another
process still makes to the service fails ("failed to connect to all addresses ... Connection refused"); a thread that
is inside such a call (or any call into jax's C++ runtime) when its interpreter exits aborts that process (SIGABRT).
Entry points therefore end with :func:`shutdown`: every process stops its own calls to the service, waits until all
processes have done so, and only then tears jax.distributed down (the shutdown barrier, the service last).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from typing import Iterator, Mapping, Sequence

import jax

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # also read by jax.distributed.initialize itself
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"  # also read by jax (GPU: the devices this process uses)
ENV_NUM_CPU_DEVICES = "JAX_NUM_CPU_DEVICES"  # jax's own jax_num_cpu_devices option
ENV_HEARTBEAT_TIMEOUT = "JAX_HEARTBEAT_TIMEOUT_SECONDS"
ENV_INITIALIZATION_TIMEOUT = "JAX_INITIALIZATION_TIMEOUT_SECONDS"
ENV_SHUTDOWN_TIMEOUT = "JAX_SHUTDOWN_TIMEOUT_SECONDS"
ENV_OUTPUT_LABELLED = "AUDIOLDM2_OUTPUT_LABELLED"  # set by the launcher, which labels every line itself

# Cluster managers jax.distributed detects by itself (the variables that say a job has several tasks).
_CLUSTER_TASK_COUNTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_COORDINATOR_VARIABLES = (ENV_COORDINATOR, "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")

# Exit status of a process that stops because another one failed (the launcher reports the first failure).
EXIT_PEER_FAILED = 3
EXIT_LINGER_S = 2.0
_ERROR_KEY_DIR = "audioldm2_jax/errors/"
_EXIT_KEY_DIR = "audioldm2_jax/exit/"


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """How this process joins a multi-process run. ``None`` fields are left to the environment / cluster
    detection.

    coordinator_address: ``host:port`` of process 0's coordination service.
    num_processes / process_id: the run's size and this process's index.
    local_device_ids: the accelerators this process uses (GPU hosts running one process per GPU).
    num_cpu_devices: simulated CPU devices of this process (``--xla_force_host_platform_device_count``).
    heartbeat_timeout_s: a process silent this long is declared dead and the run is stopped.
    initialization_timeout_s: how long processes wait for each other at start-up.
    shutdown_timeout_s: how long jax's shutdown barrier waits for all processes; :func:`shutdown` brings them there
        together (its own exit barrier, where a process done early waits for the others, has no time limit).
    cpu_collectives: ``gloo`` (cross-process collectives of the CPU backend) or ``mpi``.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    num_cpu_devices: int | None = None
    heartbeat_timeout_s: int = 100
    initialization_timeout_s: int = 300
    shutdown_timeout_s: int = 300
    cpu_collectives: str = "gloo"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "DistributedSettings":
        """Settings from ``JAX_*`` environment variables (see the module constants); ``overrides`` that are not
        None win (command-line flags)."""
        env = os.environ if env is None else env

        def integer(name: str) -> int | None:
            value = env.get(name, "").strip()
            if not value:
                return None
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not an integer") from None

        ids = env.get(ENV_LOCAL_DEVICE_IDS, "").strip()
        values = dict(
            coordinator_address=env.get(ENV_COORDINATOR) or None, num_processes=integer(ENV_NUM_PROCESSES),
            process_id=integer(ENV_PROCESS_ID),
            local_device_ids=tuple(int(i) for i in ids.split(",")) if ids else None,
            num_cpu_devices=integer(ENV_NUM_CPU_DEVICES))
        for name, field in (("heartbeat_timeout_s", ENV_HEARTBEAT_TIMEOUT),
                            ("initialization_timeout_s", ENV_INITIALIZATION_TIMEOUT),
                            ("shutdown_timeout_s", ENV_SHUTDOWN_TIMEOUT)):
            if integer(field) is not None:
                values[name] = integer(field)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("local_device_ids") is not None:
            values["local_device_ids"] = tuple(int(i) for i in values["local_device_ids"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes={self.num_processes} must be >= 1")
        if self.process_id is not None and self.num_processes is not None and \
                not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id={self.process_id} is outside num_processes={self.num_processes}")
        if self.num_cpu_devices is not None and self.num_cpu_devices < 1:
            raise ValueError(f"num_cpu_devices={self.num_cpu_devices} must be >= 1")
        for name in ("heartbeat_timeout_s", "initialization_timeout_s", "shutdown_timeout_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 second")
        if self.cpu_collectives not in ("gloo", "mpi"):
            raise ValueError(f"cpu_collectives={self.cpu_collectives!r} is not one of gloo, mpi")

    @property
    def explicit(self) -> bool:
        """True when this process was told (flags / JAX_NUM_PROCESSES) that it is one of several."""
        return self.num_processes is not None and self.num_processes > 1


def launched_multiprocess(settings: DistributedSettings | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when this process is one of several: explicit settings, a coordinator address, or a cluster manager
    (SLURM, Open MPI, TPU pod) running several tasks."""
    env = os.environ if env is None else env
    settings = settings or DistributedSettings.from_env(env)
    if settings.num_processes is not None:
        return settings.num_processes > 1
    if any(env.get(key) for key in _COORDINATOR_VARIABLES):
        return True
    for key in _CLUSTER_TASK_COUNTS:
        value = env.get(key, "1")
        if value.isdigit() and int(value) > 1:
            return True
    return bool(env.get("TPU_WORKER_HOSTNAMES", "").count(","))


def configure_cpu(settings: DistributedSettings) -> None:
    """Device count and collectives of the CPU backend; must run before the backend starts."""
    if settings.num_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(settings.num_cpu_devices))
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)


def initialize(settings: DistributedSettings | None = None, force: bool = False) -> bool:
    """Joins the multi-process run this process belongs to (see the module docstring); a no-op for a single
    process (unless ``force``: then jax's cluster detection must find the run) and when already initialised.
    Returns True when running as one of several processes.

    Call it before anything touches a device (``jax.devices()``, the first array)."""
    settings = settings or DistributedSettings.from_env()
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if settings.num_cpu_devices is not None:
        configure_cpu(settings)
    if not (force or launched_multiprocess(settings)) or settings.num_processes == 1:
        return False
    configure_cpu(settings)
    kwargs = dict(coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
                  process_id=settings.process_id, initialization_timeout=int(settings.initialization_timeout_s),
                  heartbeat_timeout_seconds=int(settings.heartbeat_timeout_s),
                  shutdown_timeout_seconds=int(settings.shutdown_timeout_s))
    if settings.local_device_ids is not None:
        kwargs["local_device_ids"] = list(settings.local_device_ids)
    started = time.perf_counter()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as err:
        where = settings.coordinator_address or os.environ.get(ENV_COORDINATOR) or "(cluster detection)"
        raise RuntimeError(f"process {settings.process_id} of {settings.num_processes} could not join the run at "
                           f"{where} within {settings.initialization_timeout_s} s: {err}") from err
    label_logging()
    if jax.process_index() != 0:
        # Progress and information come from process 0; warnings and errors from every process, labelled.
        logging.getLogger("audioldm2_jax").setLevel(logging.WARNING)
    PeerFailureWatcher.start()
    # Scripts that end without shutdown(): the watcher still stops before jax's own exit hook (registered when jax was
    # imported, so it runs after this one) clears the backends and tears jax.distributed down.
    atexit.register(PeerFailureWatcher.stop)
    log.warning("process %d of %d joined the run in %.1f s: %d local / %d global devices (%s)", jax.process_index(),
                jax.process_count(), time.perf_counter() - started, jax.local_device_count(), jax.device_count(),
                jax.devices()[0].platform)
    return jax.process_count() > 1


def process_label() -> str:
    return f"process {jax.process_index()}/{jax.process_count()}"


_record_factory_installed = False


def label_logging() -> None:
    """Prefixes every log record of this process with ``[process i/n]`` (multi-process runs; not under the
    launcher, which labels whole lines)."""
    global _record_factory_installed
    if _record_factory_installed or jax.process_count() == 1 or os.environ.get(ENV_OUTPUT_LABELLED):
        return
    previous = logging.getLogRecordFactory()
    prefix = f"[{process_label()}] "

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = prefix + record.msg
        return record

    logging.setLogRecordFactory(factory)
    _record_factory_installed = True


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


class PeerFailureWatcher:
    """A thread that polls the coordination service for errors posted by other processes (:func:`report_failure`)
    and stops this process when one appears.

    It is a daemon thread (it must never keep a process alive), so it has to be stopped (:meth:`stop`) before the run
    ends: a daemon thread still inside a call to the service when the interpreter exits aborts the process, and a
    call made after process 0 has torn the service down fails. It reads nothing from jax but the service: after
    jax's exit hook has cleared the backends, ``jax.process_index()`` would start a new backend (more calls to the
    service, from a process that is leaving)."""

    poll_seconds = 0.5
    join_timeout_s = 60.0
    _thread: threading.Thread | None = None
    _stop: threading.Event | None = None

    @classmethod
    def start(cls) -> None:
        if cls._thread is not None or _client() is None:
            return
        cls._stop = threading.Event()
        cls._thread = threading.Thread(target=cls._watch, args=(cls._stop, jax.process_index(), process_label()),
                                       name="peer-failure-watcher", daemon=True)
        cls._thread.start()

    @classmethod
    def stop(cls) -> None:
        """Stops the thread and waits until it has returned from its last call to the service (quick: the calls do
        not block). Idempotent."""
        thread, stop = cls._thread, cls._stop
        if thread is None or stop is None:
            return
        stop.set()
        if thread is not threading.current_thread():
            thread.join(cls.join_timeout_s)
            if thread.is_alive():
                log.warning("the peer-failure watcher did not stop within %.0f s", cls.join_timeout_s)
        cls._thread = cls._stop = None

    @classmethod
    def _watch(cls, stop: threading.Event, me: int, label: str) -> None:
        while not stop.wait(cls.poll_seconds):
            peers = peer_errors(me)
            if peers is None:  # the service is gone; jax's own error polling stops the process
                return
            if peers and not stop.is_set():
                index, message = peers[0]
                _hard_exit(EXIT_PEER_FAILED, f"[{label}] stopping: process {index} failed: {message}")


def peer_errors(me: int | None = None) -> list[tuple[int, str]] | None:
    """Errors other processes posted (``(index, message)``, by index; ``me``: this process's index, default
    ``jax.process_index()``); None when the service cannot be reached."""
    client = _client()
    if client is None:
        return []
    try:
        entries = client.key_value_dir_get(_ERROR_KEY_DIR)
    except Exception:  # noqa: BLE001
        return None
    me = jax.process_index() if me is None else me
    found = []
    for key, message in entries:
        index = key.rsplit("/", 1)[-1]
        if index.isdigit() and int(index) != me:
            found.append((int(index), message))
    return sorted(found)


# Errors of a collective whose peer went away: gloo's TCP transport, the coordination service.
_PEER_GONE_HINTS = ("Gloo", "Connection reset", "Connection closed", "UNAVAILABLE", "DEADLINE_EXCEEDED")


def report_failure(err: BaseException) -> None:
    """Logs ``err`` with this process's index and posts it for the other processes (best effort)."""
    summary = f"{type(err).__name__}: {err}"
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    hint = ""
    if any(h in summary for h in _PEER_GONE_HINTS):
        hint = "\n(a collective lost its peer: another process has probably died; its own log says why)"
    print(f"[{process_label()}] failed: {details}{hint}", file=sys.stderr, flush=True)
    client = _client()
    if client is not None:
        try:
            client.key_value_set(f"{_ERROR_KEY_DIR}{jax.process_index()}", summary[:2000])
        except Exception:  # noqa: BLE001 -- the service may be gone already
            pass


def _hard_exit(code: int, message: str | None = None) -> None:
    if message:
        print(message, file=sys.stderr, flush=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


@contextlib.contextmanager
def exit_together(exit_codes: Mapping[type, int] | None = None) -> Iterator[None]:
    """In a multi-process run, an exception leaving the block is logged with the process index, posted to the
    other processes (which then stop too) and ends this process at once with ``exit_codes[type]`` (default 1).
    Outside multi-process runs, exceptions pass through unchanged."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001
        if not (jax.distributed.is_initialized() and jax.process_count() > 1):
            raise
        if isinstance(err, SystemExit) and err.code in (None, 0):
            raise
        peers = peer_errors()
        if peers:  # a consequence of another process's failure (its exit broke a collective): name the cause
            index, message = peers[0]
            _hard_exit(EXIT_PEER_FAILED, f"[{process_label()}] stopping: process {index} failed: {message} (here: "
                                         f"{type(err).__name__}: {str(err)[:300]})")
        report_failure(err)
        if jax.process_index() == 0:
            # Process 0 hosts the coordination service, whose end aborts the others at once: linger so that their
            # watchers read the report first and say what happened.
            time.sleep(EXIT_LINGER_S)
        code = 1
        for kind, value in (exit_codes or {}).items():
            if isinstance(err, kind):
                code = value
                break
        if isinstance(err, SystemExit) and isinstance(err.code, int):
            code = err.code
        _hard_exit(code)


def shutdown(poll_seconds: float = 0.5) -> None:
    """Leaves a multi-process run together: the last call of an entry point (``train.py``, ``sample.py``); a no-op when
    jax.distributed is not running (single process) or already shut down. In this order:

    1. this process's peer-failure watcher stops and is joined: from here on only this function talks to the
       coordination service;
    2. the exit barrier: each process counts itself in and waits until every process has, so that all are done with
       their collectives, checkpoint finalisation and calls to the service. The wait has no time limit (a process may
       finish its share of the work long after the others), but failures still end it: an error a peer posts ends
       this process too (status :data:`EXIT_PEER_FAILED`), and a dead peer is found by jax's heartbeat;
    3. ``jax.distributed.shutdown()``: jax's preemption manager, then the client (jax's shutdown barrier, which every
       process reaches at about the same time now), then, on process 0, the coordination service.

    ``poll_seconds``: how often the barrier looks for peers' errors while it waits."""
    if not jax.distributed.is_initialized():
        return
    PeerFailureWatcher.stop()
    if jax.process_count() > 1:
        with exit_together():
            _exit_barrier(poll_seconds)
    jax.distributed.shutdown()


def _exit_barrier(poll_seconds: float) -> None:
    """Returns when every process has called it (step 2 of :func:`shutdown`). A counter rather than one key per
    process: the wait reads a single key however many processes there are."""
    client = _client()
    me, count = jax.process_index(), jax.process_count()
    everyone = _EXIT_KEY_DIR + "everyone"
    if client.key_value_increment(_EXIT_KEY_DIR + "arrived", 1) == count:  # the last one in opens the barrier
        client.key_value_set(everyone, "1")
    started = time.monotonic()
    next_note_s = 60.0
    while True:
        try:
            client.blocking_key_value_get(everyone, max(1, int(poll_seconds * 1000)))
            return
        except Exception as err:  # noqa: BLE001 -- jax raises its runtime error; only the timeout means "not yet"
            if "DEADLINE_EXCEEDED" not in str(err):
                raise
        peers = peer_errors(me)
        if peers is None:
            raise RuntimeError("the coordination service (process 0) cannot be reached at the exit barrier")
        if peers:
            index, message = peers[0]
            _hard_exit(EXIT_PEER_FAILED, f"[{process_label()}] stopping: process {index} failed: {message}")
        waited_s = time.monotonic() - started
        if waited_s >= next_note_s:
            log.warning("process %d has waited %.0f s at the exit barrier for the other processes to finish", me,
                        waited_s)
            next_note_s *= 2


def split_evenly(items: Sequence, index: int | None = None, count: int | None = None) -> tuple[int, list]:
    """Process ``index``'s contiguous share of ``items`` (sizes differ by at most one, earlier processes take the
    extra ones) and the position of its first item: ``(offset, share)``."""
    index = jax.process_index() if index is None else int(index)
    count = jax.process_count() if count is None else int(count)
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is outside process count {count}")
    base, extra = divmod(len(items), count)
    start = index * base + min(index, extra)
    stop = start + base + (1 if index < extra else 0)
    return start, list(items[start:stop])


def gather_to_host(tree, max_bytes: int = 1 << 30):
    """A pytree of (possibly cross-process sharded) arrays as NumPy arrays on every process. Leaves sharded across
    processes are replicated by one jitted identity per group of at most ``max_bytes`` (device memory holds one
    group whole at a time, and there are few compilations), then read locally."""
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    leaves, treedef = jax.tree.flatten(tree)
    out = list(leaves)
    groups: dict = {}  # mesh -> [[index, ...], ...] (NamedSharding leaves spread over processes)
    for index, leaf in enumerate(leaves):
        if not isinstance(leaf, jax.Array):
            continue
        if leaf.is_fully_addressable or leaf.is_fully_replicated:
            out[index] = np.asarray(jax.device_get(leaf))
        elif isinstance(leaf.sharding, NamedSharding):
            chunks = groups.setdefault(leaf.sharding.mesh, [[]])
            if chunks[-1] and sum(leaves[i].nbytes for i in chunks[-1]) + leaf.nbytes > max_bytes:
                chunks.append([])
            chunks[-1].append(index)
        else:
            from jax.experimental import multihost_utils

            out[index] = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    for mesh, chunks in groups.items():
        replicated = NamedSharding(mesh, PartitionSpec())
        for chunk in chunks:
            whole = jax.jit(lambda *xs: xs, out_shardings=replicated)(*(leaves[i] for i in chunk))
            for index, value in zip(chunk, whole):
                out[index] = np.asarray(value)
    return jax.tree.unflatten(treedef, out)


def sync(name: str) -> None:
    """A barrier over all processes (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
