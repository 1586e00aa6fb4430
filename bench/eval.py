"""Clips per second of the evaluation's feature extraction, ours (jitted JAX) against the PyTorch references
(torchvggish's front end + ``VGG``; ``panns_inference``'s ``Cnn14``) in the same process on the same random
weights, on ``--clips`` clips of ``--seconds`` s at 16 kHz. Prints clips/s of each and the ratio.

    python bench/eval.py [--clips 8] [--seconds 10] [--iters 3]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from timing import timed
from torchvggish import vggish_input
from torchvggish.torchvggish import VGG, make_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared reference helpers
from reference_init import without_package_init  # noqa: E402

from audioldm2_jax.convert import panns as panns_convert
from audioldm2_jax.convert import vggish as vggish_convert
from audioldm2_jax.models.panns import panns_outputs
from audioldm2_jax.models.vggish import vggish_embeddings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    waves = (0.1 * np.random.default_rng(0).standard_normal((args.clips, int(args.seconds * 16000)))).astype(
        np.float32)

    vgg = VGG(make_layers(), postprocess=False).eval()
    vgg.embeddings = torch.nn.Sequential(*list(vgg.embeddings.children())[:-1])  # as the FAD tools
    vgg_params = jax.device_put(vggish_convert.to_flax({k: v.numpy() for k, v in vgg.state_dict().items()}))
    with without_package_init("panns_inference"):
        cnn14 = importlib.import_module("panns_inference.models").Cnn14(16000, 512, 160, 64, 50, 8000, 527).eval()
    panns_params = jax.device_put(panns_convert.to_flax({k: v.numpy() for k, v in cnn14.state_dict().items()}))

    x = jnp.asarray(waves)
    ours_vggish = jax.jit(vggish_embeddings)

    def torch_vggish():
        with torch.no_grad():
            for w in waves:
                vgg(vggish_input.waveform_to_examples(w, 16000, return_tensor=True))  # [E, 1, 96, 64]

    def torch_panns():
        with torch.no_grad():
            cnn14(torch.from_numpy(waves))

    rows = [("VGGish", lambda: ours_vggish(vgg_params, x).block_until_ready(), torch_vggish),
            ("PANNs CNN14", lambda: panns_outputs(panns_params, x)["logits"].block_until_ready(), torch_panns)]
    print(f"{args.clips} clips of {args.seconds} s, {jax.devices()[0].platform}, torch threads "
          f"{torch.get_num_threads()}")
    for name, ours, ref in rows:
        t_ours, t_ref = timed(ours, args.iters), timed(ref, args.iters)
        print(f"{name:12s} ours {args.clips / t_ours:8.2f} clips/s   torch {args.clips / t_ref:8.2f} clips/s   "
              f"ratio {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
