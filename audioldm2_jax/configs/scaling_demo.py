"""The scaling-law demo's LDM runs: the quickstart's tiny LDM stage (1.28 s procedural clips, a two-level T-UNet)
with the UNet's width or depth multiplied, for isoFLOP sweeps that fit on two CPU cores
(``python -m audioldm2_jax.scaling demo``, ``make scaling-demo``; docs/scaling.md).

    python train.py --config configs/scaling_demo.py:ldm,width=1.5,root=runs/scaling-demo --workdir W \\
        --config.num_steps=200 --config.eval.every_steps=50

``get_config("ldm[,width=W][,depth=D][,transformer_layers=T][,root=DIR]")``:

- ``width`` multiplies the UNet's channels (32, 64), rounded to multiples of 16 (its GroupNorm groups; its 4 heads
  divide them);
- ``depth`` multiplies ``layers_per_block`` (1); ``transformer_layers``: transformer blocks per Transformer2D (1);
- ``root``: where the shared tokenizers and frozen random text encoders are (``root/text``, built by the demo as
  the quickstart builds them).

The frozen VAE and AudioMAE are randomly initialised from the run's seed (the same networks in every run of a
sweep: the trainer initialises frozen components from ``seed`` alone), so the runs need no earlier stage: the UNet
learns to denoise the latents of a fixed random encoder, the same task at every size. Held-out evaluation is on
(``eval.every_steps``: the sweep sets it per run), on a held-out split of the procedural clips.
"""

from audioldm2_jax.configs import common
from audioldm2_jax.configs import quickstart as qs

# The demo's isoFLOP sweep (python -m audioldm2_jax.scaling demo; the sweep file format: scaling/sweep.py).
# FLOPs per example: one 1.28 s clip (128 frames), 4 LOA tokens, 48 T5 tokens, as these runs train.
SWEEP = dict(name="demo", config="configs/scaling_demo.py", stage="ldm", options={}, axis="width",
             models=[0.25, 0.5, 1.0], budgets=[7.5e10, 1.5e11, 3e11], batch_size=[4, 3, 5, 6, 2, 1],
             learning_rate=dict(base=2e-3, reference_width=1.0, exponent=-0.5), tolerance=0.01, min_steps=15,
             warmup_steps=10, eval_points=2, flops=dict(frames=128, loa_tokens=4, t5_tokens=48),
             overrides={"checkpoint.every_steps": 50})

OPTIONS = ("width", "depth", "transformer_layers", "root")
BASE_CHANNELS = (32, 64)
GROUPS = 16


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg or "ldm", OPTIONS, stages=("ldm",))
    root = options.get("root", "runs/scaling-demo")
    try:
        width = float(options.get("width", 1.0))
        depth = float(options.get("depth", 1.0))
        tlayers = int(options.get("transformer_layers", 1))
    except ValueError as err:
        raise ValueError(f"scaling_demo options {options}: width / depth must be numbers, transformer_layers an "
                         f"integer ({err})") from err
    if width <= 0 or depth <= 0 or tlayers < 1:
        raise ValueError(f"scaling_demo: width={width}, depth={depth} must be > 0 and transformer_layers={tlayers} "
                         ">= 1")
    c = qs.get_config(f"{stage},root={root}")
    for frozen in ("vae", "audiomae"):  # random frozen encoders: no earlier stage to wait for
        c.init[frozen] = ""
    channels = tuple(max(GROUPS, int(round(ch * width / GROUPS)) * GROUPS) for ch in BASE_CHANNELS)
    layers = max(1, int(round(depth)))
    c.model.unet.update(dict(block_out_channels=channels, layers_per_block=(layers, layers),
                             transformer_layers_per_block=(tlayers, tlayers), norm_num_groups=GROUPS))
    c.data.procedural_clips = 4096
    c.eval.every_steps = 0  # set per run by the sweep
    c.eval.max_clips = 16  # x 4 timesteps each: 64 denoising losses per evaluation, in two batches
    c.eval.batch_size = 8
    c.checkpoint.every_steps = 50
    c.log.every_steps = 10
    c.log.progress_bar = False
    # AudioLDM 2's recipe: warm-up, then a constant rate (the sweep fixes the warm-up). With nothing in the step
    # depending on the run's length, the runs of one width at every budget compile to the same program, which the
    # demo's persistent compilation cache then compiles once.
    c.optimizer.schedule = "constant"
    # Runs of tens to hundreds of steps: XLA's fast compile (minutes of LLVM saved per run) beats faster code.
    c.xla_cpu_fast_compile = True
    return c
