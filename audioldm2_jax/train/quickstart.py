"""The quickstart, end to end: every training stage at tiny size on the procedural dataset, then sampling from the
result and a report of how well the audio follows its prompts.

    python -m audioldm2_jax.train.quickstart [--root runs/quickstart] [--prompts 48] [--steps-scale 1.0]

What it does, in order (``configs/quickstart.py`` holds every size, step count and sampler setting):

1. ``root/text``: the shared text pieces, built once: a CLAP tokenizer (RoBERTa BPE, ``tokenizer/``) and a T5
   tokenizer (SentencePiece, ``tokenizer_2/``) trained on captions of the quickstart grammar, and the frozen,
   randomly initialised T5 and CLAP text encoders (``t5/``, ``clap/`` component folders). Random frozen encoders
   still map different captions to different features; the trained networks learn to read them.
2. ``root/<stage>`` for the stages in ``configs.common.STAGE_ORDER``, each trained by the trainer in a child
   process of its own (one device; its log in ``root/<stage>/quickstart_stage.log``), two at a time where the
   stages' inputs allow (:func:`train_stages`): a stage whose export is complete (every component at the
   configured step) is skipped, and an interrupted one resumes from its latest checkpoint (the trainer does that
   by itself; Ctrl-C or SIGTERM makes it save first).
3. ``root/samples``: ``--prompts`` captions drawn from the quickstart grammar (fixed seed), sampled from the joint
   stage's export with :class:`audioldm2_jax.pipeline.AudioLDM2Pipeline` (one WAV, spectrogram PNG and JSON per
   clip, as ``sample.py`` writes them).
4. ``root/report.json`` / ``root/report.md`` (also printed): prompt following measured on the WAV files with the
   procedural dataset's checks (pitch class: chance 1/12; instrument family; onset rate) and, apart, the pitch
   class read from the spectrogram the diffusion model generated (before the vocoder); the same checks on the
   prompts' true clips passed through the trained vocoder (and VAE), which bound what the chain can reach, wall
   and CPU time per step of the job, and ``root/loss_<stage>.png`` loss curves from each stage's ``metrics.jsonl``.

``--micro`` runs the same job at the smallest sizes with a few steps (the test suite's end-to-end check).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def _configs():
    """``configs.quickstart`` and ``configs.common`` (the ``configs`` package lives at the repository root)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from configs import common, quickstart

    return quickstart, common


def stage_config(stage: str, root: str | os.PathLike, steps_scale: float = 1.0, micro: bool = False):
    """The config of one stage of the job under ``root``."""
    qs, _ = _configs()
    steps = max(1, int(round(qs.steps_for(stage, micro) * steps_scale)))
    options = f"{stage},root={root},steps={steps}" + (",micro=1" if micro else "")
    return qs.get_config(options)


# ----------------------------------------------------------------------------------------------------------------
# 1. Shared text pieces
# ----------------------------------------------------------------------------------------------------------------


def _component_done(directory: Path) -> bool:
    from audioldm2_jax.train import components as comp

    return (directory / comp.META_FILE).is_file() and (directory / comp.PARAMS_FILE).is_file()


def build_text(root: str | os.PathLike, config) -> dict[str, Any]:
    """Tokenizers (trained on captions of the quickstart grammar) and randomly initialised frozen T5 / CLAP text
    encoders under ``root/text``; pieces already there are kept. Returns what was built."""
    import flax.linen as nn
    import jax

    from audioldm2_jax.train import components as comp
    from audioldm2_jax.train import config as config_lib
    from audioldm2_jax.train import text as text_lib

    qs, _ = _configs()
    text_dir = Path(root) / "text"
    built: dict[str, Any] = {}
    tokenizers = {"clap": (text_dir / "tokenizer", text_lib.train_clap_tokenizer, config.model.clap.text.vocab_size),
                  "t5": (text_dir / "tokenizer_2", text_lib.train_t5_tokenizer, config.model.t5.vocab_size)}
    captions = None
    for encoder, (folder, train_fn, model_vocab) in tokenizers.items():
        if not (folder / "tokenizer_config.json").is_file():
            if captions is None:
                captions = text_lib.procedural_captions(count=4000, seed=0, **qs.GRAMMAR)
            tokenizer = train_fn(captions, folder, vocab_size=min(1000, int(model_vocab)))
            # the caption length training uses, so that the pipeline truncates (and pads the T5 stream) the same
            tokenizer.model_max_length = int(config.text[f"{encoder}_max_length"])
            tokenizer.save_pretrained(str(folder))
            built[f"{encoder}_tokenizer"] = str(folder)
        size = len(text_lib.load_tokenizer(folder))
        if size > int(model_vocab):
            raise ValueError(f"{folder}: the {encoder} tokenizer has {size} tokens, more than the model's vocab_size "
                             f"{model_vocab} (model.{'clap.text' if encoder == 'clap' else 't5'}.vocab_size)")
    for index, name in enumerate(("t5", "clap")):
        folder = text_dir / name
        if _component_done(folder):
            continue
        model_config = config_lib.model_config(config, name)
        params = nn.unbox(jax.jit(comp.init_fn(name, model_config))(jax.random.key(1000 + index)))
        comp.save_component(folder, name, model_config, jax.device_get(params),
                            {"init": "random", "note": "frozen; random weights still tell captions apart"})
        built[name] = str(folder)
    return built


