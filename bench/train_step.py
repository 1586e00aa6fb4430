"""Times the LDM T-UNet training step, ours (``jax.jit``, donated state) against diffusers' PyTorch UNet (eager), in
the same process on the same shapes.

One step on both sides: UNet forward on noisy latents, MSE against a target, backward, AdamW update (optax
``adamw`` and ``torch.optim.AdamW`` with the same hyper-parameters: lr 1e-4, betas 0.9 / 0.999, eps 1e-8, weight
decay 0.01 on every parameter). Base config (audioldm2_jax/configs/published/audioldm2-base/unet.json), random
weights, batch 4, 10.24 s latents ``[4, 8, 256, 16]`` (diffusers' NCHW; ours is NHWC ``[4, 256, 16, 8]``), the LOA
stream ``[4, 8, 768]`` (lambda = 8) and the T5 stream ``[4, 32, 1024]`` with a padded mask, as the published
``cross_attention_dim [[None, 768, 1024]] x 4`` requires. Warm-up steps (and ours' compilation) are excluded from
the timings. Prints steps/s of each side and their ratio; TFLOP/s from XLA's cost analysis of the compiled step
(the same count for both sides: the same arithmetic), and the utilisation of the device's peak where it is known
(accelerators).

    python bench/train_step.py                         # CPU: fp32, full size
    python bench/train_step.py --small --steps 3       # a reduced UNet (the xs preset) on 2.56 s clips
    python bench/train_step.py --dtype bf16            # GPU: bf16 compute (ours: fp32 params; torch: autocast)
    python bench/train_step.py --skip-reference        # ours only

Memory: full size in fp32 holds ~5.6 GB of parameters, gradients and AdamW moments per side, plus activations;
the two sides run one after the other and the first is freed before the second is built.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from audioldm2_jax.configs import sizes

CONFIG = sizes.PUBLISHED_DIR / "unet.json"

ADAMW = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)


def make_inputs(batch: int, frames: int, loa_tokens: int, t5_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The step's inputs in diffusers' layout (NCHW latents); the T5 mask pads the second half of every other row."""
    rng = np.random.default_rng(seed)
    h = frames // 4
    mask = np.ones((batch, t5_tokens), np.int64)
    mask[1::2, t5_tokens // 2:] = 0
    return {
        "sample": rng.standard_normal((batch, 8, h, 16)).astype(np.float32),
        "timesteps": rng.integers(0, 1000, (batch,)).astype(np.int64),
        "context": rng.standard_normal((batch, loa_tokens, 768)).astype(np.float32),
        "context_1": rng.standard_normal((batch, t5_tokens, 1024)).astype(np.float32),
        "context_1_mask": mask,
        "target": rng.standard_normal((batch, 8, h, 16)).astype(np.float32),
    }


def time_steps(step, warmup: int, steps: int) -> tuple[float, list[float]]:
    """Runs ``warmup`` untimed then ``steps`` timed calls of ``step() -> loss (float)``; returns (seconds, losses)."""
    losses = [step() for _ in range(warmup)]
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    return time.perf_counter() - start, losses


def run_ours(config, inputs, mode: str, warmup: int, steps: int) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from audioldm2_jax.compilation import compile_lowered
    from audioldm2_jax.models.layers import resolve_attention, use_attention
    from audioldm2_jax.models.unet import AudioLDM2UNet, unet_dummy_inputs
    from audioldm2_jax.train import config as config_lib
    from audioldm2_jax.train import metrics

    impl = config_lib.resolve_prng_impl("auto")  # the trainer's choice: XLA:CPU compiles threefry inits for minutes
    if impl:
        jax.config.update("jax_default_prng_impl", impl)
    dtype = jnp.bfloat16 if mode == "bf16" else jnp.float32
    precision = "highest" if mode == "fp32" else "default"
    model = AudioLDM2UNet(config, dtype=dtype)
    tx = optax.adamw(ADAMW["lr"], b1=ADAMW["b1"], b2=ADAMW["b2"], eps=ADAMW["eps"],
                     weight_decay=ADAMW["weight_decay"])
    nhwc = lambda x: jnp.asarray(x.transpose(0, 2, 3, 1))  # noqa: E731
    batch = {"sample": nhwc(inputs["sample"]), "timesteps": jnp.asarray(inputs["timesteps"], jnp.int32),
             "context": jnp.asarray(inputs["context"]), "context_1": jnp.asarray(inputs["context_1"]),
             "context_1_mask": jnp.asarray(inputs["context_1_mask"], jnp.int32), "target": nhwc(inputs["target"])}

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            pred = model.apply({"params": p}, batch["sample"], batch["timesteps"], batch["context"], None,
                               batch["context_1"], batch["context_1_mask"])
            return jnp.mean(jnp.square(pred.astype(jnp.float32) - batch["target"]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # the attention the trainer uses on this platform (models.layers.attention_for_platform: cuDNN's on GPUs)
    attention = resolve_attention("auto", jax.devices()[0].platform)
    with jax.default_matmul_precision(precision), use_attention(attention):
        start = time.perf_counter()
        params = jax.jit(lambda k: nn.unbox(model.init(k, *unet_dummy_inputs(config))["params"]))(jax.random.key(0))
        opt_state = jax.block_until_ready(jax.jit(tx.init)(params))
        print(f"# ours: parameters and optimizer state initialised in {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, batch)
        print(f"# ours: step traced and lowered in {time.perf_counter() - start:.1f} s; compiling", flush=True)
        compiled = compile_lowered(lowered)
        compile_s = time.perf_counter() - start
        flops = metrics.compiled_flops(compiled)
        # cuDNN's fused attention is a custom call whose FLOPs XLA's cost analysis omits, and the CPU's per-head
        # loop is counted once: count the FLOPs of the same step with XLA's attention
        if attention != "xla":
            with use_attention("xla"):
                flops = jax.jit(train_step).lower(params, opt_state, batch).cost_analysis()["flops"]
        try:
            temp_gb = compiled.memory_analysis().temp_size_in_bytes / 1e9
        except Exception:  # noqa: BLE001 -- not every backend reports it
            temp_gb = float("nan")
        print(f"# ours: {attention} attention, compile {compile_s:.1f} s, XLA temp memory {temp_gb:.2f} GB, "
              f"{(flops or 0) / 1e12:.3f} TFLOP per step (XLA cost analysis"
              f"{'' if attention == 'xla' else ' of the same step with XLA attention'})", flush=True)
        state = [params, opt_state]
        del params, opt_state

        def step():
            state[0], state[1], loss = compiled(state[0], state[1], batch)
            return float(loss)  # waits for the step

        seconds, losses = time_steps(step, warmup, steps)
    out = dict(compile_s=compile_s, seconds=seconds, losses=losses, flops=flops, temp_gb=temp_gb,
               device=jax.devices()[0].device_kind,
               peak=metrics.peak_flops_per_device(jax.devices()[0], "bfloat16" if mode == "bf16" else "float32"))
    state.clear()
    compiled = None  # frees the executable and the donated buffers before the reference is built
    jax.clear_caches()
    gc.collect()
    return out


def run_reference(config, inputs, mode: str, device: str, warmup: int, steps: int) -> dict:
    import torch
    from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.manual_seed(0)
    dev = torch.device(device)
    model = AudioLDM2UNet2DConditionModel(**sizes.unet_to_diffusers(config)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=ADAMW["lr"], betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"])
    t = {k: torch.from_numpy(v).to(dev) for k, v in inputs.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            pred = model(t["sample"], t["timesteps"], encoder_hidden_states=t["context"],
                         encoder_hidden_states_1=t["context_1"], encoder_attention_mask_1=t["context_1_mask"]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), t["target"])
        loss.backward()
        opt.step()
        return float(loss.detach())  # synchronises

    seconds, losses = time_steps(step, warmup, steps)
    model = opt = None  # frees ~5.6 GB (full size, fp32)
    gc.collect()
    return dict(seconds=seconds, losses=losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side (after ours' compilation)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "tf32", "bf16"],
                        help="fp32: true fp32 matmuls both sides; tf32: TF32 both sides; bf16: bf16 compute (ours "
                             "dtype=bf16 with fp32 params, torch autocast); auto: bf16 on an accelerator, else fp32")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--frames", type=int, default=None, help="mel frames per clip (default 1024 = 10.24 s; "
                                                                  "256 with --small)")
    parser.add_argument("--loa-tokens", type=int, default=8)
    parser.add_argument("--t5-tokens", type=int, default=32)
    parser.add_argument("--small", action="store_true", help="the xs scaling preset instead of the base UNet")
    parser.add_argument("--skip-reference", action="store_true", help="time ours only")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    import jax

    from audioldm2_jax.models.unet import UNetConfig
    accelerator = jax.default_backend() != "cpu"
    mode = args.dtype if args.dtype != "auto" else ("bf16" if accelerator else "fp32")
    frames = args.frames or (256 if args.small else sizes.CLIP_FRAMES)
    config = sizes.preset_unet("xs") if args.small else UNetConfig.from_diffusers(json.loads(CONFIG.read_text()))
    params = sizes.unet_param_count(config)
    inputs = make_inputs(args.batch, frames, args.loa_tokens, args.t5_tokens)
    b, h = args.batch, frames // 4

    torch_device = args.device
    versions = f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
    if not args.skip_reference:
        import torch

        torch_device = torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
        versions += f"; torch {torch.__version__} on {torch_device}"
    name = "xs preset" if args.small else "base config"
    print(f"# LDM UNet train step (forward + MSE + backward + AdamW), {name} ({params / 1e6:.1f}M params), batch {b}, "
          f"latents [{b}, 8, {h}, 16], LOA [{b}, {args.loa_tokens}, 768], T5 [{b}, {args.t5_tokens}, 1024], {mode}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per side")
    print(f"# {versions}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)

    ours = run_ours(config, inputs, mode, args.warmup, args.steps)
    ref = None if args.skip_reference else run_reference(config, inputs, mode, torch_device, args.warmup, args.steps)

    print("| side | steps/s | s/step | examples/s | TFLOP/s | utilisation | loss first -> last |")
    print("|---|---|---|---|---|---|---|")
    rows = [("ours (jax.jit)", ours)] + ([] if ref is None else [("PyTorch diffusers (eager)", ref)])
    results = {"mode": mode, "batch": b, "frames": frames, "params": params, "flops_per_step": ours["flops"],
               "compile_s": ours["compile_s"]}
    for label, r in rows:
        rate = args.steps / r["seconds"]
        tflops = (ours["flops"] or float("nan")) * rate / 1e12
        util = f"{ours['flops'] * rate / ours['peak']:.1%}" if ours["peak"] and ours["flops"] else "n/a"
        print(f"| {label} | {rate:.4g} | {1 / rate:.3g} | {rate * b:.4g} | {tflops:.3g} | {util} | "
              f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} |")
        results[label.split()[0].lower()] = {"steps_per_s": rate, "losses": r["losses"]}
    if ref is not None:
        ratio = (args.steps / ours["seconds"]) / (args.steps / ref["seconds"])
        print(f"\nours / PyTorch steps/s: {ratio:.2f}x")
        results["ratio"] = ratio
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
