"""A sweep's results: the table (``results.csv``, ``results.json``), both fits, the figures and ``report.md``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from audioldm2_jax.scaling import fit as fit_lib
from audioldm2_jax.scaling import plots
from audioldm2_jax.scaling.runner import collect
from audioldm2_jax.scaling.sweep import read_runs

TABLE_COLUMNS = ("name", "status", "budget", "model", "params", "flops_per_example", "batch", "steps", "examples",
                 "compute", "learning_rate", "loss", "train_loss", "wall_s", "tflops_per_s", "utilization",
                 "steps_per_s", "attempts")


def write_table(rows: Sequence[Mapping], out: Path) -> None:
    """``results.csv`` (the scalar columns, then the held-out loss per timestep band) and ``results.json`` (every
    field, curves included)."""
    bands = sorted({k for r in rows for k in r if k.startswith("loss_t")})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS + tuple(bands))
        for r in rows:
            writer.writerow([r.get(k, "") for k in TABLE_COLUMNS + tuple(bands)])
    (out / "results.json").write_text(json.dumps(list(rows), indent=1, default=float) + "\n")


def _fmt_ci(ci) -> str:
    lo, hi = ci
    return f"[{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) else "n/a"


def analyse(sweep_dir: str | Path, bootstrap: int = 1000, level: float = fit_lib.DEFAULT_LEVEL, seed: int = 0,
            init_grid=None) -> dict:
    """Collects the runs of ``sweep_dir``, fits both laws (a fit that cannot be made is reported, not raised), draws
    the figures and writes the table and ``report.md`` there. Returns the report as a dict (``report.json``)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(read_runs(sweep_dir))
    write_table(rows, sweep_dir)
    points = fit_lib.points_from_rows(r for r in rows if r["status"] == "finished")
    report: dict = dict(sweep=str(sweep_dir), runs=len(rows), finished=len(points), level=level, figures=[])
    iso = par = None
    try:
        iso = fit_lib.fit_isoflop(points, bootstrap=bootstrap, level=level, seed=seed)
        report["isoflop"] = iso.as_dict()
    except ValueError as err:
        report["isoflop_error"] = str(err)
    try:
        par = fit_lib.fit_parametric(points, init_grid=init_grid, bootstrap=min(bootstrap, 500), level=level,
                                     seed=seed)
        report["parametric"] = par.as_dict()
    except (ValueError, RuntimeError) as err:
        report["parametric_error"] = str(err)
    if points:
        report["figures"].append(plots.loss_vs_compute(rows, sweep_dir / "loss_vs_compute.png", par).name)
        report["figures"].append(plots.isoflop_curves(rows, sweep_dir / "isoflop.png", iso).name)
        report["figures"].append(plots.loss_curves(rows, sweep_dir / "loss_curves.png").name)
    if iso is not None:
        report["figures"].append(plots.optimal_allocation(iso, sweep_dir / "optimal_allocation.png", par).name)
    (sweep_dir / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (sweep_dir / "report.md").write_text(render(report, rows))
    return report


def render(report: Mapping, rows: Sequence[Mapping]) -> str:
    level = f"{report['level']:.0%}"
    lines = [f"# Scaling sweep: {report['sweep']}", "",
             f"{report['finished']} of {report['runs']} runs finished. Loss: the held-out denoising loss at the last "
             "step (fixed noise and stratified timesteps, the same draws in every run). N: UNet parameters; D: "
             "training examples seen; C: training FLOPs of the UNet (forward + backward from XLA's cost analysis; "
             f"frozen encoders not counted). Intervals: bootstrap, {level}.", "",
             "| run | N | D | C | lr | loss | train loss | wall s | TFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["budget"], r["params"])):
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.3g}M | {r['examples']} | {r['compute']:.3g} | "
                     f"{r['learning_rate']:.3g} | {r['loss']:.4f} | {r['train_loss']:.4f} | {r['wall_s']:.0f} | "
                     f"{r['tflops_per_s']:.3g} |" + ("" if r["status"] == "finished" else f" ({r['status']})"))
    lines += ["", "## Approach 2: isoFLOP parabolas", ""]
    if "isoflop" in report:
        iso = report["isoflop"]
        lines += ["| budget C | N_opt | D_opt | D_opt / N_opt | loss at optimum | optimum inside the sizes |",
                  "|---|---|---|---|---|---|"]
        for b in iso["budgets"]:
            lines.append(f"| {b['budget']:.3g} | {b['params_opt']:.4g} | {b['examples_opt']:.4g} | "
                         f"{b['examples_opt'] / b['params_opt']:.3g} | {b['loss_opt']:.4f} | "
                         f"{'yes' if b['inside'] else 'no (extrapolated)'} |")
        for key, label in (("params_opt", "N_opt"), ("examples_opt", "D_opt"),
                           ("examples_per_param", "D_opt / N_opt")):
            law = iso[key]
            lines.append(f"- {label} = {law['coefficient']:.4g} C^{law['exponent']:.4f}, exponent {level} interval "
                         f"{_fmt_ci(law['exponent_ci'])}")
        fm = iso["flops_model"]
        lines.append(f"- FLOPs per example = {fm['coefficient']:.4g} N^{fm['exponent']:.4f} (measured over the "
                     f"models; D_opt = C / that at N_opt); residual degrees of freedom {iso['residual_dof']}, "
                     f"{iso['bootstrap_failed']} of {iso['bootstrap']} bootstrap replicates without a minimum")
        if iso.get("left_out"):
            for budget, why in iso["left_out"].items():
                lines.append(f"- budget {budget} left out: {why}")
    else:
        lines.append(f"Not fitted: {report.get('isoflop_error')}")
    lines += ["", "## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", ""]
    if "parametric" in report:
        p = report["parametric"]
        ci = p["intervals"]
        lines += ["| parameter | value | interval |", "|---|---|---|"]
        for key in ("E", "A", "B", "alpha", "beta", "params_exponent"):
            lines.append(f"| {key if key != 'params_exponent' else 'a (N_opt ~ C^a)'} | {p[key]:.4g} | "
                         f"{_fmt_ci(ci[key])} |")
        budgets = sorted({r["budget"] for r in rows})
        if budgets:
            fm = fit_lib.PowerLaw(p["flops_model"]["coefficient"], p["flops_model"]["exponent"])
            lines.append("")
            for c in budgets:
                n, d = fit_lib.compute_optimal(p["A"], p["B"], p["alpha"], p["beta"], c, fm)
                lines.append(f"- at C = {c:.3g}: N_opt {float(n):.4g}, D_opt {float(d):.4g}, examples per parameter "
                             f"{float(d / n):.3g}")
        lines.append(f"- Huber loss (delta {fit_lib.HUBER_DELTA}) on log L, summed over {p['runs']} runs: "
                     f"{p['objective']:.4g}")
    else:
        lines.append(f"Not fitted: {report.get('parametric_error')}")
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in report["figures"]]
    return "\n".join(lines) + "\n"


__all__ = ["TABLE_COLUMNS", "analyse", "render", "write_table"]