# ----------------------------------------------------------------------------------------------------------------
# 2. Stages
# ----------------------------------------------------------------------------------------------------------------


def expected_exports(stage: str) -> tuple[str, ...]:
    """Components a stage's export holds: the trained ones, the frozen ones, and the passengers its config names."""
    from audioldm2_jax.train import components as comp
    from audioldm2_jax.train.stages import stage_class

    _, common = _configs()
    cls = stage_class(stage)
    trained = [c for names in cls.group_components.values() for c in names if c in comp.COMPONENTS]
    return tuple(dict.fromkeys(trained + list(cls.frozen_components) + list(common.STAGE_PASSENGERS.get(stage, {}))))


def trained_components(stage: str) -> tuple[str, ...]:
    from audioldm2_jax.train import components as comp
    from audioldm2_jax.train.stages import stage_class

    return tuple(c for names in stage_class(stage).group_components.values() for c in names if c in comp.COMPONENTS)


def export_complete(workdir: str | os.PathLike, stage: str, num_steps: int) -> bool:
    """Whether ``workdir/export`` holds every component of the stage, the trained ones at step ``num_steps``, and the
    scheduler config."""
    from audioldm2_jax.train import components as comp

    export = Path(workdir) / "export"
    if not (export / "scheduler" / "scheduler_config.json").is_file():
        return False
    for name in expected_exports(stage):
        if not _component_done(export / name):
            return False
        if name in trained_components(stage):
            if int(comp.read_component_meta(export / name).get("extra", {}).get("step", -1)) != int(num_steps):
                return False
    return True


def stage_dependencies(stage: str) -> tuple[str, ...]:
    """The stages whose exports ``stage`` reads (``configs.common.STAGE_INPUTS`` and passengers)."""
    _, common = _configs()
    producers = {**common.STAGE_INPUTS[stage], **common.STAGE_PASSENGERS.get(stage, {})}.values()
    return tuple(s for s in common.STAGE_ORDER if s in set(producers))


def run_stage(config, workdir: str | os.PathLike) -> dict:
    """Trains one stage in this process on one device (resuming from the workdir's checkpoints)."""
    import jax

    from audioldm2_jax.train.loop import Trainer, setup_runtime

    setup_runtime(config)
    trainer = Trainer.build(config, workdir, devices=jax.devices()[:1])
    return trainer.run()


# Which ready stage starts first when a slot frees up: the critical path (vae -> ldm -> joint) first, and AudioMAE
# early because the LDM needs it; vocoder and GPT-2 fill the other slot meanwhile.
START_PRIORITY = ("vae", "audiomae", "ldm", "vocoder", "gpt2", "joint")
STAGE_SUMMARY = "quickstart_stage.json"
STAGE_LOG = "quickstart_stage.log"
# the report's checks of each clip (audio, except the pitch class read from the generated spectrogram)
CHECKS = ("pitch_class", "spectrogram_pitch_class", "instrument_family", "onset_rate")


