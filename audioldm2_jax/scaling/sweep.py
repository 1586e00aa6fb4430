"""IsoFLOP sweeps: compute budgets x model sizes -> runs, each an ordinary ``train.py`` command line.

A sweep file (JSON) names:

- ``config`` / ``stage`` / ``options``: the training config file every run uses (``configs/scaling.py``), its stage
  and the ``key=value`` options of its argument shared by all runs (``data``, ``pretrained``, ``root``, ...);
- ``axis`` and ``models``: one knob of the UNet family at a time: ``"preset"`` (names of
  :data:`audioldm2_jax.configs.sizes.SCALING_PRESETS`), ``"width"``, ``"depth"`` or ``"transformer_layers"``
  (multipliers / counts, passed as the config option of that name);
- ``budgets``: training FLOPs per run (the trained UNet's forward + backward; frozen encoders are not counted);
- ``batch_size``: an integer, or a list tried in order when the first misses the budget's tolerance or gives fewer
  than ``min_steps`` steps;
- ``learning_rate``: ``{"base": lr, "reference_width": w0, "exponent": e}``, ``lr = base * (width / w0)^e`` (EDM2's
  UNet family follows ``e = -0.5``); the width of a preset is its width multiplier;
- optional: ``tolerance`` (0.01: achieved FLOPs within 1 % of the budget, as Marin's isoFLOP generator),
  ``min_steps`` (a run needs at least this many steps; with none of the batch sizes it is left out), ``warmup_fraction`` (0.1 of the steps) or ``warmup_steps``
  (the same warm-up in every run, at most half its steps; Porian et al. 2024: keep warm-up fixed or proportional),
  ``eval_points`` (held-out evaluations per run, evenly spaced, the last at the final step), ``flops``
  (``frames``, ``loa_tokens``, ``t5_tokens`` of the FLOP count; default: the config's clip length, 8 LOA tokens,
  32 T5 tokens), ``overrides`` (``{"key.path": value}`` for every run), ``root`` (where the runs go), ``python``
  (the interpreter of the commands; default ``python``).

For each (budget, model) :func:`plan` measures the model (parameters; FLOPs per example from XLA's cost analysis,
:func:`audioldm2_jax.configs.sizes.unet_train_flops`), derives the steps ``round(C / (flops_per_example x batch))``,
keeps the run when the achieved FLOPs are within ``tolerance`` of the budget in at least ``min_steps`` steps
(trying the batch sizes in order), and names it
``isoflop-<C>-<model>-b<batch>-s<steps>``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from audioldm2_jax.configs import sizes
from audioldm2_jax.train import config as config_lib

AXES = ("preset", "width", "depth", "transformer_layers")
DEFAULTS = dict(options={}, tolerance=0.01, min_steps=10, warmup_fraction=0.1, warmup_steps=None, eval_points=4,
                flops={}, overrides={}, python="python", root="runs/scaling")
REQUIRED = ("name", "config", "stage", "axis", "models", "budgets", "batch_size", "learning_rate")


# ----------------------------------------------------------------------------------------------------------------
# The sweep file
# ----------------------------------------------------------------------------------------------------------------


def load_spec(source: str | Path | Mapping) -> dict:
    """A sweep spec from a JSON file or a dict, with defaults filled in and every field checked (ValueError naming
    the field)."""
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {str(path)!r} does not exist")
        raw = json.loads(path.read_text())
    missing = [k for k in REQUIRED if k not in raw]
    unknown = sorted(set(raw) - set(REQUIRED) - set(DEFAULTS))
    if missing or unknown:
        raise ValueError(f"sweep spec: missing fields {missing}, unknown fields {unknown} (fields: "
                         f"{list(REQUIRED) + list(DEFAULTS)})")
    spec = {**DEFAULTS, **raw}
    if spec["axis"] not in AXES:
        raise ValueError(f"sweep spec: axis={spec['axis']!r} is not one of {AXES} (one knob at a time)")
    if spec["axis"] in spec["options"]:
        raise ValueError(f"sweep spec: options sets {spec['axis']!r}, the axis the sweep varies")
    if not spec["models"] or not spec["budgets"]:
        raise ValueError("sweep spec: models and budgets must be non-empty lists")
    if spec["axis"] == "preset":
        bad = [m for m in spec["models"] if m not in sizes.SCALING_PRESETS]
        if bad:
            raise ValueError(f"sweep spec: presets {bad} are not among {tuple(sizes.SCALING_PRESETS)}")
    elif not all(isinstance(m, (int, float)) and m > 0 for m in spec["models"]):
        raise ValueError(f"sweep spec: {spec['axis']} values {spec['models']} must be positive numbers")
    if not all(isinstance(c, (int, float)) and c > 0 for c in spec["budgets"]):
        raise ValueError(f"sweep spec: budgets {spec['budgets']} must be positive FLOP counts")
    batches = spec["batch_size"] if isinstance(spec["batch_size"], list) else [spec["batch_size"]]
    if not batches or not all(isinstance(b, int) and b > 0 for b in batches):
        raise ValueError(f"sweep spec: batch_size={spec['batch_size']!r} must be a positive integer or a list of them")
    lr = spec["learning_rate"]
    if not (isinstance(lr, Mapping) and set(lr) <= {"base", "reference_width", "exponent"} and "base" in lr):
        raise ValueError(f"sweep spec: learning_rate={lr!r} must be {{'base': lr, 'reference_width': w0, "
                         "'exponent': e}")
    if not 0 < spec["tolerance"] < 1:
        raise ValueError(f"sweep spec: tolerance={spec['tolerance']} must be in (0, 1)")
    if not 0 <= spec["warmup_fraction"] < 1:
        raise ValueError(f"sweep spec: warmup_fraction={spec['warmup_fraction']} must be in [0, 1)")
    return spec


def learning_rate(spec: Mapping, width: float) -> float:
    """``base * (width / reference_width)^exponent``."""
    rule = spec["learning_rate"]
    return float(rule["base"]) * (width / float(rule.get("reference_width", 1.0))) ** float(rule.get("exponent", 0.0))


def format_budget(flops: float) -> str:
    """``3e+12`` -> ``"3e12"``, ``2.5e13`` -> ``"2.5e13"``: the budget as run names show it."""
    mantissa, exponent = f"{flops:.2e}".split("e")
    mantissa = f"{float(mantissa):g}"
    return f"{mantissa}e{int(exponent)}"


def model_tag(axis: str, value) -> str:
    """``"s"`` for a preset, ``"w0.5"`` / ``"d2"`` / ``"t2"`` for multipliers."""
    return str(value) if axis == "preset" else f"{axis[0]}{float(value):g}"


def run_name(budget: float, tag: str, batch: int, steps: int) -> str:
    return f"isoflop-{format_budget(budget)}-{tag}-b{batch}-s{steps}"


# ----------------------------------------------------------------------------------------------------------------
# Measuring the models
# ----------------------------------------------------------------------------------------------------------------


def config_arg(spec: Mapping, value) -> str:
    """The config file's argument of one model: ``<stage>,key=value,...,<axis>=<value>``."""
    options = dict(spec["options"])
    options[spec["axis"]] = value if spec["axis"] == "preset" else f"{value:g}"
    return ",".join([spec["stage"]] + [f"{k}={v}" for k, v in options.items()])


