"""Clips per second of the evaluation's feature extraction, ours against the PyTorch references in the same process
on the same random weights, on ``--clips`` clips of ``--seconds`` s at 16 kHz. Ours is what
``python -m audioldm2_jax.eval`` runs: the networks with their front ends, one batch split over every local device
(``run.Extractor.on``, ``ClapEmbedder``), compiled with the project's XLA options. The references: torchvggish's
front end + ``VGG`` (clip by clip, as the FAD tools call it), ``panns_inference``'s ``Cnn14`` (one batch), transformers' ``ClapFeatureExtractor`` +
``ClapModel.get_audio_features`` (default ``ClapConfig``: the HTSAT audio tower; AudioLDM 2's front-end settings; both
sides resample 16 -> 48 kHz with soxr first). Prints clips/s of each and the ratio; with ``--xla-defaults``, VGGish
and CNN14 also compiled with XLA's default options (on CPU: YNNPACK library fusions, what plain ``jax.jit`` does).

    python bench/eval.py [--clips 8] [--seconds 10] [--iters 3] [--no-clap] [--xla-defaults]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import soxr
import torch
from timing import timed
from torchvggish import vggish_input
from torchvggish.torchvggish import VGG, make_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared reference helpers
from reference_init import without_package_init  # noqa: E402

from audioldm2_jax import components  # noqa: E402
from audioldm2_jax.audio.clap_features import ClapFeatureConfig  # noqa: E402
from audioldm2_jax.compilation import compile_lowered  # noqa: E402
from audioldm2_jax.convert import panns as panns_convert  # noqa: E402
from audioldm2_jax.convert import vggish as vggish_convert  # noqa: E402
from audioldm2_jax.eval import run  # noqa: E402
from audioldm2_jax.eval.clap_score import ClapEmbedder  # noqa: E402
from audioldm2_jax.eval.placement import BatchMesh  # noqa: E402


def clap_rows(waves: np.ndarray, mesh: BatchMesh):
    """``(ours, reference)`` callables embedding ``waves`` (16 kHz) with CLAP's audio tower."""
    import transformers  # deferred: only this row needs it

    model = transformers.ClapModel(transformers.ClapConfig()).eval()
    extractor = transformers.ClapFeatureExtractor(**{k: v for k, v in dataclasses.asdict(ClapFeatureConfig()).items()
                                                     if k != "top_db"})
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config, params, _ = components.load("clap", tmp)
    ours = ClapEmbedder(config, {"params": params}, None,
                        ClapFeatureConfig.from_preprocessor_config(extractor.to_dict()), devices=mesh)

    def reference():
        audio = [soxr.resample(w, 16000, 48000, quality="HQ") for w in waves]
        with torch.no_grad():
            model.get_audio_features(**extractor(audio, sampling_rate=48000, return_tensors="pt"))

    return lambda: ours.audio_embeddings(waves, 16000), reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-clap", action="store_true", help="skip the CLAP audio row")
    p.add_argument("--xla-defaults", action="store_true",
                   help="also time VGGish and CNN14 compiled with XLA's default options")
    args = p.parse_args()
    torch.manual_seed(0)
    waves = (0.1 * np.random.default_rng(0).standard_normal((args.clips, int(args.seconds * 16000)))).astype(
        np.float32)
    mesh = BatchMesh()

    vgg = VGG(make_layers(), postprocess=False).eval()
    vgg.embeddings = torch.nn.Sequential(*list(vgg.embeddings.children())[:-1])  # as the FAD tools
    vgg_params = vggish_convert.to_flax({k: v.numpy() for k, v in vgg.state_dict().items()})
    with without_package_init("panns_inference"):
        cnn14 = importlib.import_module("panns_inference.models").Cnn14(16000, 512, 160, 64, 50, 8000, 527).eval()
    panns_params = panns_convert.to_flax({k: v.numpy() for k, v in cnn14.state_dict().items()})
    batch = np.zeros((mesh.rows(args.clips), waves.shape[1]), np.float32)  # padded as the command pads
    batch[:args.clips] = waves
    ours_vggish = run.Extractor("vggish", vgg_params, "random", "").on(mesh)
    ours_panns = run.Extractor("panns", panns_params, "random", "").on(mesh)

    def torch_vggish():
        with torch.no_grad():
            for w in waves:
                vgg(vggish_input.waveform_to_examples(w, 16000, return_tensor=True))  # [E, 1, 96, 64]

    def torch_panns():
        with torch.no_grad():
            cnn14(torch.from_numpy(waves))

    rows = [("VGGish", lambda: jax.block_until_ready(ours_vggish(batch)), torch_vggish),
            ("PANNs CNN14", lambda: jax.block_until_ready(ours_panns(batch)), torch_panns)]
    if not args.no_clap:
        rows.append(("CLAP audio", *clap_rows(waves, mesh)))
    print(f"{args.clips} clips of {args.seconds} s, {mesh.size} {mesh.platform} device(s), torch threads "
          f"{torch.get_num_threads()}")
    for name, ours, ref in rows:
        t_ours, t_ref = timed(ours, args.iters), timed(ref, args.iters)
        print(f"{name:12s} ours {args.clips / t_ours:8.2f} clips/s   torch {args.clips / t_ref:8.2f} clips/s   "
              f"ratio {t_ref / t_ours:.2f}x", flush=True)
    if args.xla_defaults:
        x = mesh.split(batch)
        for name, extractor in (("VGGish", "vggish"), ("PANNs CNN14", "panns")):
            params = mesh.replicate(vgg_params if extractor == "vggish" else panns_params)
            with mesh.context():
                lowered = jax.jit(run._FEATURES[extractor]).lower(params, x)
            for setting, defaults in (("project options", False), ("XLA defaults", True)):
                compiled = compile_lowered(lowered, xla_defaults=defaults)
                run_s = timed(lambda: jax.block_until_ready(compiled(params, x)), args.iters)
                print(f"{name:12s} ours, {setting}: {args.clips / run_s:8.2f} clips/s", flush=True)


if __name__ == "__main__":
    main()
