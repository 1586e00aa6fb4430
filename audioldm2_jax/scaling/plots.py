"""The sweep's figures (PNG, matplotlib's Agg backend): loss vs compute per model size with the envelope, isoFLOP
curves with their minima, N_opt and D_opt vs compute with the fitted power laws and their bands, and the held-out
loss curves of every run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from audioldm2_jax.scaling.fit import IsoFLOPFit, ParametricFit


def _pyplot():
    import matplotlib  # deferred: a heavy optional import only the figures need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax) -> None:
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finished(rows: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in rows if isinstance(r.get("loss"), float) and math.isfinite(r["loss"])]


def _by(rows, key):
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return groups


def loss_vs_compute(rows: Sequence[Mapping], path: Path, parametric: ParametricFit | None = None) -> Path:
    """Final held-out loss against training FLOPs, one line per model size, with the lower envelope (the best loss
    reached at each compute) and, when given, the parametric law's compute-optimal frontier."""
    plt = _pyplot()
    rows = _finished(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model, group in sorted(_by(rows, "model").items(), key=lambda kv: kv[1][0]["params"]):
        group = sorted(group, key=lambda r: r["compute"])
        ax.plot([r["compute"] for r in group], [r["loss"] for r in group], "o-", ms=4,
                label=f"{model} ({group[0]['params'] / 1e6:.3g}M)")
    envelope = sorted(rows, key=lambda r: r["compute"])
    best, frontier = math.inf, []
    for r in envelope:
        if r["loss"] < best:
            best = r["loss"]
            frontier.append(r)
    if frontier:
        ax.plot([r["compute"] for r in frontier], [r["loss"] for r in frontier], "k--", lw=1, label="envelope")
    if parametric is not None and rows:
        c = np.geomspace(min(r["compute"] for r in rows), max(r["compute"] for r in rows), 50)
        n, d = parametric.optimum(c)
        ax.plot(c, parametric.loss(n, d), color="gray", lw=1.5, alpha=0.7, label="L(N_opt, D_opt) (parametric)")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="held-out loss")
    _style(ax)
    return _save(plt, fig, path)


def isoflop_curves(rows: Sequence[Mapping], path: Path, fit: IsoFLOPFit | None = None) -> Path:
    """Final held-out loss against parameters per budget, the fitted parabolas (in log N) and their minima."""
    plt = _pyplot()
    rows = _finished(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    parabolas = {b.budget: b for b in fit.budgets} if fit else {}
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(_by(rows, "budget")))))
    for color, (budget, group) in zip(colors, sorted(_by(rows, "budget").items())):
        group = sorted(group, key=lambda r: r["params"])
        ax.plot([r["params"] for r in group], [r["loss"] for r in group], "o", color=color,
                label=f"C = {budget:.2g}")
        if budget in parabolas:
            b = parabolas[budget]
            n = np.geomspace(min(group[0]["params"], b.params_opt), max(group[-1]["params"], b.params_opt), 60)
            ax.plot(n, b.curve(n), "-", color=color, lw=1)
            ax.plot([b.params_opt], [b.loss_opt], "*", color=color, ms=12, mec="k")
    ax.set(xscale="log", yscale="log", xlabel="UNet parameters N", ylabel="held-out loss",
           title="isoFLOP curves (stars: fitted minima)")
    _style(ax)
    return _save(plt, fig, path)


def optimal_allocation(fit: IsoFLOPFit, path: Path, parametric: ParametricFit | None = None) -> Path:
    """N_opt(C) and D_opt(C): the isoFLOP minima, the power laws through them with their bootstrap band (the
    exponent's interval, pivoting at the budgets' geometric mean), and the parametric law's optimum."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    budgets = np.array([b.budget for b in fit.budgets])
    c = np.geomspace(budgets.min() / 3, budgets.max() * 3, 60)
    pivot = math.exp(np.log(budgets).mean())
    for ax, law, values, label in ((axes[0], fit.params_opt, [b.params_opt for b in fit.budgets], "N_opt (params)"),
                                   (axes[1], fit.examples_opt, [b.examples_opt for b in fit.budgets],
                                    "D_opt (examples)")):
        ax.plot(budgets, values, "o", color="C0", label="isoFLOP minima")
        ax.plot(c, law(c), "-", color="C0", label=f"fit: C^{law.exponent:.3f}")
        lo, hi = law.exponent_ci
        if math.isfinite(lo):
            at_pivot = law(pivot)
            low = at_pivot * (c / pivot) ** lo
            high = at_pivot * (c / pivot) ** hi
            ax.fill_between(c, np.minimum(low, high), np.maximum(low, high), color="C0", alpha=0.2,
                            label=f"{law.level:.0%} band: [{lo:.3f}, {hi:.3f}]")
        if parametric is not None:
            n, d = parametric.optimum(c)
            ax.plot(c, n if ax is axes[0] else d, "--", color="C1",
                    label=f"parametric: C^{parametric.params_exponent:.3f}" if ax is axes[0] else "parametric")
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel=label)
        _style(ax)
    return _save(plt, fig, path)


def loss_curves(rows: Sequence[Mapping], path: Path) -> Path:
    """Held-out loss (solid) and training loss (faint) against examples seen, every run, one panel per budget."""
    plt = _pyplot()
    budgets = sorted(_by(rows, "budget").items())
    fig, axes = plt.subplots(1, max(1, len(budgets)), figsize=(4.2 * max(1, len(budgets)), 3.8), squeeze=False)
    for ax, (budget, group) in zip(axes[0], budgets):
        for i, r in enumerate(sorted(group, key=lambda r: r["params"])):
            color = f"C{i}"
            if r.get("train_curve"):
                steps, losses = zip(*r["train_curve"])
                ax.plot(np.array(steps) * r["batch"], losses, color=color, alpha=0.3, lw=0.8)
            if r.get("curve"):
                steps, losses = zip(*r["curve"])
                ax.plot(np.array(steps) * r["batch"], losses, "o-", color=color, ms=3, label=r["model"])
        ax.set(xscale="log", yscale="log", xlabel="examples seen", ylabel="loss", title=f"C = {budget:.2g}")
        _style(ax)
    return _save(plt, fig, path)


__all__ = ["isoflop_curves", "loss_curves", "loss_vs_compute", "optimal_allocation"]
