"""AudioLDM 2 base (cvssp/audioldm2, text-to-audio) at its published size, every stage, with the training settings
of the released code where it states them.

    python train.py --config configs/audioldm2_base.py:vae,data=/data/audioset.jsonl \
        --workdir runs/audioldm2-base/vae
    python train.py --config configs/audioldm2_base.py:ldm,data=/data/train.jsonl,pretrained=/ckpt/audioldm2 \\
        --workdir runs/audioldm2-base/ldm --config.batch_size=256

``get_config("<stage>[,key=value...]")``, stage one of ``vae, vocoder, audiomae, ldm, gpt2, joint`` (the order they
train in). Options:

- ``data``: the training manifest (CSV / TSV / JSONL / JSON, see :mod:`audioldm2_jax.data.sources`) -- there is no
  default: set it here or with ``--config.data.path``; ``audio_root`` (``--config.data.audio_root``) when its paths
  are relative to another folder, ``audio_template`` (``--config.data.audio_template``) when it has no path column
  (AudioCaps: ``{youtube_id}.wav``, the default here);
- ``pretrained``: a local copy of the published pipeline (diffusers layout: ``text_encoder/``,
  ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ...): the frozen FLAN-T5 and CLAP text encoders and their
  tokenizers (``--config.init.t5``, ``--config.init.clap``, ``--config.text.t5_tokenizer``,
  ``--config.text.clap_tokenizer`` set them one by one);
- ``root`` (default ``runs/audioldm2-base``): where the earlier stages' workdirs are, ``root/<stage>``; a stage
  reads the exports it needs from there (its class's ``reads_from``, :mod:`audioldm2_jax.train.stages`);
  ``--config.init.<component>=DIR`` points one component elsewhere (e.g. ``--config.init.vae=/ckpt/audioldm2`` to
  train the LDM on the published VAE, ``--config.init.audiomae=/ckpt/audiomae.pth`` for the released AudioMAE);
- ``steps``, ``batch``, ``lr``: ``num_steps``, the global ``batch_size`` and the peak learning rate.
- ``eval_data``: a manifest of held-out clips for the held-out losses logged every ``eval_every`` steps (default
  5000; 0 turns them off); without it 1 % of the training manifest (at most 256 clips, chosen by a hash of each
  path) is held out and never trained on (``config.eval``, :mod:`audioldm2_jax.train.held_out`).

Where the settings come from: the released AudioLDM 2 config (``audioldm2/utils.py:get_basic_config`` and
``Sequence2AudioMAE`` in github.com/haoheliu/AudioLDM2; the VAE from AudioLDM's ``16k_64.yaml``), AudioMAE's and
HiFi-GAN's own recipes for those two stages. The released batch sizes are per GPU under PyTorch Lightning DDP; the
global batches below assume 8 GPUs (an assumption: the config does not say). The trainer's defaults that the
released code does not have: global-norm gradient clipping at 1.0, and AdamW's weight decay skipping 1-D
parameters. Mesh: pure data parallelism over every device (``mesh.data=-1``); the UNet and T5 fit one accelerator
in float32 with AdamW states, so FSDP (``--config.mesh.fsdp=N --config.mesh.data=-1``) is for larger models
(``configs/scaling.py``) or smaller devices.
"""

from __future__ import annotations

import os

from audioldm2_jax.configs import common
from audioldm2_jax.configs import sizes

VARIANT = "base"
GPUS = 8  # the global batches below are the released per-GPU batches times this (assumed) GPU count

# Per stage: the released per-GPU batch and the number of steps.
BATCH_PER_GPU = {"vae": 4, "vocoder": 16, "audiomae": 64, "ldm": 16, "gpt2": 16, "joint": 16}
STEPS = {
    "vae": 800_000,  # 16k_64.yaml max_steps
    "vocoder": 2_500_000,  # HiFi-GAN V1
    "audiomae": 125_000,  # 32 epochs of AudioSet-2M at batch 512
    "ldm": 1_500_000,  # get_basic_config step.max_steps
    "gpt2": 1_500_000,
    "joint": 100_000,  # a fine-tuning length: not in the released config
}
OPTIMIZER = {
    # taming's autoencoder recipe (Adam, betas 0.5 / 0.9), base_learning_rate 8e-6; the discriminator shares it.
    "vae": dict(learning_rate=8e-6, b1=0.5, b2=0.9, weight_decay=0.0, warmup_steps=0, schedule="constant"),
    # HiFi-GAN V1: AdamW(0.8, 0.99), weight decay 0.01, lr 2e-4 (its per-epoch 0.999 decay is left out).
    "vocoder": dict(learning_rate=2e-4, b1=0.8, b2=0.99, weight_decay=0.01, warmup_steps=0, schedule="constant"),
    # AudioMAE pretraining: AdamW(0.9, 0.95), weight decay 1e-4, lr 2e-4, 3 warm-up epochs, cosine decay.
    "audiomae": dict(learning_rate=2e-4, b1=0.9, b2=0.95, weight_decay=1e-4, warmup_steps=12_000,
                     schedule="cosine"),
    # LatentDiffusion: AdamW (torch defaults), base_learning_rate 1e-4, 5000 warm-up steps, then constant.
    "ldm": dict(learning_rate=1e-4, b1=0.9, b2=0.999, weight_decay=0.01, warmup_steps=5_000, schedule="constant"),
    # Sequence2AudioMAE: AdamW (torch defaults), lr 2e-4, a 1000-step linear warm-up.
    "gpt2": dict(learning_rate=2e-4, b1=0.9, b2=0.999, weight_decay=0.01, warmup_steps=1_000, schedule="constant"),
    # Joint fine-tuning of GPT-2 and the UNet in one parameter group: the LDM's rate.
    "joint": dict(learning_rate=1e-4, b1=0.9, b2=0.999, weight_decay=0.01, warmup_steps=1_000, schedule="constant"),
}
# LatentDiffusion keeps an EMA of the UNet (LitEma, 0.9999, with the same (1 + n) / (10 + n) warm-up as ours).
EMA = {"ldm": 0.9999, "joint": 0.9999}

