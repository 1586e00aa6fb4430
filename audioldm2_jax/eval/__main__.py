"""``python -m audioldm2_jax.eval --generated DIR --reference DIR [--metrics fad,fd,kl,is,clap,fad_inf] --vggish PATH
--panns PATH [--clap CHECKPOINT] [--prompts JSON] [--json OUT] [--cache DIR] [--devices N]``: prints a table of the
metrics and writes them as JSON (see :func:`audioldm2_jax.eval.run.evaluate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.eval import metrics as M
from audioldm2_jax.eval.run import BATCH_SIZE, DEFAULT_CACHE, KNOWN_METRICS, METRICS, evaluate, format_table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m audioldm2_jax.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--generated", required=True, help="folder of generated clips (WAV / FLAC)")
    p.add_argument("--reference", required=True, help="folder of reference clips (same file names for KL)")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help=f"comma-separated subset of {','.join(KNOWN_METRICS)} (default: {','.join(METRICS)})")
    p.add_argument("--vggish", help="vggish-10086976.pth (torchvggish's release), for FAD")
    p.add_argument("--panns", help="Cnn14_16k_mAP=0.438.pth (zenodo record 3987831), for FD, KL and IS")
    p.add_argument("--clap", help="CLAP checkpoint (an AudioLDM 2 pipeline folder or a transformers CLAP folder)")
    p.add_argument("--prompts", help="JSON {clip name: prompt} for the CLAP score (default: NAME.json beside clips)")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="reference-feature cache folder ('none': no cache)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="clips per jitted call (rounded up to a multiple of the device count)")
    p.add_argument("--devices", type=int, default=None,
                   help="split each batch over the first N local devices (default: all of them)")
    p.add_argument("--fad-inf-min-n", type=int, default=M.FAD_INF_MIN_N,
                   help="FAD-inf: smallest sample of generated VGGish frames (fadtk: 500)")
    p.add_argument("--fad-inf-steps", type=int, default=M.FAD_INF_STEPS, help="FAD-inf: sample sizes (fadtk: 25)")
    p.add_argument("--is-splits", type=int, default=10, help="Inception score splits (audioldm_eval: 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m.strip()]
    try:
        result = evaluate(args.generated, args.reference, metrics, vggish=args.vggish, panns=args.panns,
                          clap=args.clap, prompts=args.prompts,
                          cache_dir=None if args.cache.lower() == "none" else args.cache,
                          progress=not args.no_progress, batch_size=args.batch_size, is_splits=args.is_splits,
                          devices=args.devices, fad_inf_min_n=args.fad_inf_min_n, fad_inf_steps=args.fad_inf_steps)
    except (ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
