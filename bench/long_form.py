"""Long-form generation: time and peak memory of one ``AudioLDM2Pipeline.generate`` call at 10, 60 and 150 s, with
the decoders run whole (inside the sampling program) or exactly over windows after it (``DecodeChunking``: the VAE
decoder streamed layer by layer, the vocoder in windows with margins; docs/audio_to_audio.md).

The tiny random-weight checkpoint of tests/pipeline_fixtures.py ("text": UNet 16/32 channels, VAE 8/16/16, 16 mel
bins), DPM-Solver++, guidance 2.5, one prompt. Windows of 10.24 s (the published training length; the tiny
checkpoint's own default is 0.64 s), 1.28 s vocoder margins. Each (length, decoding) runs in a fresh process, so
that its peak resident memory (``ru_maxrss``) is its own; XLA's own figures (``memory_analysis``: temporaries +
outputs) of the sampling program and, when chunked, of the vocoder's windowed program are printed beside it (the
streamed VAE's window programs hold one window each). Prints a Markdown table.

    python bench/long_form.py                       # 10, 60, 150 s; whole and chunked decoding
    python bench/long_form.py --lengths 10 60 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(folder: str, seconds: float, decoding: str, steps: int) -> dict:
    """One measurement in this process: compile + first call, then a second (timed) call."""
    import jax
    import numpy as np

    from audioldm2_jax import AudioLDM2Pipeline
    from audioldm2_jax.pipeline import DecodeChunking

    pipe = AudioLDM2Pipeline.from_pretrained(folder)
    pipe.decode_chunking = DecodeChunking(window_s=10.24) if decoding == "chunked" else None
    kwargs = dict(audio_length_in_s=seconds, num_inference_steps=steps, guidance_scale=2.5, scheduler="dpmsolver++")
    first = pipe.generate("a dog barks in the rain", **kwargs)
    second = pipe.generate("a dog barks in the rain", seed=1, **kwargs)
    plan = pipe._chunk_plan(pipe.frames_for(seconds))
    return dict(seconds=seconds, decoding=decoding, windows=1 if plan is None else len(plan.starts),
                compile_s=first.timings.compile, run_s=second.timings.run, sample_s=second.timings.sample,
                xla_mib=xla_mib(pipe, "sample"), vocode_mib=xla_mib(pipe, "vocode"),
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                finite=bool(np.isfinite(second.waveforms).all()), samples=int(second.waveforms.shape[1]),
                device=jax.devices()[0].device_kind)


def xla_mib(pipe, program: str) -> float | None:
    """Temporaries + outputs of the pipeline's compiled ``program`` (its cache key's first entry), MiB."""
    key = next((k for k in pipe._compiled if k[0] == program), None)
    analysis = None if key is None else pipe._compiled[key].memory_analysis()
    return None if analysis is None else (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0, 150.0])
    parser.add_argument("--decoding", nargs="+", default=["whole", "chunked"], choices=["whole", "chunked"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "SECONDS", "DECODING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, seconds, decoding = args.child
        print(json.dumps(child(folder, float(seconds), decoding, args.steps)))
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from pipeline_fixtures import tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(tiny_checkpoint(Path(tmp) / "tiny", "text")[0])
        rows = []
        for seconds in args.lengths:
            for decoding in args.decoding:
                start = time.perf_counter()
                done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", folder,
                                       str(seconds), decoding], capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                if done.returncode:
                    rows.append(dict(seconds=seconds, decoding=decoding, error=done.stderr.strip()[-300:]))
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                rows[-1]["process_s"] = time.perf_counter() - start
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"tiny checkpoint, DPM-Solver++ {args.steps} steps, guidance 2.5\n")
    print("| length | decoding | windows | compile s | run s | XLA sampling MiB | XLA vocoder MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['seconds']:g} s | {r['decoding']} | failed: {r['error'][-120:]} | | | | | |")
            continue
        xla, vocode = ("-" if r[k] is None else f"{r[k]:.0f}" for k in ("xla_mib", "vocode_mib"))
        print(f"| {r['seconds']:g} s | {r['decoding']} | {r['windows']} | {r['compile_s']:.1f} | {r['run_s']:.1f} | "
              f"{xla} | {vocode} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
