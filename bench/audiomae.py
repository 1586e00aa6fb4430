"""AudioMAE encoder throughput: ours (JAX, jitted ``extract_loa``) against the PyTorch reference (timm blocks) in
the same run, on the same random weights, plus a full-size parity check of features and LOA.

The measured work is the LOA extraction of AudioLDM 2: fbank ``[B, 1024, 128]`` -> ViT-B/16 (12 blocks, mean of
the last 3 normed) -> ``(avg + max) / 2`` pooling -> ``[B, 8, 768]`` (lambda 8). Throughput is clips per second,
the median over repeats of ``iters`` back-to-back calls.

    python bench/audiomae.py                          # batch 8, fp32 (full-precision matmuls)
    python bench/audiomae.py --precision default      # also TF32 matmuls on GPUs (both frameworks)
    python bench/audiomae.py --bf16                   # also bf16 compute (ours dtype=bf16, torch autocast)
    python bench/audiomae.py --small --iters 2        # smoke test on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared timm loader

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from audioldm2_jax.convert.audiomae import convert_audiomae_state_dict  # noqa: E402
from audioldm2_jax.models.audiomae import (AudioMAEConfig, extract_features, extract_loa, loa_pooling,  # noqa: E402
                                           pool_loa, sincos_pos_embed)
from timm_blocks import timm_blocks  # noqa: E402


def torch_reference(config: AudioMAEConfig, device):
    """AudioMAE's encoder as AudioLDM 2 runs it (``forward_encoder_no_mask`` + pooling), from timm blocks."""
    import torch
    from functools import partial

    PatchEmbed, Block, _ = timm_blocks()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            c = config
            norm = partial(torch.nn.LayerNorm, eps=c.norm_eps)
            self.patch_embed = PatchEmbed(img_size=(c.input_frames, c.mel_bins), patch_size=c.patch_size, in_chans=1,
                                          embed_dim=c.embed_dim)
            self.cls_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, c.embed_dim))
            table = sincos_pos_embed(c.embed_dim, c.grid, c.pos_embed_layout)[None]
            self.pos_embed = torch.nn.Parameter(torch.from_numpy(table), requires_grad=False)
            self.blocks = torch.nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio, qkv_bias=True,
                                                     norm_layer=norm) for _ in range(c.depth)])
            self.norm = norm(c.embed_dim)

        def forward(self, fbank, lam_t, lam_f):
            x = self.patch_embed(fbank[:, None]) + self.pos_embed[:, 1:]
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
            kept = []
            for n, blk in enumerate(self.blocks):
                x = blk(x)
                if n >= config.depth - config.feature_layers:
                    kept.append(self.norm(x))
            features = torch.stack(kept).mean(0)
            grid = features[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *config.grid)
            k = (lam_t, lam_f)
            pooled = (torch.nn.functional.avg_pool2d(grid, k, k) + torch.nn.functional.max_pool2d(grid, k, k)) / 2
            return features, pooled.flatten(2).transpose(1, 2)

    torch.manual_seed(0)
    model = Encoder().eval().to(device)
    with torch.no_grad():  # non-trivial norms and biases so that parity is not checked on defaults
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.02 * torch.randn_like(p))
    return model