def _stage_main(stage: str, root: str, steps_scale: float, micro: bool) -> None:
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
    """Trains every stage of ``configs.common.STAGE_ORDER``, each in a child process, up to ``jobs`` at once: a
    stage starts as soon as the stages it reads are exported (vae, vocoder and audiomae need nothing; ldm needs
    vae and audiomae; gpt2 audiomae; joint ldm, gpt2 and vocoder), in ``START_PRIORITY`` among those ready.

    XLA:CPU keeps about one core busy per training process and compiles on one core, so two stages side by side
    use two cores where one alone would leave the second mostly idle. A stage whose export is complete is
    skipped; an interrupted one resumes from its checkpoints. Returns per stage its wall and CPU time and status.
    """
    import subprocess

    _, common = _configs()
    pending = sorted(common.STAGE_ORDER, key=lambda s: START_PRIORITY.index(s) if s in START_PRIORITY else 99)
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
                command = [sys.executable, "-m", "audioldm2_jax.train.quickstart", "--stage-only", stage,
                           "--root", str(root), "--steps-scale", repr(steps_scale)] + (["--micro"] if micro else [])
                # its own session: a Ctrl-C reaches this process only, which stops the child with SIGTERM (it saves)
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                           start_new_session=True)
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


# ----------------------------------------------------------------------------------------------------------------
# 3. Sampling
# ----------------------------------------------------------------------------------------------------------------


def draw_prompts(count: int, seed: int, duration: float) -> list[dict]:
    """``count`` prompts of the quickstart grammar: ``{"name", "caption", "attributes"}`` (attributes as the
    procedural dataset states them)."""
    from audioldm2_jax.data.procedural import caption_for, sample_attributes

    qs, _ = _configs()
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        attributes = sample_attributes(rng, duration, **qs.GRAMMAR)
        prompts.append({"name": f"clip{i:03d}", "caption": caption_for(attributes, rng), "attributes": attributes})
    return prompts


