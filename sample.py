"""Generate audio with AudioLDM 2: one 16-bit WAV, a log-mel spectrogram PNG and a JSON of the settings per clip.

    python sample.py --checkpoint cvssp/audioldm2 --prompt "a dog barks in the rain" --out runs/samples
    python sample.py --checkpoint /ckpt/audioldm2 --prompts-file prompts.txt --batch-size 8 --steps 100 \\
        --scheduler dpmsolver++ --num-waveforms 3 --dtype bfloat16 --out runs/samples
    python sample.py --checkpoint cvssp/audioldm2-gigaspeech --prompt "a man speaking" \\
        --transcription "hello there" --out runs/speech

--prompts-file: one prompt per line, optionally ``prompt|name`` (``name`` is the file stem) or
``prompt|name|transcription``; blank lines and ``#`` comments are skipped. Clip i uses seed ``--seed + i``.
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
import math
import sys


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
    from audioldm2_jax.diffusion import SAMPLER_NAMES

    if text not in SAMPLER_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sampler; valid names: {', '.join(SAMPLER_NAMES)}")
    return text


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--coordinator-address", default=None,
                        help="multi-process runs: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-process runs (JAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, default=None, help="multi-process runs (JAX_PROCESS_ID)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from audioldm2_jax.parallel import distributed as dist

    dist.initialize(dist.DistributedSettings.from_env(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id))
    with dist.exit_together():
        totals = _generate(args, dist)
        dist.shutdown()  # multi-process: every process leaves together, the coordination service last
    return totals


def _generate(args, dist) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from audioldm2_jax.pipeline import AudioLDM2Pipeline, read_prompts, run_sampling_job

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
            num_inference_steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler)
    if jax.process_count() > 1:  # every process's totals, for process 0's report (wall time: the slowest one)
        from jax.experimental import multihost_utils

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


if __name__ == "__main__":
    try:
        totals = main()
    except (ValueError, FileNotFoundError) as err:  # bad flags or inputs: the message, not a traceback
        sys.exit(f"error: {err}")
    if totals["failed"]:  # diverged clips were not written: the run did not succeed
        sys.exit(1)
