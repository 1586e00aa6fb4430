"""Timing helpers shared by the benchmarks that compare ours with the PyTorch reference."""

from __future__ import annotations

import statistics
import time

import numpy as np


def timed(fn, iters: int) -> float:
    """Median wall time (s) of ``iters`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_compile_settings(lower, args: tuple, iters: int, xla_defaults: bool, to_numpy=np.asarray) -> list[tuple]:
    """Compiles ``lower(*args)`` (a ``jax.stages.Lowered``) as the project does and, with ``xla_defaults``, also with
    XLA's default options; times each. Returns ``(setting, compile s, run s, to_numpy(output))`` per setting."""
    from audioldm2_jax.compilation import compile_lowered

    rows = []
    for defaults in ([False, True] if xla_defaults else [False]):
        start = time.perf_counter()
        compiled = compile_lowered(lower(*args), xla_defaults=defaults)
        compile_s = time.perf_counter() - start
        run_s = timed(lambda: compiled(*args).block_until_ready(), iters)
        rows.append(("XLA defaults" if defaults else "project options", compile_s, run_s, to_numpy(compiled(*args))))
    return rows


def print_rows(label: str, rows: list[tuple], reference_s: float, expected: np.ndarray, scale: float = 1.0,
               digits: int = 2) -> None:
    """One Markdown row per setting: compile time, ours and the reference's time (times ``scale``), their ratio and
    the max abs error relative to the reference's output scale."""
    for setting, compile_s, ours_s, ours in rows:
        err = np.abs(ours - expected).max() / np.abs(expected).max()
        print(f"| {label} | {setting} | {compile_s:.1f} | {ours_s * scale:.{digits}f} | {reference_s * scale:.{digits}f} "
              f"| {reference_s / ours_s:.2f} | {err:.1e} |", flush=True)
