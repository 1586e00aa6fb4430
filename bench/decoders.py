"""Times the pipeline's two decoders, the VAE decoder (latents to log-mel) and HiFi-GAN (log-mel to 16 kHz audio),
against diffusers' ``AutoencoderKL.decode`` and transformers' ``SpeechT5HifiGan``, in the same process, on the same
random weights (saved by the reference, loaded by ours).

Base config (audioldm2_jax/configs/published/audioldm2-base: VAE and vocoder), the pipeline's shapes: B clips of
10.24 s, latents [B, 8, 256, 16], log-mel [B, 1024, 64]. Prints compile time, the median wall time of each side (after a warm-up
call), the ratio and the max abs error relative to the reference's output scale.

    python bench/decoders.py                      # CPU, batch 4
    python bench/decoders.py --xla-defaults       # also a row compiled with XLA's default options
    python bench/decoders.py --decoders hifigan   # one of them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "audioldm2_jax" / "configs" / "published" / "audioldm2-base"
sys.path.insert(0, str(ROOT))
from bench.timing import print_rows, time_compile_settings, timed  # noqa: E402


def _published(name: str) -> dict:
    return {k: v for k, v in json.loads((PUBLISHED / f"{name}.json").read_text()).items() if not k.startswith("_")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1024, help="mel frames (1024 = 10.24 s; latents are /4)")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--decoders", nargs="+", default=["vae", "hifigan"], choices=["vae", "hifigan"])
    parser.add_argument("--xla-defaults", action="store_true",
                        help="also time ours compiled with XLA's default options (no project compiler options)")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from diffusers import AutoencoderKL as TorchAutoencoderKL
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from audioldm2_jax import components
    from audioldm2_jax.models.vae import AutoencoderKL
    from audioldm2_jax.models.vocoder import HifiGanVocoder

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count())
    vae_ref = TorchAutoencoderKL(**{k: v for k, v in _published("vae").items() if k != "force_upcast"}).eval()
    vocoder_ref = SpeechT5HifiGan(SpeechT5HifiGanConfig(**_published("vocoder"))).eval()
    with tempfile.TemporaryDirectory() as workdir:
        vae_ref.save_pretrained(f"{workdir}/vae")
        vocoder_ref.save_pretrained(f"{workdir}/vocoder")
        vae_config, vae_params, _ = components.load("vae", f"{workdir}/vae")
        vocoder_config, vocoder_params, _ = components.load("vocoder", f"{workdir}/vocoder")

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((args.batch, 8, args.frames // 4, 16)).astype(np.float32)
    log_mel = (rng.standard_normal((args.batch, args.frames, 64)) - 5).astype(np.float32)
    vae, vocoder = AutoencoderKL(vae_config), HifiGanVocoder(vocoder_config)
    cases = [
        ("vae", "VAE decode", lambda p, z: vae.apply({"params": p}, z, method=AutoencoderKL.decode), vae_params,
         jnp.asarray(latents.transpose(0, 2, 3, 1)), lambda out: np.asarray(out)[..., 0],
         lambda: vae_ref.decode(torch.from_numpy(latents)).sample[:, 0].numpy()),
        ("hifigan", "HiFi-GAN", lambda p, m: vocoder.apply({"params": p}, m), vocoder_params, jnp.asarray(log_mel), np.asarray,
         lambda: vocoder_ref(torch.from_numpy(log_mel)).numpy()),
    ]

    print(f"# decoders, base config, batch {args.batch}, {args.frames} mel frames")
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| decoder | ours compiled with | ours compile (s) | ours (s) | PyTorch (s) | PyTorch / ours "
          "| max abs err / scale |")
    print("|---|---|---|---|---|---|---|")
    for choice, name, apply, params, inputs, to_reference_layout, reference in cases:
        if choice not in args.decoders:
            continue
        params = jax.device_put(params)
        rows = time_compile_settings(jax.jit(apply).lower, (params, inputs), args.iters, args.xla_defaults,
                                     to_reference_layout)
        print_rows(name, rows, timed(reference, args.iters), reference())

if __name__ == "__main__":
    main()
