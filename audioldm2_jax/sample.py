"""Generate audio with AudioLDM 2: one 16-bit WAV, a log-mel spectrogram PNG and a JSON of the settings per clip
(``sample.py`` at the repository root, the ``audioldm2-sample`` command).

    python sample.py --checkpoint cvssp/audioldm2 --prompt "a dog barks in the rain" --out runs/samples
    python sample.py --checkpoint /ckpt/audioldm2 --prompts-file prompts.txt --batch-size 8 --steps 100 \\
        --scheduler dpmsolver++ --num-waveforms 3 --dtype bfloat16 --out runs/samples
    python sample.py --checkpoint cvssp/audioldm2-gigaspeech --prompt "a man speaking" \\
        --transcription "hello there" --out runs/speech
    python sample.py --checkpoint cvssp/audioldm2 --input song.wav --mode transfer --strength 0.6 \\
        --prompt "a string quartet" --out runs/edits      # also: --mode inpaint --start 2 --end 3,
                                                          # --mode sr [--cutoff-hz 4000], --mode continue --seconds 5

--prompts-file: one prompt per line, optionally ``prompt|name`` (``name`` is the file stem) or
``prompt|name|transcription``; blank lines and ``#`` comments are skipped. Clip i uses seed ``--seed + i``.
--input FILE --mode MODE edits a recording with every prompt (``AudioLDM2Pipeline.transfer / inpaint /
super_resolve / continue_audio``, docs/audio_to_audio.md); its PNG shows the input's spectrogram next to the output's.
Ends with the throughput: seconds of audio per second of wall time, compilation reported apart. Flags are checked
before the checkpoint is read (a bad one is a usage error, status 2). A clip whose audio comes out NaN / inf (a
diverged model) is named, gets no files, and the run ends with status 1 after writing the others.

Multi-process (several hosts, or ``python -m audioldm2_jax.launch -n 2 -- sample.py ...`` on one machine): the
prompt list is split into contiguous shares, one per process; each process generates and writes its own clips
(same names and seeds as a single-process run) and process 0 reports the totals. The coordinator comes from
``--coordinator-address`` / ``--num-processes`` / ``--process-id`` or the ``JAX_*`` environment the launcher sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from audioldm2_jax.audio.io import save_edit_png, save_spectrogram_png, write_wav
from audioldm2_jax.diffusion import SAMPLER_NAMES
from audioldm2_jax.parallel import distributed as dist
from audioldm2_jax.pipeline import AudioLDM2Pipeline, NonFiniteOutputError

logger = logging.getLogger(__name__)


def _number_type(kind, name: str, minimum=None, strict=False):
    """An argparse ``type`` that parses ``kind`` and refuses NaN / inf and values below ``minimum`` (or equal to it
    with ``strict``), so that a bad flag fails before the checkpoint is read."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: {name} must be finite")
        if minimum is not None and (value < minimum or (strict and value == minimum)):
            raise argparse.ArgumentTypeError(f"{text!r}: {name} must be {'>' if strict else '>='} {minimum}")
        return value

    return parse


def _sampler_name(text: str) -> str:
    if text not in SAMPLER_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sampler; valid names: {', '.join(SAMPLER_NAMES)}")
    return text


# --mode -> the pipeline method it runs, and the flags that belong to it (flag name -> the method's argument)
EDIT_MODES = {"transfer": ("transfer", {"strength": "strength"}),
              "inpaint": ("inpaint", {"start": None, "end": None, "blend": "blend_s"}),
              "sr": ("super_resolve", {"cutoff_hz": "cutoff_hz"}),
              "continue": ("continue_audio", {"seconds": "seconds", "blend": "blend_s"})}


@dataclasses.dataclass(frozen=True)
class EditJob:
    """An audio-to-audio job: the recording ``audio`` edited by ``AudioLDM2Pipeline.<method>`` with ``options``."""

    mode: str
    audio: str
    options: dict

    @property
    def method(self) -> str:
        return EDIT_MODES[self.mode][0]