def measure_model(spec: Mapping, value) -> dict:
    """The UNet of one model of the sweep: ``params``, ``flops_per_example`` (forward + backward, XLA's cost
    analysis), ``width`` (the multiplier the learning-rate rule reads) and the FLOP count's settings."""
    c = config_lib.load_config_file(f"{spec['config']}:{config_arg(spec, value)}")
    unet = config_lib.model_config(c, "unet")
    flops = dict(spec["flops"])
    frames = int(flops.get("frames", int(round(float(c.data.clip_seconds) * 100 / 4)) * 4))
    loa = int(flops.get("loa_tokens", sizes.LOA_TOKENS))
    t5 = int(flops.get("t5_tokens", sizes.T5_TOKENS))
    if spec["axis"] == "preset":
        width = sizes.SCALING_PRESETS[value][0]
    else:
        width = float(value) if spec["axis"] == "width" else 1.0
    return dict(params=sizes.unet_param_count(unet), flops_per_example=sizes.unet_train_flops(unet, frames, loa, t5),
                width=width, channels=list(unet.block_out_channels), layers_per_block=list(unet.layers_per_block),
                frames=frames, loa_tokens=loa, t5_tokens=t5)


# ----------------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------------


def steps_for_budget(budget: float, flops_per_example: float, batches: Sequence[int], tolerance: float,
                     min_steps: int = 1):
    """``(batch, steps, achieved FLOPs)`` of the first batch size whose rounded step count lands within
    ``tolerance`` of ``budget`` and is at least ``min_steps``, or None. A batch list ordered from the preferred size
    on lets a large model at a small budget fall back to a smaller batch (more steps at the same compute)."""
    for batch in batches:
        steps = int(round(budget / (flops_per_example * batch)))
        if steps < max(1, min_steps):
            continue
        achieved = steps * batch * flops_per_example
        if abs(achieved / budget - 1) <= tolerance:
            return batch, steps, achieved
    return None