OPTIONS = ("data", "audio_root", "audio_template", "pretrained", "root", "steps", "batch", "lr", "eval_data",
           "eval_every")


def build(stage: str, options: dict[str, str], variant: str = VARIANT, models: dict | None = None,
          audio_template: str | None = "{youtube_id}.wav"):
    """The config of ``stage`` for a published variant (``models``: component dataclasses replacing the variant's,
    e.g. a scaled UNet). Shared by the large, music and scaling config files."""
    c = common.base_config()
    c.stage = stage
    sizes.set_models(c, models or sizes.published_models(variant))

    # ---- run ----------------------------------------------------------------------------------------------------
    c.num_steps = int(options.get("steps", STEPS[stage]))
    c.batch_size = int(options.get("batch", BATCH_PER_GPU[stage] * GPUS))
    c.compute_dtype = "auto"  # bfloat16 compute with float32 parameters on GPU / TPU
    c.optimizer.update(OPTIMIZER[stage])
    if "lr" in options:
        c.optimizer.learning_rate = float(options["lr"])
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, c.num_steps // 2)
    c.ema.decay = EMA.get(stage, 0.0)
    c.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    c.checkpoint.every_steps = 5_000
    c.checkpoint.keep = 3
    c.log.every_steps = 100
    # held-out losses (train/held_out.py): on a manifest of held-out clips, or on 1 % of the training manifest
    c.eval.every_steps = int(options.get("eval_every", 5_000))
    c.eval.path = options.get("eval_data", "")

    # ---- data ---------------------------------------------------------------------------------------------------
    c.data.source = "manifest"
    c.data.path = options.get("data", "")  # required: set it (the data pipeline names the key when it is empty)
    c.data.audio_root = options.get("audio_root") or None
    c.data.audio_template = options.get("audio_template", audio_template)
    c.data.clip_seconds = 10.24  # 1024 mel frames -> latents [256, 16, 8]; AudioMAE's 1024 x 128 fbank
    c.data.random_crop = True
    c.data.compute_log_mel = stage in ("vae", "vocoder", "ldm", "joint")
    c.data.compute_fbank = stage in ("audiomae", "ldm", "gpt2", "joint")
    c.data.require_text = stage in ("ldm", "gpt2", "joint")  # VAE, vocoder and AudioMAE are self-supervised
    c.data.num_workers = 8  # decoding and resampling 10 s clips outpaces one process at these batch sizes

    # ---- stages -------------------------------------------------------------------------------------------------
    c.vae.disc_start = 50_001
    c.vae.disc_weight = 0.5
    c.audiomae.mask_ratio = 0.8
    c.ldm.loa_lambdas = (1, 2, 4, 8)  # AudioMAE pooling rate drawn per step
    c.ldm.cond_dropout = 0.1  # unconditional_prob_cfg
    c.ldm.scale_by_std = True
    c.gpt2.loss = "l1"  # Sequence2AudioMAE's nn.L1Loss
    c.gpt2.loa_lambda = 8  # GPT-2 predicts the 8 tokens of the coarsest pooling
    c.gpt2.cond_dropout = 0.1
    c.joint.p_gt = 0.25
    c.vocoder.segment_frames = 32  # HiFi-GAN's 8192-sample segments at hop 256 are 32 frames

    # ---- where weights come from --------------------------------------------------------------------------------
    root = options.get("root", f"runs/audioldm2-{variant}")
    common.link_stages(c, stage, root)
    pretrained = options.get("pretrained", "")
    if pretrained:
        if stage in ("ldm", "gpt2", "joint"):
            c.init.t5 = pretrained  # text_encoder_2/ of the pipeline folder; tokenizer_2/ beside it
        if stage in ("gpt2", "joint"):
            c.init.clap = pretrained
        c.text.t5_tokenizer = os.path.join(pretrained, "tokenizer_2")
        c.text.clap_tokenizer = os.path.join(pretrained, "tokenizer")
    return c


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg, OPTIONS)
    return build(stage, options)