def edit_job(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EditJob | None:
    """The :class:`EditJob` the flags ask for (None without ``--input``); a flag of another mode, or ``--input``
    without ``--mode``, is a usage error (``parser.error``: status 2, before anything is loaded)."""
    error = parser.error
    given = {name for name in ("strength", "start", "end", "cutoff_hz", "seconds", "blend")
             if getattr(args, name) is not None}
    if args.input is None:
        if args.mode is not None or given:
            error("--mode and the edit flags (--strength --start --end --cutoff-hz --seconds --blend) need --input")
        return None
    if args.mode is None:
        error("--input needs --mode transfer, inpaint, sr or continue")
    if not Path(args.input).is_file():
        error(f"--input {args.input}: no such file")
    allowed = EDIT_MODES[args.mode][1]
    stray = sorted(given - set(allowed))
    if stray:
        error(f"--mode {args.mode} does not take --{', --'.join(n.replace('_', '-') for n in stray)}")
    if args.mode == "continue" and args.duration is not None:
        error("--mode continue: the output is the input plus --seconds; --duration does not apply")
    options = {argument: getattr(args, name) for name, argument in allowed.items()
               if argument is not None and getattr(args, name) is not None}
    if args.mode == "inpaint" and (args.start is not None or args.end is not None):
        if args.start is None or args.end is None:
            error("--mode inpaint: give both --start and --end (seconds), or neither (the 40-60 % span)")
        options["mask"] = (args.start, args.end)
    return EditJob(args.mode, str(args.input), options)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, each checked on its own here (before anything is loaded); what depends on the checkpoint (e.g. a
    duration shorter than one latent frame) is checked by the pipeline before it compiles."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--checkpoint", required=True, help="diffusers-layout directory or hub id (cvssp/audioldm2)")
    parser.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    parser.add_argument("--prompts-file", help="a file of prompts, one per line: prompt[|name[|transcription]]")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from (all prompts)")
    parser.add_argument("--transcription", default=None, help="words to speak (speech checkpoints; all prompts)")
    parser.add_argument("--duration", type=_number_type(float, "the duration", 0, strict=True), default=None,
                        help="seconds (default: the checkpoint's, 10.24)")
    parser.add_argument("--steps", type=_number_type(int, "the step count", 1), default=200, help="sampler steps")
    parser.add_argument("--guidance", type=_number_type(float, "the guidance scale"), default=3.5,
                        help="classifier-free guidance scale (<= 1: off)")
    parser.add_argument("--scheduler", type=_sampler_name, default=None,
                        help="ddim, dpmsolver++ or pndm (default: the checkpoint's scheduler; pndm needs >= 4 steps "
                        "unless its config sets skip_prk_steps)")
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i")
    parser.add_argument("--num-waveforms", type=_number_type(int, "the number of waveforms", 1), default=1,
                        help="waveforms per prompt, ranked best-first by CLAP against their own prompt")
    parser.add_argument("--batch-size", type=_number_type(int, "the batch size", 1), default=4,
                        help="prompts per compiled batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="compute dtype of the UNet, VAE and vocoder (parameters stay float32)")
    parser.add_argument("--out", default="samples", help="output directory")
    edit = parser.add_argument_group("audio to audio (docs/audio_to_audio.md)")
    edit.add_argument("--input", default=None, help="a recording to edit with every prompt (any sample rate)")
    edit.add_argument("--mode", choices=sorted(EDIT_MODES), default=None,
                      help="transfer (style transfer), inpaint (regenerate a span), sr (regenerate above the "
                      "bandwidth), continue (extend the recording)")
    edit.add_argument("--strength", type=_number_type(float, "the strength", 0), default=None,
                      help="transfer: how much to change, 0..1 (default 0.5)")
    edit.add_argument("--start", type=_number_type(float, "--start", 0), default=None,
                      help="inpaint: start of the span to regenerate, seconds")
    edit.add_argument("--end", type=_number_type(float, "--end", 0), default=None,
                      help="inpaint: end of the span, seconds (default span: 40-60 %% of the clip)")
    edit.add_argument("--cutoff-hz", type=_number_type(float, "--cutoff-hz", 0, strict=True), default=None,
                      help="sr: regenerate above this frequency (default: the input's detected bandwidth)")
    edit.add_argument("--seconds", type=_number_type(float, "--seconds", 0, strict=True), default=None,
                      help="continue: seconds to add (default 5)")
    edit.add_argument("--blend", type=_number_type(float, "--blend", 0), default=None,
                      help="inpaint / continue: keep the input's waveform outside the generated span, cross-faded "
                      "over this many seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--coordinator-address", default=None,
                        help="multi-process runs: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-process runs (JAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, default=None, help="multi-process runs (JAX_PROCESS_ID)")
    args = parser.parse_args(argv)
    args.edit = edit_job(args, parser)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    dist.initialize(dist.DistributedSettings.from_env(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id))
    with dist.exit_together():
        totals = _generate(args)
        dist.shutdown()  # multi-process: every process leaves together, the coordination service last
    return totals


def _generate(args) -> dict:
    clips = read_prompts(args.prompt, args.prompts_file)  # fails early on an empty or malformed list
    offset, mine = dist.split_evenly(clips)  # names and seeds stay those of the whole list
    if jax.process_count() > 1:
        print(f"process {jax.process_index()} of {jax.process_count()}: clips {offset}..{offset + len(mine) - 1} of "
              f"{len(clips)}", flush=True)
    totals = dict(audio_s=0.0, wall_s=0.0, compile_s=0.0, clips=0, failed=0)
    if mine:
        pipe = AudioLDM2Pipeline.from_pretrained(args.checkpoint, dtype=getattr(jnp, args.dtype))
        totals = run_sampling_job(
            pipe, mine, args.out, batch_size=args.batch_size, num_waveforms_per_prompt=args.num_waveforms,
            seed=args.seed + offset, negative_prompt=args.negative_prompt, transcription=args.transcription,
            progress=not args.no_progress and jax.process_index() == 0, audio_length_in_s=args.duration,
            num_inference_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler, edit=args.edit)
    if jax.process_count() > 1:  # every process's totals, for process 0's report (wall time: the slowest one)
        keys = ("audio_s", "wall_s", "compile_s", "clips", "failed")
        table = np.asarray(multihost_utils.process_allgather(np.array([totals[k] for k in keys], np.float64)))
        totals = {k: float(table[:, i].max() if k in ("wall_s", "compile_s") else table[:, i].sum())
                  for i, k in enumerate(keys)}
        totals["clips"], totals["failed"] = int(totals["clips"]), int(totals["failed"])
        if jax.process_index() != 0:
            return totals
    speed = totals["audio_s"] / totals["wall_s"] if totals["wall_s"] > 0 else float("inf")
    print(f"wrote {totals['clips']} clips ({totals['audio_s']:.2f} s of audio) to {args.out}: "
          f"{speed:.3f} s of audio per s of wall time ({totals['wall_s']:.1f} s running, "
          f"compilation {totals['compile_s']:.1f} s apart)")
    if totals["failed"]:  # the names were logged as they failed (by the process that made them)
        names = totals.get("failed_clips") or []
        print(f"error: {totals['failed']} of {len(clips)} clip(s) came out non-finite (NaN / inf) and were not written"
              + (f": {', '.join(names)}" if names else ""), file=sys.stderr)
    return totals


# ----------------------------------------------------------------------------------------------------------------
# The batch job: prompts in, one WAV + spectrogram PNG + settings JSON per clip out
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clip:
    """One prompt of a batch job; ``name`` is the output file stem."""

    prompt: str
    name: str
    transcription: str | None = None


def read_prompts(prompts: Sequence[str] = (), prompts_file: str | os.PathLike | None = None) -> list[Clip]:
    """Prompts from the command line, then from a file with one prompt per line as ``prompt`` or ``prompt|name``
    (``prompt|name|transcription`` for speech); blank lines and lines starting with ``#`` are skipped. Names
    default to ``NNNN_first-words``; they are made file-safe and unique."""
    entries: list[tuple[str, str | None, str | None]] = [(p, None, None) for p in prompts]
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split("|")]
            if len(fields) > 3 or not fields[0]:
                raise ValueError(f"{path}:{number}: expected 'prompt', 'prompt|name' or 'prompt|name|transcription'")
            fields += [None] * (3 - len(fields))
            entries.append((fields[0], fields[1] or None, fields[2] or None))
    if not entries:
        raise ValueError("no prompts: pass --prompt (repeatable) or --prompts-file")
    clips, used = [], set()
    for i, (prompt, name, transcription) in enumerate(entries):
        stem = _file_safe(name) if name else f"{i:04d}_{_file_safe(prompt)[:40]}"
        unique, k = stem, 1
        while unique in used:
            unique, k = f"{stem}_{k}", k + 1
        used.add(unique)
        clips.append(Clip(prompt, unique, transcription))
    return clips


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-").lower() or "clip"


def run_sampling_job(pipe: AudioLDM2Pipeline, clips: Sequence[Clip], out_dir: str | os.PathLike, *,
                     batch_size: int = 4, num_waveforms_per_prompt: int = 1, seed: int = 0,
                     negative_prompt: str | None = None, transcription: str | None = None,
                     progress: bool = True, edit: EditJob | None = None, **call_kwargs) -> dict[str, Any]:
    """Generates every clip in batches of ``batch_size`` prompts and writes, per waveform, ``NAME.wav`` (16-bit),
    ``NAME.png`` (log-mel spectrogram) and ``NAME.json`` (settings). With several waveforms per prompt the files
    are ``NAME_k`` (k = 0 the best CLAP match).

    Clip i uses seed ``seed + i`` whatever the batching. A short last batch is padded with its last prompt so that
    every batch has the same shape (one compilation); the padding's audio is discarded.
    ``call_kwargs`` go to the pipeline (``audio_length_in_s``, ``num_inference_steps``, ``guidance_scale``,
    ``scheduler``, ...). Returns totals: ``audio_s``, ``wall_s`` (excluding compilation), ``compile_s``, ``clips``
    (waveforms written), ``failed`` (clips not written) and ``failed_clips`` (their names).

    A clip whose audio came out non-finite (NaN / inf: :class:`NonFiniteOutputError`) is logged by name, counted
    in ``failed`` and gets no files at all (none of its waveforms); the other clips of its batch are written.

    ``edit``: every prompt edits that recording instead (the pipeline's audio-to-audio method); each PNG then shows
    the input's spectrogram next to the output's, and the JSON records the mode, the input and its options.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not clips:
        raise ValueError("no prompts to generate")
    # Checked for every clip before the first batch runs.
    words = [c.transcription or transcription for c in clips]
    if pipe.is_speech and None in words:
        missing = clips[words.index(None)].prompt
        raise ValueError(f"speech checkpoint: no transcription for prompt {missing!r} (use --transcription or a "
                         "'prompt|name|transcription' line)")
    if not pipe.is_speech and any(w is not None for w in words):
        raise ValueError("a transcription was given, but this checkpoint has no phoneme encoder (text_encoder_2 is "
                         "T5): transcriptions are for the speech checkpoints")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    totals = dict(audio_s=0.0, wall_s=0.0, compile_s=0.0, clips=0, failed=0, failed_clips=[])
    run = pipe.generate if edit is None else functools.partial(getattr(pipe, edit.method), edit.audio, **edit.options)
    edit_settings = {} if edit is None else dict(mode=edit.mode, input=edit.audio, **edit.options)
    bar = tqdm(total=len(clips) * num_waveforms_per_prompt, unit="clip", disable=not progress)
    for start in range(0, len(clips), batch_size):
        batch = list(clips[start:start + batch_size])
        real = len(batch)
        batch += [batch[-1]] * (min(batch_size, len(clips)) - real)  # same shape as the other batches
        seeds = [seed + start + i for i in range(len(batch))]
        transcriptions = [c.transcription or transcription for c in batch] if pipe.is_speech else None
        try:
            result = run([c.prompt for c in batch], negative_prompt=negative_prompt, transcription=transcriptions,
                         num_waveforms_per_prompt=num_waveforms_per_prompt, seed=seeds, **call_kwargs)
            waveforms, diverged, t = result.waveforms, set(), result.timings
        except NonFiniteOutputError as err:  # the batch's other clips are fine: write those
            waveforms, diverged, t = err.waveforms, set(err.prompts), err.timings
        totals["wall_s"] += t.run
        totals["compile_s"] += t.compile
        for i, clip in enumerate(batch[:real]):
            if i in diverged:
                logger.error("clip %s (prompt %r, seed %d): the model produced non-finite audio (NaN / inf); nothing "
                             "written for it", clip.name, clip.prompt, seeds[i])
                totals["failed"] += 1
                totals["failed_clips"].append(clip.name)
                bar.update(num_waveforms_per_prompt)
                continue
            for k in range(num_waveforms_per_prompt):
                wave = waveforms[i * num_waveforms_per_prompt + k]
                stem = clip.name if num_waveforms_per_prompt == 1 else f"{clip.name}_{k}"
                write_wav(out / f"{stem}.wav", wave, pipe.sampling_rate)
                if edit is None:
                    save_spectrogram_png(out / f"{stem}.png", wave, clip.prompt)
                else:
                    save_edit_png(out / f"{stem}.png", result.input_waveform[0], wave, f"{edit.mode}: {clip.prompt}")
                settings = dict(prompt=clip.prompt, negative_prompt=negative_prompt,
                                transcription=transcriptions[i] if transcriptions else None, seed=seeds[i],
                                rank=k, num_waveforms_per_prompt=num_waveforms_per_prompt,
                                sampling_rate=pipe.sampling_rate, num_samples=int(wave.shape[0]),
                                duration_s=wave.shape[0] / pipe.sampling_rate, **edit_settings, **call_kwargs)
                (out / f"{stem}.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
                totals["audio_s"] += wave.shape[0] / pipe.sampling_rate
                totals["clips"] += 1
            bar.update(num_waveforms_per_prompt)
    bar.close()
    return totals


def run(argv=None) -> None:
    """The command-line entry point: exit status 2 for bad flags (argparse), 1 for bad inputs or diverged clips."""
    try:
        totals = main(argv)
    except (ValueError, FileNotFoundError) as err:  # bad flags or inputs: the message, not a traceback
        sys.exit(f"error: {err}")
    if totals["failed"]:  # diverged clips were not written: the run did not succeed
        sys.exit(1)


if __name__ == "__main__":
    run()
