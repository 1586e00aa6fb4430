"""Running a sweep's runs and reading back what they logged.

Each run is the trainer in its own process (``runs.json``'s ``argv``), so a run's memory and compiled programs go
with it. Resuming is the trainer's: a workdir with checkpoints continues from the latest, so running a sweep again
finishes cut runs and skips finished ones (:func:`finished`). Locally the runs go one after another
(:func:`run_local`); on a cluster one SLURM array task runs one index (``slurm.sh``, :func:`run_index`).

Per run the runner appends ``{"start", "end", "wall_s", "returncode"}`` to ``<workdir>/attempts.jsonl`` (process 0
of a multi-host launch only) and the trainer's output to ``<workdir>/train.log``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

EVAL_KEY = "eval/loss"


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of ``<workdir>/metrics.jsonl``, one per step: a resumed run logs some steps again, the later row of
    a step wins (and keeps the keys of the earlier one it lacks)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        step = int(row.get("step", -1))
        by_step[step] = {**by_step.get(step, {}), **row}
    return [by_step[s] for s in sorted(by_step)]


def finished(run: Mapping, require_eval: bool = True) -> bool:
    """Whether the run reached its last step: the export exists and (``require_eval``, with evaluation on) the
    held-out loss of the last step is logged."""
    workdir = Path(run["workdir"])
    if not (workdir / "export").is_dir():
        return False
    if not (require_eval and run.get("eval_every")):
        return True
    return any(row.get("step") == run["steps"] and EVAL_KEY in row for row in read_metrics(workdir))


def _is_process_zero() -> bool:
    for key in ("SLURM_PROCID", "JAX_PROCESS_ID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(key) not in (None, "", "0"):
            return False
    return True


def run_one(run: Mapping, env: Mapping[str, str] | None = None, launcher: Callable = subprocess.run) -> int:
    """Runs the trainer for ``run`` (its ``argv``) unless it has finished; returns the exit status (0 when
    skipped). Output goes to ``<workdir>/train.log`` (``train.<rank>.log`` on other processes)."""
    if finished(run):
        return 0
    workdir = Path(run["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    zero = _is_process_zero()
    log_name = "train.log" if zero else f"train.{os.environ.get('SLURM_PROCID', 'x')}.log"
    start = time.time()
    with open(workdir / log_name, "a", encoding="utf-8") as log:
        result = launcher(list(run["argv"]), stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ if env is None else env))
    end = time.time()
    if zero:
        with open(workdir / "attempts.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(start=start, end=end, wall_s=end - start, returncode=result.returncode)) + "\n")
    return int(result.returncode)


def run_local(runs: Iterable[Mapping], say: Callable[[str], None] = print, **kwargs) -> dict[str, int]:
    """Runs every unfinished run, one after another; a failed run is reported and the next one starts. Returns
    ``{name: exit status}`` (``-1``: skipped, already finished)."""
    status = {}
    runs = list(runs)
    for i, run in enumerate(runs):
        if finished(run):
            status[run["name"]] = -1
            continue
        say(f"[scaling] run {i + 1}/{len(runs)}: {run['name']} ({run['params'] / 1e6:.3g}M params, "
            f"{run['steps']} steps of {run['batch']}) -> {run['workdir']}")
        status[run["name"]] = code = run_one(run, **kwargs)
        if code:
            say(f"[scaling] {run['name']} failed with status {code}: see {run['workdir']}/train.log")
    return status


def run_index(runs: list[Mapping], index: int, **kwargs) -> int:
    """Runs ``runs[index]`` (one SLURM array task)."""
    if not 0 <= index < len(runs):
        raise IndexError(f"run index {index} is not in [0, {len(runs)}) (the sweep has {len(runs)} runs)")
    return run_one(runs[index], **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


def _mean(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
    return float(sum(values) / len(values)) if values else math.nan


def collect(runs: Iterable[Mapping]) -> list[dict]:
    """One result row per run: the plan's fields (without ``argv``), ``status`` (finished / partial / missing),
    ``loss`` (the held-out loss of the last step; NaN until finished), the held-out loss per timestep band
    (``loss_t<lo>-<hi>``), ``train_loss`` (last logged), ``curve`` (``[[step, eval/loss], ...]``) and
    ``train_curve``, the wall time of all attempts, mean TFLOP/s, utilisation and steps/s the trainer logged."""
    out = []
    for run in runs:
        rows = read_metrics(run["workdir"])
        evals = [r for r in rows if EVAL_KEY in r]
        last = next((r for r in reversed(evals) if r["step"] == run["steps"]), None)
        state = "finished" if finished(run) else ("partial" if rows else "missing")
        row = {k: v for k, v in run.items() if k != "argv"}
        row.update(status=state, loss=float(last[EVAL_KEY]) if last and state == "finished" else math.nan)
        for key, value in (last or {}).items():
            if key.startswith("eval/loss_t"):
                row[key.split("/", 1)[1]] = float(value)
        train_rows = [r for r in rows if "loss" in r]
        row["train_loss"] = float(train_rows[-1]["loss"]) if train_rows else math.nan
        row["curve"] = [[r["step"], float(r[EVAL_KEY])] for r in evals]
        row["train_curve"] = [[r["step"], float(r["loss"])] for r in train_rows]
        attempts = Path(run["workdir"]) / "attempts.jsonl"
        walls = [json.loads(line)["wall_s"] for line in attempts.read_text().splitlines() if line.strip()] \
            if attempts.is_file() else []
        row["wall_s"] = float(sum(walls)) if walls else math.nan
        row["attempts"] = len(walls)
        for key in ("perf/tflops_per_s", "perf/utilization", "perf/steps_per_s"):
            row[key.split("/", 1)[1]] = _mean(rows, key)
        out.append(row)
    return out


__all__ = ["EVAL_KEY", "collect", "finished", "read_metrics", "run_index", "run_local", "run_one"]
