"""Step 4 of the quickstart: ``root/report.json`` and ``root/report.md`` (the prompt-following scores of
:mod:`audioldm2_jax.eval.prompts` beside their baselines, the chain's ceilings, a listening list, wall and CPU time
per phase), ``root/spectrograms.png`` (true clip next to generated, for a handful of prompts) and
``root/loss_<stage>.png`` loss curves from each stage's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from typing import Sequence

import numpy as np

from audioldm2_jax.audio.io import read_audio, write_wav
from audioldm2_jax.audio.mel import HOP_LENGTH, SAMPLE_RATE, log_mel_spectrogram
from audioldm2_jax.eval.prompts import CHECK_TITLES, CHECKS
from audioldm2_jax.quickstart import editing_demo
from audioldm2_jax.train.metrics import read_jsonl

# The targets for the generated clips (#16): pitch class as a share of the prompts, family and tempo as
# points above their shuffled-prompt baselines.
TARGETS = {"pitch_class": ("accuracy", 0.5), "spectrogram_pitch_class": ("accuracy", 0.6),
           "instrument_family": ("margin", 0.3), "tempo": ("margin", 0.3)}
# The reference row of the clips sampled from the true clips' LOA instead of GPT-2's (samples_true_loa/).
TRUE_LOA_ROW = "generated from the true clips' LOA (GPT-2 bypassed)"


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


def pick_listening(clips: Sequence[dict], count: int = 6) -> list[int]:
    """Indices of ``count`` prompts to look at and listen to: the first of each (family, tempo) combination, then
    the next ones in order."""
    seen, chosen = set(), []
    for i, clip in enumerate(clips):
        key = (clip.get("expected_instrument_family"), clip.get("expected_tempo"))
        if key not in seen:
            seen.add(key)
            chosen.append(i)
    chosen += [i for i in range(len(clips)) if i not in chosen]
    return sorted(chosen[:count])


def write_listening(root: Path, samples_dir: Path, prompts: Sequence[dict], clips: Sequence[dict],
                    true_waves: Sequence[np.ndarray], chosen: Sequence[int]) -> list[dict]:
    """Writes the chosen prompts' true clips to ``root/true/<name>.wav`` and ``root/spectrograms.png``: one row per
    prompt, the true clip's log-mel, the diffusion model's generated log-mel (``<name>.mel.npy``, the vocoder's
    input) and the log-mel of the generated audio. Returns the listening list (name, caption, files, the
    estimates against what the prompt asked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true_dir = root / "true"
    shutil.rmtree(true_dir, ignore_errors=True)  # an earlier run's prompts would mix with these
    true_dir.mkdir()
    listening = []
    fig, axes = plt.subplots(len(chosen), 3, figsize=(10, 2.1 * len(chosen)), dpi=90, squeeze=False)
    for row, i in enumerate(chosen):
        name = prompts[i]["name"]
        write_wav(true_dir / f"{name}.wav", true_waves[i], SAMPLE_RATE)
        generated = samples_dir / f"{name}.wav"
        mel_path = samples_dir / f"{name}.mel.npy"
        panels = (("true clip", log_mel_spectrogram(true_waves[i])),
                  ("generated spectrogram (diffusion)", np.load(mel_path) if mel_path.exists() else None),
                  ("generated audio (after the vocoder)", log_mel_spectrogram(read_audio(generated)[0])))
        scale = dict(vmin=float(panels[0][1].min()), vmax=float(panels[0][1].max()))  # the true clip's range
        for ax, (title, mel) in zip(axes[row], panels):
            if mel is not None:
                ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", **scale,
                          extent=(0, mel.shape[0] * HOP_LENGTH / SAMPLE_RATE, 0, mel.shape[1]))
            ax.set_title(f"{name}: {prompts[i]['caption'][:56]}\n{title}" if ax is axes[row][0] else f"\n{title}",
                         fontsize=7)
            ax.tick_params(labelsize=6)
        clip = clips[i]
        listening.append({"name": name, "caption": prompts[i]["caption"],
                          "generated": os.path.relpath(generated, root), "true": f"true/{name}.wav",
                          "spectrogram": os.path.relpath(generated.with_suffix(".png"), root),
                          "heard": {c: [clip.get(f"expected_{c}"), clip.get(f"estimated_{c}")]
                                    for c in CHECKS if f"expected_{c}" in clip}})
    fig.tight_layout()
    fig.savefig(root / "spectrograms.png")
    plt.close(fig)
    return listening


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f} %"


