"""Test-only: runs a multi-process entry point (``train.py``, ``sample.py``, a script) with the end of the run made as
uneven as a busy machine makes it, and reports what the process did with the coordination service while leaving.

    launch.ProcessGroup(["tests/exit_race_runner.py", "sample.py", "--checkpoint", ...], 2, ...)

Environment (read here only; the package reads none of it):

- ``EXIT_RACE_SLOW_PROCESS`` (default 1): the process that is late;
- ``EXIT_RACE_WORK_DELAY_S`` (default 0): it finishes its work this many seconds after the others: it sleeps when it
  starts to leave (at the start of ``distributed.shutdown()``, or, for a script that does not call it, when the
  script ends), after its last collective;
- ``EXIT_RACE_TEARDOWN_DELAY_S`` (default 1): it then starts jax.distributed's teardown (``jax._src.distributed
  .global_state.shutdown``: jax's shutdown barrier, then the coordination service on process 0) this many seconds late;
- ``EXIT_RACE_POLL_S`` (default 0.002): the peer-failure watcher polls the coordination service this often instead of
  every 0.5 s, so that it is inside a key-value call at almost any moment, the end of the process included.

Every call the package makes to the coordination service (through ``distributed._client()``) after this process began
jax's teardown is counted, and the count is printed when the process ends: ``exit_race_runner: process i made N
coordination-service calls after the teardown began``. Such a call races with process 0 tearing the service down, and
a thread still inside one when the interpreter exits aborts the process (SIGABRT).
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import threading
import time
from pathlib import Path

_late_calls: list[str] = []  # "thread: method" of each call made after the teardown began
_tearing_down = threading.Event()


class _CountingClient:
    """The coordination-service client, counting the calls made once the teardown has begun."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            if _tearing_down.is_set():
                _late_calls.append(f"{threading.current_thread().name}: {name}")
            return method(*args, **kwargs)

        return call


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: exit_race_runner.py SCRIPT.py [ARGS...]")
    script, args = sys.argv[1], sys.argv[2:]
    process = int(os.environ.get("JAX_PROCESS_ID", "0"))
    late = process == int(os.environ.get("EXIT_RACE_SLOW_PROCESS", "1"))
    work_delay_s = float(os.environ.get("EXIT_RACE_WORK_DELAY_S", "0"))
    teardown_delay_s = float(os.environ.get("EXIT_RACE_TEARDOWN_DELAY_S", "1"))

    def report() -> None:  # registered before jax is imported: runs after jax's own exit hook
        calls = sorted(set(_late_calls))
        print(f"exit_race_runner: process {process} made {len(_late_calls)} coordination-service calls after the "
              f"teardown began {calls[:5]}", flush=True)

    atexit.register(report)

    from jax._src import distributed as jax_distributed

    from audioldm2_jax.parallel import distributed as dist

    dist.PeerFailureWatcher.poll_seconds = float(os.environ.get("EXIT_RACE_POLL_S", "0.002"))
    real_client = dist._client
    dist._client = lambda: None if real_client() is None else _CountingClient(real_client())

    left = threading.Event()

    def finish_work_late() -> None:
        if late and work_delay_s and not left.is_set():
            print(f"exit_race_runner: process {process} finishes its work {work_delay_s} s late", flush=True)
            time.sleep(work_delay_s)
        left.set()

    if hasattr(dist, "shutdown"):  # older versions of the package have none (bisecting the exit race)
        leave = dist.shutdown

        def late_leave(*a, **k):
            finish_work_late()
            return leave(*a, **k)

        dist.shutdown = late_leave

    state = jax_distributed.global_state
    teardown = state.shutdown

    def late_teardown() -> None:
        if state.client is not None:
            _tearing_down.set()
            if late and teardown_delay_s:
                print(f"exit_race_runner: process {process} starts the distributed teardown {teardown_delay_s} s "
                      "late", flush=True)
                time.sleep(teardown_delay_s)
        teardown()

    state.shutdown = late_teardown  # what jax.distributed.shutdown() and jax's exit hook call
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        finish_work_late()  # a script that does not call distributed.shutdown(): it leaves when it ends


if __name__ == "__main__":
    main()
