"""Starts N cooperating JAX processes on this machine: multi-host runs for development and tests.

    python -m audioldm2_jax.launch --num-processes 2 --devices-per-process 4 -- \\
        train.py --config configs/smoke.py --workdir runs/smoke2 --config.distributed=auto
    python -m audioldm2_jax.launch -n 2 -- sample.py --checkpoint ckpt --prompts-file prompts.txt --out clips

Each process gets the environment that :mod:`audioldm2_jax.parallel.distributed` reads (``JAX_COORDINATOR_ADDRESS``
on a free local port, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; with ``--devices-per-process`` the simulated CPU
devices, with ``--gpus-per-process`` its GPUs), runs in its own process group, and has its output lines prefixed
with ``[i]``. A command that ends in ``.py`` runs with this Python.

Failures: when a process exits with an error, the others are given ``--grace`` seconds to stop by themselves (they
should: a Python error is posted to them, a dead process is found by the heartbeat), then they are terminated; the
launcher exits with the first failure's status and says which process it was, and whether it failed after all the
others had finished with status 0 (the processes did not leave together: entry points end with
``distributed.shutdown()``, where a process that is done early waits for the others). SIGINT / SIGTERM to the
launcher are passed on as SIGTERM (training saves a checkpoint), and no process outlives the launcher.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from audioldm2_jax.parallel import distributed as dist


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def describe_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code == -signal.SIGABRT:
        return ("aborted (SIGABRT: jax does this when the distributed service reports an error, e.g. a dead process or "
                "a failed shutdown barrier)")
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == dist.EXIT_PEER_FAILED:
        return f"exited with status {code} (stopped because another process failed)"
    return f"exited with status {code}"


class ProcessGroup:
    """N processes of one command, with supervision and clean-up (a context manager: leaving it kills whatever
    still runs, so tests never leave orphans).

    ``output``: where the labelled lines go (default stdout); every line is also kept in ``lines[i]``.
    """

    def __init__(self, command: Sequence[str], num_processes: int, *, devices_per_process: int | None = None,
                 gpus_per_process: int | None = None, heartbeat_timeout_s: int | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 output: TextIO | None = None, label: bool = True, port: int | None = None):
        if num_processes < 1:
            raise ValueError(f"num_processes={num_processes} must be >= 1")
        if not command:
            raise ValueError("no command to launch (put it after --)")
        self.command = [sys.executable, *command] if str(command[0]).endswith(".py") else list(command)
        self.num_processes = int(num_processes)
        self.devices_per_process = devices_per_process
        self.gpus_per_process = gpus_per_process
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.base_env = dict(os.environ if env is None else env)
        self.cwd = None if cwd is None else str(cwd)
        self.output = output
        self.label = label
        self.port = port
        self.procs: list[subprocess.Popen] = []
        self.lines: list[list[str]] = [[] for _ in range(self.num_processes)]
        self.exit_order: list[tuple[int, int]] = []  # (index, status) in the order the processes ended
        self._readers: list[threading.Thread] = []
        self._write_lock = threading.Lock()

    # ---- start ---------------------------------------------------------------------------------------------------

    def environment(self, index: int, port: int) -> dict[str, str]:
        env = dict(self.base_env)
        env.update({dist.ENV_COORDINATOR: f"127.0.0.1:{port}", dist.ENV_NUM_PROCESSES: str(self.num_processes),
                    dist.ENV_PROCESS_ID: str(index), "PYTHONUNBUFFERED": "1"})
        if self.label:
            env[dist.ENV_OUTPUT_LABELLED] = "1"
        if self.devices_per_process is not None:
            env[dist.ENV_NUM_CPU_DEVICES] = str(int(self.devices_per_process))
        if self.gpus_per_process is not None:
            k = int(self.gpus_per_process)
            env[dist.ENV_LOCAL_DEVICE_IDS] = ",".join(str(d) for d in range(index * k, (index + 1) * k))
        if self.heartbeat_timeout_s is not None:
            env[dist.ENV_HEARTBEAT_TIMEOUT] = str(int(self.heartbeat_timeout_s))
        return env

    def start(self) -> "ProcessGroup":
        port = self.port or free_port()
        try:
            for index in range(self.num_processes):
                proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.environment(index, port),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, text=True, errors="replace", bufsize=1)
                self.procs.append(proc)
                reader = threading.Thread(target=self._pump, args=(index, proc), daemon=True,
                                          name=f"launch-output-{index}")
                reader.start()
                self._readers.append(reader)
        except BaseException:
            self.kill_all()
            raise
        return self

    def _pump(self, index: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        prefix = f"[{index}] " if self.label else ""
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.lines[index].append(line)
            with self._write_lock:
                stream = self.output or sys.stdout
                try:
                    stream.write(prefix + line + "\n")
                    stream.flush()
                except ValueError:  # the stream was closed under us (pytest's capture at teardown)
                    pass

    def first_failure(self) -> tuple[int, int] | None:
        """The process that failed first for a reason of its own (not stopped because another one failed)."""
        failures = [(i, c) for i, c in self.exit_order if c != 0]
        own = [(i, c) for i, c in failures if c != dist.EXIT_PEER_FAILED]
        return (own or failures or [None])[0]

    def failure_report(self) -> str | None:
        """The launcher's last line when the run failed (None when every process ended with status 0): the process
        that failed first, and whether it ended after all the others had finished, which means that the processes of
        a finished run did not leave together (see :func:`audioldm2_jax.parallel.distributed.shutdown`)."""
        culprit = self.first_failure()
        if culprit is None:
            return None
        index, code = culprit
        line = f"FAILED: process {index} failed first ({describe_status(code)})"
        position = [i for i, _ in self.exit_order].index(index)
        before = [c for _, c in self.exit_order[:position]]
        if self.num_processes > 1 and len(before) == self.num_processes - 1 and all(c == 0 for c in before):
            line += (" after every other process had finished with status 0: the processes did not leave together "
                     "(a finished run ends with audioldm2_jax.parallel.distributed.shutdown())")
        return line

    def text(self, index: int) -> str:
        return "\n".join(self.lines[index])

    # ---- supervision -----------------------------------------------------------------------------------------

    def poll(self) -> list[int | None]:
        return [proc.poll() for proc in self.procs]

    def wait(self, timeout: float | None = None, grace: float = 60.0,
             on_failure: Callable[[int, int], None] | None = None) -> list[int]:
        """Waits for every process. When one fails, the others get ``grace`` seconds to stop on their own, then
        they are terminated. ``timeout``: the whole wait (then everything is killed and TimeoutError raised).
        Returns the exit statuses (negative: killed by that signal)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        failed_at = None
        while True:
            codes = self.poll()
            ended = {i for i, _ in self.exit_order}
            self.exit_order += [(i, c) for i, c in enumerate(codes) if c is not None and i not in ended]
            if all(code is not None for code in codes):
                break
            now = time.monotonic()
            if failed_at is None:
                failures = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
                if failures:
                    failed_at = now
                    if on_failure is not None:
                        on_failure(*failures[0])
            elif now - failed_at > grace:
                self._say(f"processes {[i for i, c in enumerate(codes) if c is None]} still run {grace:.0f} s after "
                          "a failure: terminating them")
                self.terminate_all()
                failed_at = float("inf")  # terminate once; kill_all below if they ignore it
            if deadline is not None and now > deadline:
                self.kill_all()
                raise TimeoutError(f"the processes did not finish within {timeout} s: {self.poll()}")
            time.sleep(0.05)
        for reader in self._readers:
            reader.join(timeout=5)
        return [int(code) for code in codes]

    def send_signal(self, index: int, sig: int, whole_group: bool = False) -> None:
        """``sig`` to process ``index`` (with ``whole_group``, to its helpers, e.g. data workers, too)."""
        proc = self.procs[index]
        if proc.poll() is None:
            try:
                if whole_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate_all(self, wait_s: float = 10.0) -> None:
        """SIGTERM to every process group still running, SIGKILL to those still there after ``wait_s``."""
        for index in range(len(self.procs)):
            self.send_signal(index, signal.SIGTERM, whole_group=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        self.kill_all()

    def kill_all(self) -> None:
        for index, proc in enumerate(self.procs):
            self.send_signal(index, signal.SIGKILL, whole_group=True)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for index, proc in enumerate(self.procs):
            # The group leader is gone; helpers it started (data workers) may still be in its group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _say(self, message: str) -> None:
        with self._write_lock:
            stream = self.output or sys.stdout
            try:
                stream.write(f"[launch] {message}\n")
                stream.flush()
            except ValueError:
                pass

    def __enter__(self) -> "ProcessGroup":
        if not self.procs:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" in argv:
        split = argv.index("--")
        ours, command = argv[:split], argv[split + 1:]
    else:
        ours, command = argv, []
    parser = argparse.ArgumentParser(prog="python -m audioldm2_jax.launch", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("-n", "--num-processes", type=int, required=True, help="processes to start")
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help="simulated CPU devices per process (JAX_NUM_CPU_DEVICES)")
    parser.add_argument("--gpus-per-process", type=int, default=None,
                        help="GPUs per process: process i uses GPUs i*k .. i*k+k-1 (JAX_LOCAL_DEVICE_IDS)")
    parser.add_argument("--heartbeat-timeout", type=int, default=None,
                        help="seconds after which a silent process is declared dead (jax's default: 100)")
    parser.add_argument("--grace", type=float, default=60.0,
                        help="seconds the others get to stop by themselves after a process fails")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument("--no-label", action="store_true", help="do not prefix output lines with [i]")
    args = parser.parse_args(ours)
    if not command:
        parser.error("no command: put it after --, e.g. -- train.py --config configs/smoke.py --workdir runs/x")
    return args, command


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    group = ProcessGroup(command, args.num_processes, devices_per_process=args.devices_per_process,
                         gpus_per_process=args.gpus_per_process, heartbeat_timeout_s=args.heartbeat_timeout,
                         label=not args.no_label, port=args.port)
    def forward(signum, frame):  # preemption of the launcher: every process saves and stops
        group._say(f"received {signal.Signals(signum).name}: passing SIGTERM on to every process")
        for index in range(len(group.procs)):
            group.send_signal(index, signal.SIGTERM)

    def failed(index: int, code: int) -> None:
        group._say(f"process {index} {describe_status(code)}; waiting up to {args.grace:.0f} s for the others")

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        group.start()
        group._say(f"started {args.num_processes} processes of {' '.join(command)} (pids "
                   f"{[p.pid for p in group.procs]}) in {Path.cwd()}")
        codes = group.wait(grace=args.grace, on_failure=failed)
    finally:
        group.kill_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for index, code in enumerate(codes):
        if code != 0:
            group._say(f"process {index} {describe_status(code)}")
    report = group.failure_report()
    if report is None:
        return 0
    group._say(report)
    code = group.first_failure()[1]
    return code if code > 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
