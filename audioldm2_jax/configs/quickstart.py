"""The quickstart: every stage at tiny size on the procedural dataset, on a few CPU cores.

    make quickstart                                      # text pieces, all stages, sampling, the prompt report
    python -m audioldm2_jax.quickstart --root runs/quickstart          # the same
    python train.py --config configs/quickstart.py:ldm --workdir runs/quickstart/ldm   # one stage

``get_config("<stage>[,root=DIR][,steps=N][,micro=1]")``: stages read the exports of earlier ones under ``root``
(default ``runs/quickstart``) and the shared text encoders / tokenizers in ``root/text`` (the quickstart module
makes them). ``micro=1``: the smallest models and a few steps (the test suite's end-to-end run).

The budget: the whole job (compilation included) in 15 minutes on two CPU cores. XLA:CPU runs these small
convolutional networks at a few GFLOP/s and spends 30-150 s compiling and initialising each stage, so every stage
gets a hundred-odd steps and the clips are short; the sizes below are what fits. Measured on two idle-ish cores
(load 1-6), the previous grammar: 12.5 minutes in all (stages 10.5, two at a time; sampling 48 clips 1.5); this
grammar, with the same steps, on cores shared with other jobs (load 9-15): 23.5 minutes (docs/training.md).

What that buys (docs/training.md, with the baselines): the samples follow the prompt's instrument family (37 points
above the shuffled-prompt baseline), but not its tempo or pitch. HiFi-GAN trained from scratch for 120 steps renders
even the true spectrograms at chance pitch, and the diffusion model's own spectrograms carry no more pitch than
chance (the report's spectrogram row and ceiling rows).
"""

import ml_collections

from audioldm2_jax.configs import common
from audioldm2_jax.models.audiomae import loa_token_count

MICRO_SECONDS = 1.28
CLIP_SECONDS = 1.28  # 128 mel frames: latents [32, 16, 8]; AudioMAE sees an 8 x 8 patch grid
# A sub-vocabulary of the procedural grammar that every check of the report can tell apart: two harmonic-rich
# instruments of different families (a sustained sawtooth synth, a decaying plucked string: pitch is readable from
# the harmonic pattern even at 64 mel bins) playing single notes at two tempos whose onset counts differ in a
# 1.28 s clip (60 bpm: 2 onsets, 180 bpm: 4; the grammar's 60-150 bpm give 2 or 3, which a count cannot separate).
GRAMMAR = dict(instruments=("sawtooth", "plucked string"), patterns=("note",), tempos=(60, 180))
LOA_LAMBDA = 4  # pooling 4 x 4 patches: 2 x 2 = 4 LOA tokens over the 8 x 8 grid, as many as GPT-2 generates

# Measured on two shared cores (docs in the module docstring): compile + init is 30-150 s per stage, a step 0.3-2 s.
# The critical path is vae -> ldm -> joint -> sampling; audiomae, vocoder and gpt2 train beside it.
STEPS = {"vae": 140, "vocoder": 120, "audiomae": 60, "ldm": 140, "gpt2": 150, "joint": 40}
BATCH = {"vae": 4, "vocoder": 4, "audiomae": 8, "ldm": 8, "gpt2": 16, "joint": 8}
LEARNING_RATE = {"vae": 2e-3, "vocoder": 1e-3, "audiomae": 1e-3, "ldm": 2e-3, "gpt2": 2e-3, "joint": 5e-4}
MICRO_STEPS = 4
OPTIONS = ("root", "steps", "micro")

# Small multi-period / multi-scale discriminators for the vocoder stage (HiFi-GAN's V1 ones, 1024 channels wide,
# would cost more than everything else together).
DISCRIMINATOR = dict(periods=(2, 3, 5), period_channels=(8, 16, 32), period_kernel_size=5, period_stride=3,
                     num_scales=2, scale_channels=(8, 16, 32, 32), scale_kernel_sizes=(15, 41, 41, 5),
                     scale_strides=(1, 4, 4, 1), scale_groups=(1, 4, 4, 1))

