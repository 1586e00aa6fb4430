"""The quickstart: every stage at tiny size on the procedural dataset, on a few CPU cores.

    make quickstart                                      # all stages, then sample.py and the prompt report
    python train.py --config configs/quickstart.py:ldm --workdir runs/quickstart/ldm   # one stage

``get_config("<stage>")`` or ``get_config("<stage>,root=DIR")``: stages read the exports of earlier ones under
``root`` (default ``runs/quickstart``) and the shared text encoders / tokenizers in ``root/text``
(``python -m audioldm2_jax.train.quickstart`` makes them).
"""

from configs import common

CLIP_SECONDS = 2.56  # 256 mel frames: latents [64, 16, 8]; AudioMAE sees a 16 x 8 patch grid
# A sub-vocabulary of the procedural grammar the tiny models can learn in minutes: harmonic-rich, sustained
# instruments (pitch is readable from the harmonic pattern even at 64 mel bins) playing single notes.
GRAMMAR = dict(instruments=("sawtooth", "square"), patterns=("note",))

STEPS = {"vae": 500, "vocoder": 500, "audiomae": 150, "ldm": 1000, "gpt2": 400, "joint": 200}
BATCH = {"vae": 8, "vocoder": 8, "audiomae": 16, "ldm": 16, "gpt2": 16, "joint": 16}
LEARNING_RATE = {"vae": 1e-3, "vocoder": 1e-3, "audiomae": 1e-3, "ldm": 1e-3, "gpt2": 1e-3, "joint": 2e-4}


def _parse(arg: str) -> tuple[str, dict]:
    parts = [p for p in (arg or "ldm").split(",") if p]
    options = dict(p.split("=", 1) for p in parts[1:])
    return parts[0], options


def get_config(arg: str = "ldm"):
    stage, options = _parse(arg)
    root = options.get("root", "runs/quickstart")
    c = common.base_config()
    c.stage = stage
    c.seed = 0
    common.cpu_run(c)
    common.tiny_models(c, frames=int(CLIP_SECONDS * 100))
    common.procedural_data(c, CLIP_SECONDS, clips=2048, **GRAMMAR)
    common.link_stages(c, stage, root, text_dir=f"{root}/text")
    c.data.compute_fbank = stage in ("audiomae", "ldm", "gpt2", "joint")
    c.num_steps = int(options.get("steps", STEPS[stage]))
    c.batch_size = BATCH[stage]
    c.optimizer.learning_rate = LEARNING_RATE[stage]
    c.optimizer.warmup_steps = min(50, c.num_steps // 10)
    c.optimizer.schedule = "cosine"
    c.optimizer.end_learning_rate_factor = 0.1
    c.optimizer.weight_decay = 0.0
    c.ema.decay = 0.99 if stage in ("ldm", "joint", "gpt2") else 0.0
    c.checkpoint.every_steps = 250
    c.checkpoint.keep = 1
    c.log.every_steps = 25
    c.diffusion.prediction_type = "v_prediction"
    c.ldm.loa_lambdas = (4,)  # 4 x 2 = 8 LOA tokens over the 16 x 8 grid, as many as GPT-2 generates
    c.ldm.cond_dropout = 0.1
    c.gpt2.loa_lambda = 4
    c.gpt2.loss = "l1"
    c.joint.p_gt = 0.25
    c.vae.kl_weight = 1e-6
    c.vae.disc_start = 10**9  # no adversarial term at this size and length: reconstruction + KL only
    c.vocoder.segment_frames = 32
    c.model.gpt2.max_new_tokens = 8
    return c
