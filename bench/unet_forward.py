"""Times the jitted T-UNet forward against diffusers' PyTorch UNet in the same process, on the same weights.

Base config (audioldm2_jax/configs/published/audioldm2-base/unet.json), random weights, batch 2, 10.24 s latents [2, 8, 256, 16],
LOA context [2, 8, 768], T5 context [2, 32, 1024] with a padded mask. Prints compile time, the median forward time
of each side, the ratio, and the max abs error between the two outputs.

    python bench/unet_forward.py                      # CPU, fp32
    python bench/unet_forward.py --batch 8 --xla-defaults  # CPU: also a row compiled with XLA's default options
    python bench/unet_forward.py --device cuda --modes fp32 tf32 bf16

Ours compiles as the pipeline does (``audioldm2_jax.compilation.compile_lowered``); ``--xla-defaults`` adds, per
mode, a row compiled without the project's XLA options (on CPU: with XLA's YNNPACK library fusions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "audioldm2_jax" / "configs" / "published" / "audioldm2-base" / "unet.json"
sys.path.insert(0, str(ROOT))
from bench.timing import print_rows, time_compile_settings, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"],
                        help="fp32: true fp32 matmuls both sides; tf32: TF32 matmuls both sides; bf16: bf16 compute "
                             "(ours dtype=bf16 with fp32 params, torch autocast)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1024, help="mel frames (1024 = 10.24 s; latents are /4)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--xla-defaults", action="store_true",
                        help="also time ours compiled with XLA's default options (no project compiler options)")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

    from audioldm2_jax.convert.unet import unet_param_shapes
    from audioldm2_jax.convert.weights import convert_state_dict
    from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig

    published = json.loads(CONFIG.read_text())
    torch.manual_seed(0)
    ref = AudioLDM2UNet2DConditionModel(**{k: v for k, v in published.items() if not k.startswith("_")}).eval()
    config = UNetConfig.from_diffusers(published)
    params = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, unet_param_shapes(config),
                                source="reference UNet")
    nparams = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))

    rng = np.random.default_rng(0)
    b, h = args.batch, args.frames // 4
    sample = rng.standard_normal((b, 8, h, 16)).astype(np.float32)
    t = np.full((b,), 500, np.int64)
    ctx0 = rng.standard_normal((b, 8, 768)).astype(np.float32)
    ctx1 = rng.standard_normal((b, 32, 1024)).astype(np.float32)
    mask1 = np.ones((b, 32), np.int64)
    mask1[:, 20:] = 0

    device = torch.device(args.device)
    ref = ref.to(device)
    torch_inputs = [torch.from_numpy(x).to(device) for x in (sample, t, ctx0, ctx1, mask1)]
    params = jax.device_put(params)
    jax_inputs = [jnp.asarray(sample.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.int32), jnp.asarray(ctx0), None,
                  jnp.asarray(ctx1), jnp.asarray(mask1, jnp.int32)]

    print(f"# UNet forward, base config ({nparams / 1e6:.1f}M params), batch {b}, latents [{b}, 8, {h}, 16]")
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} on {args.device}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| mode | ours compiled with | ours compile (s) | ours (ms) | PyTorch (ms) | PyTorch / ours "
          "| max abs err / scale |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        dtype = jnp.bfloat16 if mode == "bf16" else jnp.float32
        precision = "highest" if mode == "fp32" else "default"
        model = AudioLDM2UNet(config, dtype=dtype)
        with jax.default_matmul_precision(precision):
            forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
            rows = time_compile_settings(forward.lower, (params, *jax_inputs), args.iters, args.xla_defaults,
                                         lambda out: np.asarray(out, np.float32).transpose(0, 3, 1, 2))

        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"

        def torch_forward():
            with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=mode == "bf16"):
                out = ref(torch_inputs[0], torch_inputs[1], encoder_hidden_states=torch_inputs[2],
                          encoder_hidden_states_1=torch_inputs[3], encoder_attention_mask_1=torch_inputs[4]).sample
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        print_rows(mode, rows, timed(torch_forward, args.iters), torch_forward().float().cpu().numpy(), scale=1e3,
                   digits=1)

if __name__ == "__main__":
    main()