def plan(spec: Mapping, measure=measure_model) -> tuple[list[dict], list[dict]]:
    """``(runs, skipped)``: one dict per run kept (name, budget, model, measurements, batch, steps, examples,
    compute, learning_rate, warmup, eval_every, workdir, argv) and one per (budget, model) left out with its
    reason. ``measure(spec, value)`` returns a model's measurements (:func:`measure_model`; tests pass their own)."""
    spec = load_spec(spec)
    batches = spec["batch_size"] if isinstance(spec["batch_size"], list) else [spec["batch_size"]]
    models = {value: measure(spec, value) for value in spec["models"]}
    runs, skipped = [], []
    for budget in sorted(spec["budgets"]):
        for value, m in models.items():
            tag = model_tag(spec["axis"], value)
            found = steps_for_budget(budget, m["flops_per_example"], batches, spec["tolerance"], spec["min_steps"])
            if found is None:
                reason = (f"no batch size of {batches} lands within {spec['tolerance']:.0%} of the budget in at least "
                          f"min_steps={spec['min_steps']} steps")
                skipped.append(dict(budget=budget, model=tag, reason=reason))
                continue
            batch, steps, achieved = found
            name = run_name(budget, tag, batch, steps)
            run = dict(name=name, budget=float(budget), model=tag, axis=spec["axis"], value=value, **m, batch=batch,
                       steps=steps, examples=batch * steps, compute=achieved,
                       learning_rate=learning_rate(spec, m["width"]),
                       warmup=(int(spec["warmup_fraction"] * steps) if spec["warmup_steps"] is None
                               else min(int(spec["warmup_steps"]), steps // 2)),
                       # at least the final step (eval.every_steps = 0 would turn evaluation off)
                       eval_every=max(1, steps // max(1, int(spec["eval_points"]))),
                       workdir=str(Path(spec["root"]) / spec["name"] / name))
            run["argv"] = train_argv(spec, run)
            runs.append(run)
    return runs, skipped


def train_argv(spec: Mapping, run: Mapping) -> list[str]:
    """The run's ``train.py`` command line (as ``python -m audioldm2_jax.train.main``, which works installed)."""
    overrides = {"num_steps": run["steps"], "batch_size": run["batch"],
                 "optimizer.learning_rate": run["learning_rate"], "optimizer.warmup_steps": run["warmup"],
                 "eval.every_steps": run["eval_every"], **spec["overrides"]}
    return ([spec["python"], "-m", "audioldm2_jax.train.main",
             f"--config={spec['config']}:{config_arg(spec, run['value'])}", f"--workdir={run['workdir']}"]
            + [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()])


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Writing the sweep
# ----------------------------------------------------------------------------------------------------------------

SLURM_TEMPLATE = """#!/bin/bash
# The isoFLOP sweep {name}: one array task per run (line N+1 of runs.json's order, commands.txt), each a multi-host
# train.py launch when --nodes > 1 (srun starts one process per node; jax.distributed finds its peers through SLURM).
# A finished run is skipped, a cut one resumes from its checkpoint: resubmit the same array after a failure.
#   sbatch {slurm}                       # all {count} runs, at most {parallel} at once
#   sbatch --array=3,7 {slurm}           # some runs again
#SBATCH --job-name={name}
#SBATCH --array=0-{last}%{parallel}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
{gpus}#SBATCH --time={time}
#SBATCH --output={sweep_dir}/slurm/%x-%A_%a.out
#SBATCH --signal=TERM@120
set -euo pipefail
cd {cwd}  # the sweep's relative paths (workdirs, config files) are relative to where it was written
mkdir -p {sweep_dir}/slurm
srun --kill-on-bad-exit=1 {python} -m audioldm2_jax.scaling run --sweep-dir {sweep_dir} --index "$SLURM_ARRAY_TASK_ID"
"""


def slurm_script(spec: Mapping, sweep_dir: str | Path, count: int, nodes: int = 1, gpus_per_node: int = 0,
                 time: str = "24:00:00", parallel: int = 8) -> str:
    """A SLURM job-array script running every run of the sweep (:data:`SLURM_TEMPLATE`). The trainer saves a
    checkpoint on SIGTERM, which ``--signal=TERM@120`` sends two minutes before the time limit."""
    gpus = f"#SBATCH --gpus-per-node={gpus_per_node}\n" if gpus_per_node else ""
    sweep_dir = Path(sweep_dir)
    return SLURM_TEMPLATE.format(name=spec["name"], slurm=sweep_dir / "slurm.sh", count=count, last=count - 1,
                                 parallel=parallel, nodes=nodes, gpus=gpus, time=time, sweep_dir=sweep_dir,
                                 cwd=shlex.quote(str(Path.cwd())),
                                 python=spec["python"])


def write_sweep(spec: Mapping, sweep_dir: str | Path | None = None, measure=measure_model, **slurm) -> dict:
    """Plans the sweep and writes ``sweep.json`` (the spec as used), ``runs.json``, ``commands.txt`` (one shell
    line per run) and ``slurm.sh`` under ``sweep_dir`` (default ``<root>/<name>``). Returns
    ``{"dir", "runs", "skipped"}``."""
    spec = load_spec(spec)
    sweep_dir = Path(sweep_dir or Path(spec["root"]) / spec["name"])
    runs, skipped = plan(spec, measure)
    if not runs:
        raise ValueError(f"sweep {spec['name']}: no (budget, model) pair gives a run ({skipped})")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(spec, indent=2) + "\n")
    (sweep_dir / "runs.json").write_text(json.dumps(dict(runs=runs, skipped=skipped), indent=2) + "\n")
    (sweep_dir / "commands.txt").write_text("".join(shlex.join(r["argv"]) + "\n" for r in runs))
    (sweep_dir / "slurm.sh").write_text(slurm_script(spec, sweep_dir, len(runs), **slurm))
    return dict(dir=str(sweep_dir), runs=runs, skipped=skipped)


def read_runs(sweep_dir: str | Path) -> list[dict]:
    path = Path(sweep_dir) / "runs.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: write the sweep first (python -m audioldm2_jax.scaling "
                                "sweep <sweep.json>)")
    return json.loads(path.read_text())["runs"]


__all__ = ["AXES", "SLURM_TEMPLATE", "config_arg", "format_budget", "learning_rate", "load_spec", "measure_model",
           "model_tag", "plan", "read_runs", "run_name", "slurm_script", "steps_for_budget", "train_argv",
           "write_sweep"]
