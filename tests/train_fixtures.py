"""Helpers for the trainer's tests: micro configs of every stage, restoring a run's checkpoint, and the loss of given
parameters on a given batch with a given step's random draws (``import train_fixtures``: pytest puts tests/ on the
path)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from audioldm2_jax.configs import common
from audioldm2_jax.data.pipeline import make_dataset
from audioldm2_jax.train import text
from audioldm2_jax.train.checkpoint import Checkpointer, restore_frozen
from audioldm2_jax.train.loop import data_config


def micro_config(stage: str, tokenizers=None, frames: int = 128, **mesh):
    """A micro-size config of ``stage`` on procedural clips of ``frames`` mel frames (8 clips, batch 4, one device
    unless ``mesh`` says otherwise): two-level UNet, one-layer text encoders, a 4-token LOA."""
    c = common.base_config()
    c.stage = stage
    common.cpu_run(c)
    common.micro_models(c, frames=frames)
    c.model.unet.update(dict(block_out_channels=(16, 16), layers_per_block=(1, 1),
                             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                             cross_attention_dim=((None, 16, 16),) * 2, transformer_layers_per_block=(1, 1),
                             num_heads=(2, 2)))
    common.procedural_data(c, frames / 100, clips=8)
    c.data.compute_fbank = stage in ("audiomae", "ldm", "gpt2", "joint")
    if tokenizers is not None:
        c.text.clap_tokenizer, c.text.t5_tokenizer = (str(p) for p in tokenizers)
    c.batch_size = 4
    c.num_steps = 8
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "constant"
    c.ema.decay = 0.9
    c.ldm.loa_lambdas = (4,)
    c.gpt2.loa_lambda = 4  # (128 frames / 16 / 4) x (8 / 4) = 4 tokens
    c.model.gpt2.max_new_tokens = 4
    c.checkpoint.every_steps = 4
    c.log.every_steps = 1
    c.log.progress_bar = False
    c.log.tensorboard = False
    c.mesh.update(mesh or dict(data=1, fsdp=1, tensor=1))
    return c


def override(config, **dotted):
    """Sets ``config`` entries by dotted key (``override(c, **{"vocoder.segment_frames": 16})``); returns it."""
    for key, value in dotted.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def speech_micro_config(stage: str, tokenizers, vits_tokenizer, phonemes: int = 24, **overrides):
    """:func:`micro_config` turned into a speech model: the VITS phoneme encoder as the second text stream (its
    tokenizer folder ``vits_tokenizer``, transcriptions padded to ``phonemes``, the projection's learned position
    table as long), a UNet attending to the LOA only, and no T5 anywhere; procedural clips "say" their caption."""
    c = micro_config(stage, tokenizers)
    c.text.t5_tokenizer = ""
    c.model.text_encoder_2 = "vits"
    c.model.unet.cross_attention_dim = ((None, 16),) * 2
    c.model.vits.update(dict(vocab_size=183, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             window_size=2, ffn_dim=16, flow_size=4))
    c.model.projection.update(dict(text_encoder_1_dim=16, use_learned_position_embedding=True,
                                   max_seq_length=phonemes))
    c.text.vits_tokenizer = str(vits_tokenizer)
    c.text.transcription_from_caption = True
    return override(c, **overrides)


def first_batch(trainer, index: int = 0, seed: int | None = None):
    """Host batch ``index`` of the run's input pipeline (``seed`` default: the run's)."""
    iterator = make_dataset(data_config(trainer.config), seed=int(trainer.config.seed if seed is None else seed))
    for _ in range(index):
        next(iterator)
    return next(iterator)


def run_keys(config):
    """``(init_key, base_key)`` of a run (the loop splits ``key(seed)``)."""
    init_key, base_key = jax.random.split(jax.random.key(int(config.seed)))
    return init_key, base_key


def restore(trainer, workdir, step: int):
    """``(state, frozen)`` of a run's checkpoint ``step``, placed on ``trainer``'s mesh."""
    checkpointer = Checkpointer(Path(workdir) / "checkpoints", 1, None)
    try:
        state = checkpointer.restore(step, trainer.restore_target())
    finally:
        checkpointer.close()
    frozen = {}
    if trainer.stage.frozen_components:
        frozen = restore_frozen(Path(workdir) / "frozen", trainer.abstract_frozen())
    return state, frozen


def loss_at(trainer, state, frozen, host_batch, step: int, base_key, options=None) -> dict:
    """The metrics (losses) of ``state``'s parameters on ``host_batch`` with the random draws of step ``step`` of
    a run keyed ``base_key``: one train step on a copy whose update is discarded."""
    probe = jax.device_put(jax.device_get(state.replace(step=np.int32(step))), trainer.state_shardings)
    options = trainer.stage.step_options(step) if options is None else options
    _, metrics = trainer.step(probe, frozen, trainer.device_batch(host_batch), base_key, options)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def caption_tokenizers(directory):
    return text.build_caption_tokenizers(directory)


__all__ = ["caption_tokenizers", "first_batch", "loss_at", "micro_config", "restore", "run_keys"]
