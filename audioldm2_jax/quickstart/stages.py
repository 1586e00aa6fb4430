"""Step 2 of the quickstart: the training stages under ``root/<stage>``, each trained by the trainer in a child
process of its own (one device; its log in ``root/<stage>/quickstart_stage.log``), two at a time where the stages'
inputs allow (:func:`train_stages`). A stage whose export is complete (every component at the configured step) is
skipped, and an interrupted one resumes from its latest checkpoint (the trainer does that by itself; Ctrl-C or
SIGTERM makes it save first)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax import components
from audioldm2_jax.train.loop import Trainer, setup_runtime
from audioldm2_jax.train.stages import STAGE_ORDER, stage_class, stage_dependencies

# Which ready stage starts first when a slot frees up: the critical path (vae -> ldm -> joint) first, and AudioMAE
# early because the LDM needs it; vocoder and GPT-2 fill the other slot meanwhile.
START_PRIORITY = ("vae", "audiomae", "ldm", "vocoder", "gpt2", "joint")
STAGE_SUMMARY = "quickstart_stage.json"
STAGE_LOG = "quickstart_stage.log"


def stage_config(stage: str, root: str | os.PathLike, steps_scale: float = 1.0, micro: bool = False):
    """The config of one stage of the job under ``root``."""
    steps = max(1, int(round(qs.steps_for(stage, micro) * steps_scale)))
    options = f"{stage},root={root},steps={steps}" + (",micro=1" if micro else "")
    return qs.get_config(options)


def expected_exports(stage: str) -> tuple[str, ...]:
    """Components a stage's export holds: the trained ones, the frozen ones, and the ones it carries."""
    cls = stage_class(stage)
    trained = [c for names in cls.group_components.values() for c in names if c in components.COMPONENTS]
    return tuple(dict.fromkeys(trained + list(cls.frozen_components) + list(cls.carries_from)))


def trained_components(stage: str) -> tuple[str, ...]:
    groups = stage_class(stage).group_components.values()
    return tuple(c for names in groups for c in names if c in components.COMPONENTS)


def export_complete(workdir: str | os.PathLike, stage: str, num_steps: int) -> bool:
    """Whether ``workdir/export`` holds every component of the stage, the trained ones at step ``num_steps``, and the
    scheduler config."""
    export = Path(workdir) / "export"
    if not (export / "scheduler" / "scheduler_config.json").is_file():
        return False
    trained = trained_components(stage)
    for name in expected_exports(stage):
        training = components.read_training(export / components.get(name).folder)  # written last
        if not training or (name in trained and int(training.get("step", -1)) != int(num_steps)):
            return False
    return True


def run_stage(config, workdir: str | os.PathLike) -> dict:
    """Trains one stage in this process on one device (resuming from the workdir's checkpoints)."""
    setup_runtime(config)
    trainer = Trainer.build(config, workdir, devices=jax.devices()[:1])
    return trainer.run()