# Sampling the joint stage's export for the report.
PROMPT_SEED = 1234
SAMPLING = dict(audio_length_in_s=CLIP_SECONDS, num_inference_steps=15, guidance_scale=3.0, scheduler="dpmsolver++",
                batch_size=8, seed=0)
MICRO_SAMPLING = dict(SAMPLING, audio_length_in_s=MICRO_SECONDS, num_inference_steps=2, batch_size=2)


def steps_for(stage: str, micro: bool = False) -> int:
    return MICRO_STEPS if micro else STEPS[stage]


def sampling_settings(micro: bool = False) -> dict:
    return dict(MICRO_SAMPLING if micro else SAMPLING)


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg or "ldm", OPTIONS)
    root = options.get("root", "runs/quickstart")
    micro = options.get("micro", "0") not in ("0", "", "false", "False")
    c = common.base_config()
    c.stage = stage
    c.seed = 0
    common.cpu_run(c)
    # Compilation dominates the micro run; the real one runs long enough for optimised code to pay off, except the
    # vocoder, whose optimised compile takes minutes (LLVM on its long chains of small convolutions).
    c.xla_cpu_fast_compile = micro or stage == "vocoder"
    seconds = MICRO_SECONDS if micro else CLIP_SECONDS
    frames = int(round(seconds * 100))
    if micro:
        common.micro_models(c, frames=frames)
    else:
        common.tiny_models(c, frames=frames)
    # Two UNet levels instead of three: XLA:CPU compile time grows with the layer count (each cross-attention
    # level holds three Transformer2D blocks per ResNet), and the 32 x 16 latent needs no third level.
    width = c.model.unet.block_out_channels
    c.model.unet.update(dict(
        block_out_channels=tuple(width[:2]), layers_per_block=(1, 1),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=tuple(c.model.unet.cross_attention_dim[:2]), transformer_layers_per_block=(1, 1),
        num_heads=tuple(c.model.unet.num_heads[:2])))
    if micro:  # fewer layers still: compilation is the micro run's whole cost
        c.model.unet.update(dict(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
        c.model.vocoder.update(dict(upsample_rates=(10, 16), upsample_kernel_sizes=(20, 32)))
    # The T5 tokenizer trained on the grammar is nearly character-level (up to 47 tokens a caption): keep them all.
    c.text.t5_max_length = 48
    common.procedural_data(c, seconds, clips=2048, **GRAMMAR)
    common.link_stages(c, stage, root, text_dir=f"{root}/text")
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))  # one CPU device: XLA already spreads ops over the cores
    c.data.compute_fbank = stage in ("audiomae", "ldm", "gpt2", "joint")
    c.num_steps = int(options.get("steps", steps_for(stage, micro)))
    c.batch_size = 4 if micro else BATCH[stage]
    c.optimizer.learning_rate = LEARNING_RATE[stage]
    c.optimizer.warmup_steps = min(50, c.num_steps // 10)
    c.optimizer.schedule = "cosine"
    c.optimizer.end_learning_rate_factor = 0.1
    c.optimizer.weight_decay = 0.0
    c.ema.decay = 0.99 if stage in ("ldm", "joint", "gpt2") else 0.0
    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 1
    c.checkpoint.save_final = False  # the export is the result; checkpoints only serve to resume a cut run
    c.log.every_steps = 2 if micro else 25
    c.log.tensorboard = False
    c.diffusion.prediction_type = "v_prediction"
    c.ldm.loa_lambdas = (LOA_LAMBDA,)
    c.ldm.cond_dropout = 0.1
    c.gpt2.loa_lambda = LOA_LAMBDA
    c.gpt2.loss = "l1"
    c.joint.p_gt = 0.25
    c.vae.kl_weight = 1e-6
    c.vae.disc_start = 10**9  # no adversarial term at this size and length: reconstruction + KL only
    c.vocoder.segment_frames = 32
    if stage == "vocoder":
        c.model.discriminator = ml_collections.ConfigDict(DISCRIMINATOR, type_safe=False)
    c.model.gpt2.max_new_tokens = loa_token_count(LOA_LAMBDA, (frames // 16, 128 // 16))
    return c
