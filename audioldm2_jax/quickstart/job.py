"""The quickstart job: the four steps in order, timed, and its command line (``python -m audioldm2_jax.quickstart``,
the ``audioldm2-quickstart`` command)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax.eval.prompts import reference_scores, score_samples, true_clips
from audioldm2_jax.pipeline import AudioLDM2Pipeline
from audioldm2_jax.quickstart import editing_demo
from audioldm2_jax.quickstart.report import (TRUE_LOA_ROW, pick_listening, plot_losses, write_listening,
                                             write_report)
from audioldm2_jax.quickstart.sampling import draw_prompts, sample_prompts, true_clip_loa
from audioldm2_jax.quickstart.stages import stage_main, stage_config, train_stages
from audioldm2_jax.quickstart.text import build_text
from audioldm2_jax.train.loop import setup_runtime
from audioldm2_jax.train.stages import STAGE_ORDER


class _Clock:
    """Wall and process CPU time of each named phase."""

    def __init__(self):
        self.timings: dict[str, dict] = {}

    def phase(self, name: str):
        @contextlib.contextmanager
        def timed():
            wall, cpu = time.perf_counter(), time.process_time()
            entry = self.timings.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            try:
                yield entry
            finally:
                entry["wall_s"] += time.perf_counter() - wall
                entry["cpu_s"] += time.process_time() - cpu

        return timed()


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def run(root: str | os.PathLike = "runs/quickstart", num_prompts: int = 48, steps_scale: float = 1.0,
        micro: bool = False, jobs: int = 2, progress: bool = True) -> dict:
    """The whole job (see the module docstring); returns the report."""
    started = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    first = stage_config(STAGE_ORDER[0], root, steps_scale, micro)
    first.xla_cpu_fast_compile = micro  # this process compiles the sampler (see audioldm2_jax/configs/quickstart.py)
    setup_runtime(first)  # compile flags and PRNG before JAX starts

    with clock.phase("text") as entry:
        built = build_text(root, first)
        entry["status"] = ("built " + ", ".join(built)) if built else "kept"
    say(f"[quickstart] text encoders and tokenizers in {root / 'text'} ({clock.timings['text']['status']})")

    with clock.phase("stages") as entry:
        stage_timings = train_stages(root, steps_scale, micro, jobs, progress, say)
        entry["status"] = f"all {len(stage_timings)} stages, up to {jobs} at once (wall; CPU of the children below)"
    clock.timings.update(stage_timings)

    sampling = dict(qs.sampling_settings(micro))
    prompts = draw_prompts(num_prompts, qs.PROMPT_SEED, sampling["audio_length_in_s"])
    (root / "prompts.txt").write_text("".join(f"{p['caption']}|{p['name']}\n" for p in prompts))
    export = root / STAGE_ORDER[-1] / "export"
    samples, samples_true_loa = root / "samples", root / "samples_true_loa"
    for folder in (samples, samples_true_loa):  # an earlier run's clips (other prompts, other weights) would mix in
        shutil.rmtree(folder, ignore_errors=True)
    say(f"[quickstart] sampling {num_prompts} prompts from {export} -> {samples}")
    with clock.phase("sample") as entry:
        pipe = AudioLDM2Pipeline.from_pretrained(export)
        totals = sample_prompts(pipe, prompts, samples, sampling, progress)
        entry["status"] = (f"{totals['clips']} clips, compile {totals['compile_s']:.0f} s, "
                           f"run {totals['wall_s']:.0f} s")
    true_waves, _ = true_clips(prompts)
    say(f"[quickstart] sampling them again from their true clips' LOA (GPT-2 bypassed) -> {samples_true_loa}")
    with clock.phase("sample from the true LOA") as entry:
        loa = true_clip_loa(true_waves, root / "audiomae" / "export" / "audiomae", qs.LOA_LAMBDA)
        totals = sample_prompts(pipe, prompts, samples_true_loa, sampling, progress, loa=loa)
        entry["status"] = f"{totals['clips']} clips, run {totals['wall_s']:.0f} s"
    with clock.phase("score") as entry:
        scores = score_samples(samples, prompts, qs.GRAMMAR)
        references = {TRUE_LOA_ROW: score_samples(samples_true_loa, prompts, qs.GRAMMAR)["summary"],
                      **reference_scores(pipe, prompts, qs.GRAMMAR)}
        listening = write_listening(root, samples, prompts, scores["clips"], true_waves,
                                    pick_listening(scores["clips"]))
        plots = []
        for stage in STAGE_ORDER:
            path = root / f"loss_{stage}.png"
            if plot_losses(root / stage, stage, path):
                plots.append(path.name)
        entry["status"] = "procedural checks and baselines, spectrogram grid, loss plots"
    say(f"[quickstart] editing {editing_demo.PAIRS} true clips (style transfer, inpainting) -> {root / 'editing'}")
    with clock.phase("edit") as entry:
        editing = editing_demo.run_demo(pipe, prompts, qs.GRAMMAR, sampling, root / "editing")
        entry["status"] = f"{editing['pairs']} transfers and {editing['pairs']} inpaintings"
    total = time.perf_counter() - started
    report = {"root": str(root), "export": str(export), "prompts": num_prompts, "prompt_seed": qs.PROMPT_SEED,
              "grammar": {k: list(v) for k, v in qs.GRAMMAR.items()}, "sampling": sampling, "micro": micro,
              "steps_scale": steps_scale, "jobs": jobs, "summary": scores["summary"], "references": references,
              "clips": scores["clips"], "listening": listening, "editing": editing,
              "timings": clock.timings, "total_wall_s": total, "load": _load_average(), "loss_plots": plots}
    text = write_report(root, report)
    say(text)
    say(f"[quickstart] outputs: {root}/report.md, {root}/report.json, {root}/spectrograms.png (true vs generated), "
        f"{samples}/ (WAV + PNG + JSON per clip; {samples_true_loa.name}/ the same from the true clips' LOA), "
        f"{root}/true/ (true clips to compare), {root}/loss_<stage>.png; "
        f"the model: {export}")
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the job (or, with ``--stage-only``, one stage's child process); returns the report."""
    doc = sys.modules[__package__].__doc__  # the package's docstring describes the job
    parser = argparse.ArgumentParser(prog="python -m audioldm2_jax.quickstart", description=doc.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--root", default="runs/quickstart", help="where everything goes")
    parser.add_argument("--prompts", type=int, default=48, help="prompts to sample and score")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every stage's step count")
    parser.add_argument("--micro", action="store_true", help="smallest models, a few steps (the tests)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="stages trained at once (each in its own process), when their inputs allow")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--stage-only", default=None, help=argparse.SUPPRESS)  # the child process of one stage
    args = parser.parse_args(argv)
    if args.stage_only:
        return stage_main(args.stage_only, args.root, args.steps_scale, args.micro)
    if args.prompts < 1:
        parser.error(f"--prompts={args.prompts} must be >= 1")
    if args.steps_scale <= 0:
        parser.error(f"--steps-scale={args.steps_scale} must be > 0")
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return run(args.root, args.prompts, args.steps_scale, args.micro, args.jobs, progress=not args.no_progress)


def cli() -> None:
    """The ``audioldm2-quickstart`` command (``main`` without its return value, which a console script would print
    as an error)."""
    main()