def stage_main(stage: str, root: str, steps_scale: float, micro: bool) -> None:
    """The child process of one stage: trains it and writes ``<workdir>/quickstart_stage.json`` (wall and CPU
    time, the trainer's summary)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    wall, cpu = time.perf_counter(), time.process_time()
    config = stage_config(stage, root, steps_scale, micro)
    config.log.progress_bar = False  # two stages may run at once: the parent reports progress
    workdir = Path(root) / stage
    summary = run_stage(config, workdir)
    record = {"stage": stage, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
              "num_steps": int(config.num_steps), "summary": summary}
    (workdir / STAGE_SUMMARY).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if summary.get("preempted"):
        sys.exit(3)


def _last_step(workdir: Path) -> int:
    """The last step a running stage logged (its ``metrics.jsonl``), 0 before the first."""
    path = workdir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.startswith("{")]
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def train_stages(root: Path, steps_scale: float = 1.0, micro: bool = False, jobs: int = 2, progress: bool = True,
                 say=lambda *a: print(*a, flush=True)) -> dict[str, dict]:
    """Trains every stage of ``configs.STAGE_ORDER``, each in a child process, up to ``jobs`` at once: a
    stage starts as soon as the stages it reads are exported (vae, vocoder and audiomae need nothing; ldm needs
    vae and audiomae; gpt2 audiomae; joint ldm, gpt2 and vocoder), in ``START_PRIORITY`` among those ready.

    XLA:CPU keeps about one core busy per training process and compiles on one core, so two stages side by side
    use two cores where one alone would leave the second mostly idle. A stage whose export is complete is
    skipped; an interrupted one resumes from its checkpoints. Returns per stage its wall and CPU time and status.
    """
    pending = sorted(STAGE_ORDER, key=lambda s: START_PRIORITY.index(s) if s in START_PRIORITY else 99)
    done: set[str] = set()
    running: dict[str, tuple[Any, float, Any]] = {}
    timings: dict[str, dict] = {}
    started = time.perf_counter()
    last_status = started
    try:
        while pending or running:
            for stage in list(pending):
                if len(running) >= jobs:
                    break
                if not all(d in done for d in stage_dependencies(stage)):
                    continue
                pending.remove(stage)
                config = stage_config(stage, root, steps_scale, micro)
                workdir = root / stage
                if export_complete(workdir, stage, config.num_steps):
                    done.add(stage)
                    timings[stage] = {"wall_s": 0.0, "cpu_s": 0.0, "status": "kept (export complete)"}
                    say(f"[quickstart] {stage}: export complete, skipped")
                    continue
                workdir.mkdir(parents=True, exist_ok=True)
                (workdir / STAGE_SUMMARY).unlink(missing_ok=True)
                log_file = open(workdir / STAGE_LOG, "a")
                command = [sys.executable, "-m", "audioldm2_jax.quickstart", "--stage-only", stage,
                           "--root", str(root), "--steps-scale", repr(steps_scale)] + (["--micro"] if micro else [])
                # its own session: a Ctrl-C reaches this process only, which stops the child with SIGTERM (it saves);
                # this working directory, so that a relative root means the same folder
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
                running[stage] = (process, time.perf_counter(), log_file)
                say(f"[quickstart] {stage}: training {config.num_steps} steps in {workdir} (log: {STAGE_LOG})")
            for stage, (process, t0, log_file) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log_file.close()
                del running[stage]
                workdir = root / stage
                if code != 0:
                    tail = (workdir / STAGE_LOG).read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"stage {stage} failed (exit status {code}); the end of {workdir / STAGE_LOG}:"
                                       f"\n{tail}\nrun the quickstart again to resume it")
                record = json.loads((workdir / STAGE_SUMMARY).read_text())
                summary = record["summary"]
                timings[stage] = {
                    "wall_s": time.perf_counter() - t0, "cpu_s": record["cpu_s"],
                    "status": f"trained steps {summary.get('start_step', 0)}..{summary['final_step']}"
                              + (" (resumed)" if summary.get("resumed_from") is not None else ""),
                    "compile_s": float(summary["timings"].get("first_step", 0.0)),
                    "last_metrics": {k: v for k, v in summary.get("last_metrics", {}).items()
                                     if k.endswith("loss") or k in ("rec_l1", "mel_l1", "loa_cosine")}}
                done.add(stage)
                say(f"[quickstart] {stage}: done in {timings[stage]['wall_s']:.0f} s "
                    f"({record['cpu_s']:.0f} s CPU)")
            if pending and not running and not any(all(d in done for d in stage_dependencies(s)) for s in pending):
                raise RuntimeError(f"stages {pending} wait for stages that are not part of the job")
            now = time.perf_counter()
            if progress and running and now - last_status >= 15:
                last_status = now
                parts = []
                for stage in running:
                    steps = stage_config(stage, root, steps_scale, micro).num_steps
                    parts.append(f"{stage} {_last_step(root / stage)}/{steps}")
                say(f"[quickstart] {now - started:5.0f} s | " + " | ".join(parts))
            if running:
                time.sleep(0.5)
    finally:
        for process, _, log_file in running.values():  # an error (or Ctrl-C) stops the children: they checkpoint
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log_file.close()
    return timings
