"""Pieces the config files share: their argument parser, model sizes (tiny ones for CPU runs and tests), the
procedural dataset, and the links between stages (a later stage's frozen / starting weights are an earlier stage's
export: the stage classes of :mod:`audioldm2_jax.train.stages` declare which)."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import ml_collections

from audioldm2_jax.train.config import base_config
from audioldm2_jax.train.stages import STAGE_ORDER, stage_class, stage_inputs


def parse_arg(arg: str, options: Iterable[str], stages: Sequence[str] = STAGE_ORDER) -> tuple[str, dict[str, str]]:
    """A config file's argument ``"<stage>[,key=value...]"`` (``--config configs/x.py:<arg>``) ->
    ``(stage, {key: value})``. A stage not in ``stages``, a field that is not ``key=value`` or a key not in
    ``options`` raises a ValueError naming it."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    if not parts or parts[0] not in stages:
        raise ValueError(f"config arg {arg!r}: the first field must be a stage, one of {tuple(stages)}")
    allowed = tuple(options)
    values = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"config arg {arg!r}: unknown option {part!r}; options are key=value with key one of "
                             f"{allowed}")
        values[key] = value
    return parts[0], values


def link_stages(c: ml_collections.ConfigDict, stage: str, root: str, text_dir: str | None = None) -> None:
    """Points ``c.init`` at the exports of earlier stages under ``root/<stage>/`` (the stage class's ``reads_from``
    and ``carries_from``) and, when given, the shared text encoders and tokenizers under ``text_dir``."""
    for component, producer in stage_inputs(stage).items():
        c.init[component] = os.path.join(root, producer, "export")
    if text_dir:
        frozen = stage_class(stage).frozen_components  # the text encoders a stage runs are frozen
        for encoder in ("t5", "clap"):
            if encoder in frozen:
                c.init[encoder] = os.path.join(text_dir, encoder)
        c.text.t5_tokenizer = os.path.join(text_dir, "tokenizer_2")
        c.text.clap_tokenizer = os.path.join(text_dir, "tokenizer")


def procedural_data(c: ml_collections.ConfigDict, seconds: float, clips: int = 4096, **grammar) -> None:
    c.data.source = "procedural"
    c.data.clip_seconds = seconds
    c.data.procedural_clips = clips
    c.data.random_crop = False  # procedural clips are exactly clip_seconds long
    for key, value in grammar.items():
        c.data[f"procedural_{key}"] = tuple(value)


def tiny_models(c: ml_collections.ConfigDict, width: int = 1, frames: int = 256) -> None:
    """Models small enough to train on two CPU cores in minutes (the quickstart). ``frames``: mel frames of a
    clip (AudioMAE reads the same span of the fbank). ``width`` scales the channel counts."""
    w = int(width)
    c.model.vae.update(dict(block_out_channels=(16 * w, 32 * w, 32 * w), layers_per_block=1, latent_channels=8,
                            norm_num_groups=8, scaling_factor=1.0))
    c.model.unet.update(dict(
        block_out_channels=(32 * w, 64 * w, 64 * w), layers_per_block=(1, 1, 1),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=((None, 64, 32),) * 3, transformer_layers_per_block=(1, 1, 1), num_heads=(4, 4, 4),
        norm_num_groups=16))
    c.model.audiomae.update(dict(
        input_frames=frames, mel_bins=128, patch_size=16, embed_dim=64, depth=3, num_heads=4, feature_layers=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, decoder_type="global", mask_ratio=0.8))
    c.model.t5.update(dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                           relative_attention_num_buckets=16, relative_attention_max_distance=32))
    c.model.clap.text.update(dict(vocab_size=1024, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=72, layer_norm_eps=1e-5,
                                  projection_dim=32))
    c.model.clap.projection_dim = 32
    c.model.clap.audio.update(dict(projection_dim=32))
    c.model.projection.update(dict(text_encoder_dim=32, text_encoder_1_dim=32, language_model_dim=64))
    c.model.gpt2.update(dict(vocab_size=8, n_positions=128, n_embd=64, n_layer=2, n_head=4))
    c.model.vocoder.update(dict(upsample_initial_channel=64 * w, upsample_rates=(5, 4, 2, 2, 2),
                                upsample_kernel_sizes=(10, 8, 4, 4, 4), resblock_kernel_sizes=(3, 7),
                                resblock_dilation_sizes=((1, 3), (1, 3)), normalize_before=False))
    c.text.t5_max_length = 32
    c.text.clap_max_length = 32


def micro_models(c: ml_collections.ConfigDict, frames: int = 128) -> None:
    """The smallest models that still run every branch (tests)."""
    tiny_models(c, frames=frames)
    c.model.vae.update(dict(block_out_channels=(8, 8, 8), norm_num_groups=4))
    c.model.unet.update(dict(block_out_channels=(16, 16, 16), norm_num_groups=8, num_heads=(2, 2, 2),
                             cross_attention_dim=((None, 16, 16),) * 3))
    c.model.audiomae.update(dict(embed_dim=16, depth=1, num_heads=2, feature_layers=1, decoder_embed_dim=16,
                                 decoder_depth=1, decoder_num_heads=2))
    c.model.t5.update(dict(d_model=16, d_ff=16, num_layers=1, num_heads=2))
    c.model.clap.text.update(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                  projection_dim=16))
    c.model.clap.projection_dim = 16
    c.model.clap.audio.update(dict(projection_dim=16))
    c.model.projection.update(dict(text_encoder_dim=16, text_encoder_1_dim=16, language_model_dim=16))
    c.model.gpt2.update(dict(n_embd=16, n_layer=1, n_head=2))
    c.model.vocoder.update(dict(upsample_initial_channel=32, resblock_kernel_sizes=(3,),
                                resblock_dilation_sizes=((1,),)))
    c.text.t5_max_length = 24
    c.text.clap_max_length = 24


def cpu_run(c: ml_collections.ConfigDict) -> None:
    """Settings for runs on a few CPU cores: float32, fast compiles; joins a multi-process run only when launched
    as one (``python -m audioldm2_jax.launch``)."""
    c.compute_dtype = "float32"
    c.prng_impl = "unsafe_rbg"
    c.xla_cpu_fast_compile = True
    c.distributed = "auto"
    c.data.read_threads = 2
    c.data.prefetch_buffer_size = 4


__all__ = ["STAGE_ORDER", "base_config", "cpu_run", "link_stages", "micro_models", "parse_arg", "procedural_data",
           "tiny_models"]