def time_calls(fn, iters: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` runs of ``iters`` back-to-back calls (``fn`` syncs at the end)."""
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(iters)
        per_call.append((time.perf_counter() - start) / iters)
    return statistics.median(per_call)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lam", type=int, default=8)
    ap.add_argument("--precision", nargs="+", default=["highest"], choices=["highest", "default"],
                    help="fp32 matmul precision: highest (true fp32) and/or default (TF32 on GPUs)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 compute")
    ap.add_argument("--cudnn-attention", action="store_true",
                    help="also time bf16 with jax.nn.dot_product_attention(implementation='cudnn') (GPU only)")
    ap.add_argument("--small", action="store_true", help="a narrow encoder (smoke test)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import torch

    config = AudioMAEConfig(embed_dim=128, depth=4, num_heads=2) if args.small else AudioMAEConfig()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    ref = torch_reference(config, device)
    sd = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
    config, params = convert_audiomae_state_dict(sd, config=config, with_decoder=False, source="torch reference")
    params = jax.device_put(params)
    lam_t, lam_f = loa_pooling(args.lam, config.grid)

    fbank_np = np.random.default_rng(0).standard_normal((args.batch, config.input_frames, config.mel_bins))
    fbank_np = fbank_np.astype(np.float32)
    fbank = jax.device_put(fbank_np)
    fbank_t = torch.from_numpy(fbank_np).to(device)

    def sync_torch():
        if device == "cuda":
            torch.cuda.synchronize()

    results = {"jax_device": str(jax.devices()[0].device_kind), "torch_device": device, "batch": args.batch,
               "lambda": [lam_t, lam_f], "config": "small" if args.small else "ViT-B/16 1024x128", "rows": []}

    modes = [(p, jnp.float32, False) for p in args.precision]
    if args.bf16:
        modes.append(("default", jnp.bfloat16, False))
    if args.cudnn_attention:
        modes.append(("default", jnp.bfloat16, True))
    for precision, dtype, cudnn in modes:
        if cudnn:  # an experiment: the shared attention entry point uses XLA's implementation
            import audioldm2_jax.models.audiomae as audiomae_module

            def cudnn_attention(q, k, v, *, bias=None, mask=None, scale=None, is_causal=False):
                return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                                                    implementation="cudnn")

            audiomae_module.dot_product_attention = cudnn_attention
            jax.clear_caches()
        torch.backends.cuda.matmul.allow_tf32 = precision == "default"
        torch.backends.cudnn.allow_tf32 = precision == "default"
        label = "bf16" if dtype == jnp.bfloat16 else ("fp32" if precision == "highest" else "fp32 (TF32 matmuls)")
        label += ", cuDNN attention (ours)" if cudnn else ""
        with jax.default_matmul_precision(precision):
            ours = extract_loa(params, fbank, args.lam, config=config, dtype=dtype)  # compile
            ours.block_until_ready()

            def run_ours(n):
                out = None
                for _ in range(n):
                    out = extract_loa(params, fbank, args.lam, config=config, dtype=dtype)
                out.block_until_ready()

            t_ours = time_calls(run_ours, args.iters, args.repeats)
            if dtype == jnp.float32 and precision == "highest":
                feats = extract_features(params, fbank, config=config)

        autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == jnp.bfloat16)
        with torch.no_grad(), autocast:
            ref_feats, ref_loa = ref(fbank_t, lam_t, lam_f)
            sync_torch()

            def run_ref(n):
                for _ in range(n):
                    ref(fbank_t, lam_t, lam_f)
                sync_torch()

            t_ref = time_calls(run_ref, args.iters, args.repeats)
        row = {"mode": label, "ours_clips_per_s": args.batch / t_ours, "torch_clips_per_s": args.batch / t_ref,
               "ours_ms_per_batch": 1e3 * t_ours, "torch_ms_per_batch": 1e3 * t_ref}
        ref_loa_np = ref_loa.float().cpu().numpy()
        row["loa_max_abs_err"] = float(np.abs(np.asarray(ours, np.float32) - ref_loa_np).max())
        if dtype == jnp.float32 and precision == "highest":
            row["features_max_abs_err"] = float(np.abs(np.asarray(feats) - ref_feats.cpu().numpy()).max())
            row["features_scale"] = float(np.abs(ref_feats.cpu().numpy()).max())
            np.testing.assert_allclose(np.asarray(pool_loa(feats, args.lam, config.grid)), ref_loa_np, atol=1e-3)
        results["rows"].append(row)

    print(f"AudioMAE encoder + LOA (lambda {lam_t}x{lam_f}), batch {args.batch}; JAX on {results['jax_device']}, "
          f"torch on {device}")
    print("| mode | ours (clips/s) | PyTorch (clips/s) | ours / PyTorch | ours ms/batch | PyTorch ms/batch | "
          "LOA max abs err |")
    print("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['mode']} | {r['ours_clips_per_s']:.1f} | {r['torch_clips_per_s']:.1f} | "
              f"{r['ours_clips_per_s'] / r['torch_clips_per_s']:.2f} | {r['ours_ms_per_batch']:.2f} | "
              f"{r['torch_ms_per_batch']:.2f} | {r['loa_max_abs_err']:.2e} |")
    for r in results["rows"]:
        if "features_max_abs_err" in r:
            print(f"full-precision parity: features max abs err {r['features_max_abs_err']:.2e} "
                  f"(scale {r['features_scale']:.2f}), LOA max abs err {r['loa_max_abs_err']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