def sample_prompts(export, prompts: Sequence[dict], out_dir: str | os.PathLike, settings: dict,
                   progress: bool = True) -> dict:
    """Samples every prompt from a training export (its folder, or the pipeline loaded from it) into ``out_dir``:
    ``<name>.wav``, ``<name>.png`` and ``<name>.json`` per clip, as ``sample.py`` writes them. Clip ``i`` uses seed
    ``settings["seed"] + i``.

    Prompts are batched in order of their T5 token count: the pipeline pads a batch's prompts to the longest one,
    which shifts the language model's positions for the shorter ones by the padding (training showed every
    caption unpadded), so prompts of similar lengths go together. The last batch is padded to
    ``settings["batch_size"]`` (one compiled sampling loop for all). Returns the totals: ``clips``, ``audio_s``,
    ``wall_s`` (without compilation) and ``compile_s``."""
    from tqdm import tqdm

    from audioldm2_jax.pipeline import AudioLDM2Pipeline

    pipe = export if isinstance(export, AudioLDM2Pipeline) else AudioLDM2Pipeline.from_pretrained(export)
    batch_size = int(settings["batch_size"])
    call = {k: settings[k] for k in ("audio_length_in_s", "num_inference_steps", "guidance_scale", "scheduler")}
    lengths = [len(pipe.tokenizer_2(p["caption"])["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    totals = dict(clips=0, audio_s=0.0, wall_s=0.0, compile_s=0.0)
    bar = tqdm(total=len(prompts), unit="clip", desc="sample", disable=not progress)
    for chunk in chunks:
        out = _sample_chunk(pipe, [prompts[i] for i in chunk], [int(settings["seed"]) + i for i in chunk], out_dir,
                            batch_size, call)
        for key, value in out.items():
            totals[key] += value
        bar.update(len(chunk))
    bar.close()
    return totals


def _sample_chunk(pipe, prompts: Sequence[dict], seeds: Sequence[int], out_dir, batch_size: int, call: dict) -> dict:
    """One pipeline call for up to ``batch_size`` prompts (padded to that size with the last one)."""
    from audioldm2_jax.audio.io import write_wav
    from audioldm2_jax.pipeline import save_spectrogram_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real = len(prompts)
    captions = [p["caption"] for p in prompts] + [prompts[-1]["caption"]] * (batch_size - real)
    seeds = list(seeds) + [seeds[-1]] * (batch_size - real)
    waveforms, log_mels = pipe(captions, seed=seeds, return_mel=True, **call)
    for prompt, seed, wave, log_mel in zip(prompts, seeds, waveforms[:real], log_mels):
        name = prompt["name"]
        write_wav(out / f"{name}.wav", wave, pipe.sampling_rate)
        np.save(out / f"{name}.mel.npy", log_mel)
        save_spectrogram_png(out / f"{name}.png", wave, prompt["caption"])
        settings = dict(prompt=prompt["caption"], seed=seed, num_waveforms_per_prompt=1,
                        sampling_rate=pipe.sampling_rate, num_samples=int(wave.shape[0]),
                        duration_s=wave.shape[0] / pipe.sampling_rate, **call)
        (out / f"{name}.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    t = pipe.timings
    return dict(clips=real, audio_s=real * waveforms.shape[1] / pipe.sampling_rate, wall_s=t.run,
                compile_s=t.compile)


# ----------------------------------------------------------------------------------------------------------------
# 4. Report
# ----------------------------------------------------------------------------------------------------------------


def score_samples(samples_dir: str | os.PathLike, prompts: Sequence[dict]) -> dict:
    """Runs the procedural checks on each prompt's WAV file: ``{"clips": [...], "summary": {...}}``.

    Per clip: pitch class (the note the caption names, for pitched prompts), instrument family, onset rate (as
    :func:`audioldm2_jax.data.procedural.score_clip` checks them), and ``spectrogram_pitch_class``: the pitch
    class read from the log-mel the diffusion model generated (``<name>.mel.npy``, the vocoder's input), which
    tells the diffusion model's prompt following apart from the vocoder's rendering. Summary: accuracy per check
    with its count and chance level (pitch class: 1/12; family: 1/5, the procedural families)."""
    from audioldm2_jax.audio.io import read_audio
    from audioldm2_jax.data import procedural

    clips = []
    for p in prompts:
        wave, rate = read_audio(Path(samples_dir) / f"{p['name']}.wav")
        attributes = p["attributes"]
        scores = procedural.score_clip(np.asarray(wave, np.float32), attributes, rate)
        found = procedural.estimate_pitch_classes(np.asarray(wave, np.float32), rate, max_notes=1)
        mel_path = Path(samples_dir) / f"{p['name']}.mel.npy"
        if attributes.pitch_classes and mel_path.exists():
            from_mel = procedural.estimate_pitch_class_from_log_mel(np.load(mel_path))
            scores["spectrogram_pitch_class"] = from_mel == attributes.pitch_classes[0]
        clips.append({"name": p["name"], "caption": p["caption"], "pitch_classes": list(attributes.pitch_classes),
                      "estimated_pitch_class": found[0] if found else None,
                      "family": attributes.family,
                      "estimated_family": procedural.estimate_instrument_family(np.asarray(wave, np.float32), rate),
                      "onset_rate": attributes.onset_rate,
                      "estimated_onset_rate": procedural.estimate_onset_rate(np.asarray(wave, np.float32), rate),
                      **{k: bool(v) for k, v in scores.items()}})
    chance = {"pitch_class": 1 / 12, "spectrogram_pitch_class": 1 / 12,
              "instrument_family": 1 / len(procedural.FAMILIES), "onset_rate": None}
    summary = {}
    for check in CHECKS:
        values = [c[check] for c in clips if check in c]
        if values:
            summary[check] = {"accuracy": float(np.mean(values)), "correct": int(np.sum(values)),
                              "count": len(values), "chance": chance[check]}
    roots = [c["pitch_classes"][0] for c in clips if c["pitch_classes"]]
    for check in ("pitch_class", "spectrogram_pitch_class"):
        if check in summary:  # what output that ignores its prompt reaches by always sounding the most frequent note
            summary[check]["best_constant"] = max(roots.count(r) for r in set(roots)) / len(roots)
    return {"clips": clips, "summary": summary}


def reference_scores(pipe, prompts: Sequence[dict]) -> dict:
    """Where the chain loses the prompt: the procedural checks on the prompts' ground-truth clips (rendered from
    their attributes: the checks' own ceiling), on the trained vocoder's rendering of their log-mel spectrograms
    (the vocoder's ceiling), and on the vocoder's rendering of the VAE's reconstruction of them (the ceiling of
    everything after the diffusion model). Same summary layout as :func:`score_samples`."""
    import jax
    import jax.numpy as jnp

    from audioldm2_jax.audio.mel import log_mel_spectrogram
    from audioldm2_jax.data import procedural

    waves = [procedural.render(p["attributes"], np.random.default_rng(i)) for i, p in enumerate(prompts)]
    frames = pipe.frames_for(prompts[0]["attributes"].duration)
    mels = np.stack([log_mel_spectrogram(w)[:frames] for w in waves])  # [B, T, 64]
    if mels.shape[1] < frames:  # the VAE needs a multiple of its scale factor: pad with silence
        mels = np.pad(mels, ((0, 0), (0, frames - mels.shape[1]), (0, 0)), constant_values=float(mels.min()))
    vae, vocoder = pipe.vae, pipe.vocoder

    @jax.jit
    def render(params, mel):
        recon, _ = vae.apply(params["vae"], mel[..., None])
        return (vocoder.apply(params["vocoder"], mel), vocoder.apply(params["vocoder"], recon[..., 0]),
                recon[..., 0])

    vocoded, round_trip, recon = jax.device_get(render(pipe.params, jnp.asarray(mels, jnp.float32)))
    out = {}
    for name, batch, spectrograms in (("ground_truth", waves, mels), ("vocoder(true mel)", vocoded, None),
                                      ("vocoder(vae(true mel))", round_trip, recon)):
        hits = [procedural.score_clip(np.asarray(w[:len(waves[0])], np.float32), p["attributes"])
                for w, p in zip(batch, prompts)]
        if spectrograms is not None:
            for hit, log_mel, p in zip(hits, spectrograms, prompts):
                if p["attributes"].pitch_classes:
                    hit["spectrogram_pitch_class"] = (procedural.estimate_pitch_class_from_log_mel(log_mel)
                                                      == p["attributes"].pitch_classes[0])
        out[name] = {check: float(np.mean([h[check] for h in hits if check in h]))
                     for check in CHECKS if any(check in h for h in hits)}
    out["vae_reconstruction_l1"] = float(np.mean(np.abs(recon - mels)))
    return out


def plot_losses(workdir: str | os.PathLike, stage: str, path: str | os.PathLike) -> bool:
    """The stage's logged losses (every ``*loss`` key of ``metrics.jsonl``) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from audioldm2_jax.train.metrics import read_jsonl

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


# ----------------------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------------------


class _Clock:
    """Wall and process CPU time of each named phase."""

    def __init__(self):
        self.timings: dict[str, dict] = {}

    def phase(self, name: str):
        import contextlib

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
    qs, common = _configs()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    first = stage_config(common.STAGE_ORDER[0], root, steps_scale, micro)
    first.xla_cpu_fast_compile = micro  # this process compiles the sampler (see configs/quickstart.py)
    from audioldm2_jax.train.loop import setup_runtime

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
    export = root / common.STAGE_ORDER[-1] / "export"
    samples = root / "samples"
    if samples.is_dir():  # the clips of an earlier run (other prompts, other weights) would mix with these
        import shutil

        shutil.rmtree(samples)
    say(f"[quickstart] sampling {num_prompts} prompts from {export} -> {samples}")
    with clock.phase("sample") as entry:
        from audioldm2_jax.pipeline import AudioLDM2Pipeline

        pipe = AudioLDM2Pipeline.from_pretrained(export)
        totals = sample_prompts(pipe, prompts, samples, sampling, progress)
        entry["status"] = (f"{totals['clips']} clips, compile {totals['compile_s']:.0f} s, "
                           f"run {totals['wall_s']:.0f} s")
    with clock.phase("score") as entry:
        scores = score_samples(samples, prompts)
        references = reference_scores(pipe, prompts)
        plots = []
        for stage in common.STAGE_ORDER:
            path = root / f"loss_{stage}.png"
            if plot_losses(root / stage, stage, path):
                plots.append(path.name)
        entry["status"] = "procedural checks, loss plots"
    total = time.perf_counter() - started
    report = {"root": str(root), "export": str(export), "prompts": num_prompts, "prompt_seed": qs.PROMPT_SEED,
              "grammar": {k: list(v) for k, v in qs.GRAMMAR.items()}, "sampling": sampling, "micro": micro,
              "steps_scale": steps_scale, "jobs": jobs, "summary": scores["summary"], "references": references,
              "clips": scores["clips"],
              "timings": clock.timings, "total_wall_s": total, "load": _load_average(), "loss_plots": plots}
    text = write_report(root, report)
    say(text)
    say(f"[quickstart] outputs: {root}/report.md, {root}/report.json, {samples}/ (WAV + PNG + JSON per clip), "
        f"{root}/loss_<stage>.png; the model: {export}")
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
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
        return _stage_main(args.stage_only, args.root, args.steps_scale, args.micro)
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


if __name__ == "__main__":
    main()
