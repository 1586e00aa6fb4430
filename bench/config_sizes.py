"""Prints the sizes of the T-UNet scaling family and of the published base / large UNets as a Markdown table:
parameters (``jax.eval_shape`` of the init) and training FLOPs per example (XLA's cost analysis of the lowered
forward + backward on one 10.24 s clip; nothing is compiled for a device or executed), from
:func:`audioldm2_jax.configs.sizes.size_rows`.

    python bench/config_sizes.py                      # the family and large
    python bench/config_sizes.py --presets xs base     # some rows only
    python bench/config_sizes.py --components         # also every published component's parameter count

Runs on any machine in a few minutes (tracing and lowering only; memory stays small).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import flax.linen as nn
import jax

from audioldm2_jax import components
from audioldm2_jax.configs import sizes

# Parameter counts (millions) of the published checkpoints (audioldm2_jax/configs/published/README.md).
PUBLISHED_M = {"unet": 346.9, "vae": 55.4, "vocoder": 55.3, "gpt2": 124.4, "t5": 341.2, "projection": 1.18}


def unet_table(names, frames: int) -> list[str]:
    lines = [f"UNet training cost per example: forward + backward of the denoising loss on one {frames / 100:g} s "
             f"clip (latents [{frames // 4}, 16, 8]), {sizes.LOA_TOKENS} LOA tokens, {sizes.T5_TOKENS} T5 tokens; "
             "XLA cost analysis (all HLO ops), optimizer update excluded.", "",
             "| preset | width | depth | transformer layers | block_out_channels | UNet params | GFLOP / example "
             "(fwd+bwd) |",
             "|---|---|---|---|---|---|---|"]
    start = time.perf_counter()
    for row in sizes.size_rows(names, frames=frames):
        name = row["name"] + (" (published base)" if row["name"] == "base" else "")
        name = "large (published)" if row["name"] == "large" else name
        lines.append(f"| {name} | {row['width']:g} | {row['depth']:g} | {row['transformer_layers']} | "
                     f"{', '.join(map(str, row['channels']))} | {row['params'] / 1e6:.1f}M | {row['gflop']:.1f} |")
        print(f"# {row['name']}: done at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return lines


def component_table() -> list[str]:
    lines = ["", "Published components (base shapes; `clap` is the text tower with its projection, the part AudioLDM 2 "
             "runs):", "", "| component | params | published |", "|---|---|---|"]
    for name, config in sizes.published_models("base").items():
        shapes = components.get(name).abstract_params(config)
        count = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes)))
        published = f"{PUBLISHED_M[name]}M" if name in PUBLISHED_M else "-"
        lines.append(f"| {name} | {count / 1e6:.2f}M | {published} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(sizes.SCALING_PRESETS) + ["large"],
                        choices=list(sizes.SCALING_PRESETS) + ["large"])
    parser.add_argument("--frames", type=int, default=sizes.CLIP_FRAMES, help="mel frames per clip (1024 = 10.24 s)")
    parser.add_argument("--components", action="store_true", help="also count every published component")
    args = parser.parse_args()

    lines = unet_table(args.presets, args.frames)
    if args.components:
        lines += component_table()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
