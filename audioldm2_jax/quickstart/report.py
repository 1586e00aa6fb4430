"""Step 4 of the quickstart: ``root/report.json`` and ``root/report.md`` (the prompt-following scores of
:mod:`audioldm2_jax.eval.prompts`, the chain's ceilings, wall and CPU time per phase) and ``root/loss_<stage>.png``
loss curves from each stage's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audioldm2_jax.eval.prompts import CHECKS
from audioldm2_jax.train.metrics import read_jsonl


def plot_losses(workdir: str | os.PathLike, stage: str, path: str | os.PathLike) -> bool:
    """The stage's logged losses (every ``*loss`` key of ``metrics.jsonl``) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(workdir) / "metrics.jsonl"
    if not metrics_path.is_file():
        return False
    rows = read_jsonl(metrics_path)
    keys = sorted({k for r in rows for k in r if k.endswith("loss") or k in ("rec_l1", "mel_l1")})
    if not rows or not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = [r["step"] for r in rows if key in r]
        ax.plot(steps, [r[key] for r in rows if key in r])
        ax.set_title(f"{stage}: {key}", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if all(r[key] > 0 for r in rows if key in r):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(root: Path, report: dict) -> str:
    """``root/report.json`` and ``root/report.md``; returns the markdown."""
    (root / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["summary"]
    lines = ["# Quickstart report", "",
             f"{report['prompts']} prompts from the quickstart grammar (seed {report['prompt_seed']}), sampled from "
             f"`{report['export']}` with {report['sampling']['scheduler']}, "
             f"{report['sampling']['num_inference_steps']} steps, guidance {report['sampling']['guidance_scale']}, "
             f"{report['sampling']['audio_length_in_s']} s clips.", "",
             "| check | accuracy | correct / count | chance |", "|---|---|---|---|"]
    for check, v in s.items():
        chance = "-" if v["chance"] is None else f"{v['chance']:.3f}"
        if "best_constant" in v:
            chance += f" (one note for every prompt: {v['best_constant']:.3f})"
        lines.append(f"| {check} | {v['accuracy']:.3f} | {v['correct']} / {v['count']} | {chance} |")
    refs = report.get("references", {})
    if refs:
        lines += ["", "Ceilings of the chain on the same prompts (accuracy of each check):", "",
                  "| audio | " + " | ".join(CHECKS) + " |", "|---" * (len(CHECKS) + 1) + "|"]
        for name, v in refs.items():
            if isinstance(v, dict):
                lines.append(f"| {name} | " + " | ".join(f"{v[k]:.3f}" if k in v else "-" for k in CHECKS) + " |")
        lines += ["", f"VAE reconstruction L1 (log-mel) on those clips: {refs.get('vae_reconstruction_l1', 0):.3f}"]
    lines += ["", "| step | wall s | cpu s | status |", "|---|---|---|---|"]
    for name, t in report["timings"].items():
        lines.append(f"| {name} | {t['wall_s']:.1f} | {t.get('cpu_s', 0.0):.1f} | {t.get('status', '')} |")
    lines += ["", f"total wall time: {report['total_wall_s']:.1f} s (machine load at the end: {report['load']})", ""]
    lines += ["Samples (WAV + spectrogram PNG + JSON per clip): `samples/`; loss curves: "
              + ", ".join(f"`{p}`" for p in report["loss_plots"]), ""]
    text = "\n".join(lines)
    (root / "report.md").write_text(text)
    return text