def verdict(check: str, v: dict) -> str:
    """One line naming the baselines a score is compared with, and the issue's target for it."""
    above = v["accuracy"] - max(v["shuffled"], v["best_constant"])
    if above > 0:
        text = (f"{100 * above:.1f} points above the better baseline "
                f"({'shuffled prompts' if v['shuffled'] >= v['best_constant'] else 'best constant'})")
    else:
        text = "not above its baselines: no evidence of prompt following"
    if check in TARGETS:
        key, goal = TARGETS[check]
        met = v[key] >= goal
        target = (f"target >= {100 * goal:.0f} %" if key == "accuracy"
                  else f"target >= {100 * goal:.0f} points above shuffled")
        text += f"; {target}: {'met' if met else 'not met'}"
    return text


def write_report(root: Path, report: dict) -> str:
    """``root/report.json`` and ``root/report.md``; returns the markdown."""
    (root / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    s = report["summary"]
    lines = ["# Quickstart report", "",
             f"{report['prompts']} prompts from the quickstart grammar (seed {report['prompt_seed']}), sampled from "
             f"`{report['export']}` with {report['sampling']['scheduler']}, "
             f"{report['sampling']['num_inference_steps']} steps, guidance {report['sampling']['guidance_scale']}, "
             f"{report['sampling']['audio_length_in_s']} s clips. Each check reads one attribute back from a "
             "generated clip and compares it with the prompt's. Baselines, from the same clips in this run: "
             "*shuffled prompts* scores the same estimates against every other prompt (what a generator that ignores "
             "its prompt gets), *best constant* is the share of the most frequent value among the prompts (what one "
             "fixed answer for every prompt gets).", "",
             "| check | generated | correct / count | shuffled prompts | best constant | verdict |",
             "|---|---|---|---|---|---|"]
    for check, v in s.items():
        lines.append(f"| {CHECK_TITLES[check]} | {_pct(v['accuracy'])} | {v['correct']} / {v['count']} | "
                     f"{_pct(v['shuffled'])} | {_pct(v['best_constant'])} ({v['constant_label']}) | "
                     f"{verdict(check, v)} |")
    refs = report.get("references", {})
    if refs:
        lines += ["", "The same prompts sampled from the LOA of their true clips (AudioMAE features, as the LDM stage "
                  "trains on) instead of the one GPT-2 generates: what the diffusion model follows when the language "
                  "model is out of the way (`samples_true_loa/`). The checks on the prompts' true clips (their "
                  "ceiling), on the same true clips scored against "
                  "mismatched prompts (clip i + 1 against prompt i: must sit at the shuffled level, or the check "
                  "measures something else), and on the true clips through the trained vocoder and VAE (what the "
                  "chain after the diffusion model allows). Accuracy (shuffled-prompt baseline):", "",
                  "| audio | " + " | ".join(CHECK_TITLES[c] for c in CHECKS) + " |", "|---" * (len(CHECKS) + 1) + "|"]
        for name, v in refs.items():
            if isinstance(v, dict):
                cells = [f"{_pct(v[k]['accuracy'])} ({_pct(v[k]['shuffled'])})" if k in v else "-" for k in CHECKS]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"VAE reconstruction L1 (log-mel) on those clips: {refs.get('vae_reconstruction_l1', 0):.3f}"]
    listening = report.get("listening", [])
    if listening:
        lines += ["", "Look and listen: `spectrograms.png` (per prompt: true clip, generated spectrogram, generated "
                  "audio); the files (expected -> heard):", "",
                  "| prompt | generated | true clip | " + " | ".join(CHECK_TITLES[c] for c in CHECKS) + " |",
                  "|---" * (len(CHECKS) + 3) + "|"]
        for item in listening:
            heard = [f"{item['heard'][c][0]} -> {item['heard'][c][1]}" if c in item["heard"] else "-"
                     for c in CHECKS]
            lines.append(f"| {item['caption']} | `{item['generated']}` | `{item['true']}` | " + " | ".join(heard)
                         + " |")
    if report.get("editing"):
        lines += editing_demo.render(report["editing"])
    lines += ["", "| step | wall s | cpu s | status |", "|---|---|---|---|"]
    for name, t in report["timings"].items():
        lines.append(f"| {name} | {t['wall_s']:.1f} | {t.get('cpu_s', 0.0):.1f} | {t.get('status', '')} |")
    lines += ["", f"total wall time: {report['total_wall_s']:.1f} s (machine load at the end: {report['load']})", ""]
    lines += ["Samples (WAV + spectrogram PNG + JSON per clip): `samples/`; loss curves: "
              + ", ".join(f"`{p}`" for p in report["loss_plots"]), ""]
    text = "\n".join(lines)
    (root / "report.md").write_text(text)
    return text
