"""Scaling-law sweeps: ``python -m audioldm2_jax.scaling <command>``.

    python -m audioldm2_jax.scaling sweep sweep.json [--dir D] [--nodes 4 --gpus-per-node 8 --time 24:00:00]
    python -m audioldm2_jax.scaling run --sweep-dir D              # every unfinished run, one after another
    python -m audioldm2_jax.scaling run --sweep-dir D --index 3    # one run (a SLURM array task)
    sbatch D/slurm.sh                                               # every run on a SLURM cluster
    python -m audioldm2_jax.scaling fit --sweep-dir D               # table, fits, figures, report.md
    python -m audioldm2_jax.scaling demo [--root runs/scaling-demo] # the whole path on two CPU cores

docs/scaling.md explains the sweep file, the fits and the demo.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from audioldm2_jax.scaling import demo, runner, sweep
from audioldm2_jax.scaling import report as report_lib


def _sweep(args) -> int:
    written = sweep.write_sweep(args.spec, args.dir, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                time=args.time, parallel=args.parallel)
    for run in written["runs"]:
        print(f"{run['name']}: {run['params'] / 1e6:.3g}M params, {run['flops_per_example'] / 1e9:.3g} GFLOP/example, "
              f"lr {run['learning_rate']:.3g}, C {run['compute']:.4g} ({run['compute'] / run['budget'] - 1:+.2%})")
    for skip in written["skipped"]:
        print(f"left out: C={skip['budget']:.3g} {skip['model']}: {skip['reason']}")
    print(f"{len(written['runs'])} runs in {written['dir']} (runs.json, commands.txt, slurm.sh)")
    return 0


def _run(args) -> int:
    runs = sweep.read_runs(args.sweep_dir)
    if args.index is not None:
        return runner.run_index(runs, args.index)
    status = runner.run_local(runs)
    return int(any(code > 0 for code in status.values()))


def _fit(args) -> int:
    out = report_lib.analyse(args.sweep_dir, bootstrap=args.bootstrap, level=args.level, seed=args.seed)
    print((Path(args.sweep_dir) / "report.md").read_text())
    return 0 if out["finished"] else 1


def _demo(args) -> int:
    return demo.main(args.root, progress=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audioldm2_jax.scaling", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="plan a sweep: runs.json, commands.txt, slurm.sh")
    p.add_argument("spec", help="the sweep file (JSON)")
    p.add_argument("--dir", default=None, help="where to write it (default <root>/<name> of the spec)")
    p.add_argument("--nodes", type=int, default=1, help="hosts per run (SLURM)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--time", default="24:00:00", help="SLURM time limit per run")
    p.add_argument("--parallel", type=int, default=8, help="array tasks at once")
    p.set_defaults(fn=_sweep)
    p = sub.add_parser("run", help="run the sweep's unfinished runs (or one, --index)")
    p.add_argument("--sweep-dir", required=True)
    p.add_argument("--index", type=int, default=None)
    p.set_defaults(fn=_run)
    p = sub.add_parser("fit", help="results table, fits, figures and report.md of a sweep")
    p.add_argument("--sweep-dir", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_fit)
    p = sub.add_parser("demo", help="a small sweep on the procedural data, fitted and plotted (CPU)")
    p.add_argument("--root", default="runs/scaling-demo")
    p.set_defaults(fn=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    code = args.fn(args)
    print(f"[scaling] {args.command}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
