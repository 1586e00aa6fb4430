"""The scaling demo on two CPU cores: the sweep of ``configs/scaling_demo.py`` (:data:`SWEEP`: 3 budgets x 3 UNet
widths, on the procedural dataset), run locally, fitted and reported (``python -m audioldm2_jax.scaling demo``,
``make scaling-demo``). Run it again to resume: finished runs are skipped, a cut one continues from its checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from audioldm2_jax.configs import scaling_demo
from audioldm2_jax.quickstart.text import build_text
from audioldm2_jax.scaling import report as report_lib
from audioldm2_jax.scaling import runner, sweep
from audioldm2_jax.train.config import load_config_file


def main(root: str | os.PathLike = "runs/scaling-demo", progress: bool = True) -> int:
    """Builds the shared text pieces, writes and runs the sweep under ``root``, and writes ``root/demo/report.md``.
    Returns 0 when every run finished and both fits were made."""
    say = print if progress else (lambda *a: None)
    root = Path(root)
    spec = dict(scaling_demo.SWEEP, root=str(root), python=sys.executable,
                options=dict(scaling_demo.SWEEP["options"], root=str(root)))
    build_text(root, load_config_file(f"{spec['config']}:ldm,root={root}"))
    written = sweep.write_sweep(spec)
    say(f"[scaling] {len(written['runs'])} runs in {written['dir']}"
        + (f"; left out: {written['skipped']}" if written["skipped"] else ""))
    # One persistent compilation cache for the runs: the frozen encoders' programs are the same in every run, and a
    # width's training step the same at every budget (configs/scaling_demo.py).
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str((root / "jax_cache").resolve()),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
    status = runner.run_local(written["runs"], say=say, env=env)
    report = report_lib.analyse(written["dir"])
    say((Path(written["dir"]) / "report.md").read_text())
    failed = any(code > 0 for code in status.values())
    return int(failed or "isoflop" not in report or "parametric" not in report)


__all__ = ["main"]
