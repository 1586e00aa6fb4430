"""The AudioLDM 2 T-UNet: a latent-diffusion UNet whose blocks run, after every ResNet, one Transformer2D per entry
of ``cross_attention_dim``: ``None`` (self-attention only), the GPT-2 / LOA stream (entries 0 and 1, no mask) or
the T5 stream (entries 2 and 3, with its mask).

Layout: latents are channels-last ``[B, T/4, 16, 8]``; the reference's ``[B, 8, T/4, 16]`` is transposed at the
boundary (``to_nchw`` / ``from_nchw`` in the pipeline).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import (Downsample2D, ResnetBlock2D, TimestepEmbedding, Transformer2D, Upsample2D,
                                         conv, group_norm, timestep_embedding)
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
CrossDims = tuple[int | None, ...]

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)
# diffusers config keys we read, and those that must keep their default (anything else is not AudioLDM 2).
_FIXED = {
    "only_cross_attention": (False,), "use_linear_projection": (False,), "class_embed_type": (None,),
    "num_class_embeds": (None,), "upcast_attention": (False,), "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",), "time_embedding_act_fn": (None,), "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "class_embeddings_concat": (False,),
    "num_attention_heads": (None,), "act_fn": ("silu", "swish"),
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 8
    out_channels: int = 8
    block_out_channels: tuple[int, ...] = (128, 256, 384, 640)
    down_block_types: tuple[str, ...] = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    # One tuple per down block: the Transformer2D sequence run after each ResNet of that block.
    cross_attention_dim: tuple[CrossDims, ...] = ((None, 768, 1024),) * 4
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int | None = None
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1

    def __post_init__(self):
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim",
                     "transformer_layers_per_block", "num_heads"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"UNet config: {name} has {len(getattr(self, name))} entries, "
                                 f"block_out_channels has {n}")
        for name, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
            bad = [t for t in getattr(self, name) if t not in allowed]
            if bad:
                raise ValueError(f"UNet config: unknown {name} {bad}; supported: {list(allowed)}")
        for dims in self.cross_attention_dim:
            if not 1 <= len(dims) <= 4:
                raise ValueError(f"UNet config: cross_attention_dim entries hold 1 to 4 dims, got {list(dims)}")

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @classmethod
    def from_diffusers(cls, d: dict) -> "UNetConfig":
        """From an ``AudioLDM2UNet2DConditionModel`` ``config.json`` dict."""
        for key, allowed in _FIXED.items():
            if d.get(key, allowed[0]) not in allowed:
                raise ValueError(f"UNet config: {key}={d[key]!r} is not supported (AudioLDM 2 uses {allowed[0]!r})")
        mid = d.get("mid_block_type", MID_BLOCKS[0])
        if mid not in MID_BLOCKS:
            raise ValueError(f"UNet config: unknown mid_block_type {mid!r}; supported: {list(MID_BLOCKS)}")
        channels = tuple(d.get("block_out_channels", cls.block_out_channels))
        n = len(channels)

        def per_block(key, default):
            value = d.get(key, default)
            return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n

        cross = d.get("cross_attention_dim", 1280)
        if isinstance(cross, (list, tuple)):
            cross = tuple(tuple(c) if isinstance(c, (list, tuple)) else (c,) for c in cross)
        else:
            cross = ((cross,),) * n
        return cls(
            in_channels=d.get("in_channels", 4), out_channels=d.get("out_channels", 4), block_out_channels=channels,
            down_block_types=tuple(d["down_block_types"]), up_block_types=tuple(d["up_block_types"]),
            layers_per_block=per_block("layers_per_block", 2), cross_attention_dim=cross,
            transformer_layers_per_block=per_block("transformer_layers_per_block", 1),
            num_heads=per_block("attention_head_dim", 8),  # diffusers' name; it is the head count
            norm_num_groups=d.get("norm_num_groups", 32), norm_eps=d.get("norm_eps", 1e-5),
            flip_sin_to_cos=d.get("flip_sin_to_cos", True), freq_shift=d.get("freq_shift", 0),
            time_embedding_dim=d.get("time_embedding_dim"), mid_block_scale_factor=d.get("mid_block_scale_factor", 1),
            downsample_padding=d.get("downsample_padding", 1))


def _stream_for(index: int, dim: int | None, streams):
    """The (context, bias) a block's ``index``-th Transformer2D attends to: none for a ``None`` entry, the LOA
    stream for entries 0-1, the T5 stream for entries 2-3 (the reference's routing)."""
    if dim is None:
        return None, None
    return streams[0] if index <= 1 else streams[1]


class _Block(nn.Module):
    """One down / up block: ResNets, each followed by its Transformer2D sequence; then down- or up-sampling."""

    out_channels: int
    num_resnets: int
    cross_dims: CrossDims | None  # None: a plain (attention-free) block
    heads: int
    transformer_layers: int
    groups: int
    eps: float
    sampler: str | None  # "down", "up" or None
    downsample_padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, streams, skips=None, upsample_size=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        outputs = []
        for i in range(self.num_resnets):
            if skips is not None:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ResnetBlock2D(self.out_channels, groups=self.groups, eps=self.eps, name=f"resnets_{i}", **kw)(x, temb)
            for j, dim in enumerate(self.cross_dims or ()):
                ctx, bias = _stream_for(j, dim, streams)
                x = Transformer2D(self.heads, cross_attention=dim is not None, num_layers=self.transformer_layers,
                                  norm_groups=self.groups, name=f"attentions_{i * len(self.cross_dims) + j}",
                                  **kw)(x, ctx, bias)
            outputs.append(x)
        if self.sampler == "down":
            x = Downsample2D(self.out_channels, padding=self.downsample_padding, name="downsamplers_0", **kw)(x)
            outputs.append(x)
        elif self.sampler == "up":
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x, upsample_size)
        return x, outputs


class _MidBlock(nn.Module):
    channels: int
    cross_dims: CrossDims
    heads: int
    transformer_layers: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, streams):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res = dict(groups=self.groups, eps=self.eps, output_scale_factor=self.output_scale_factor, **kw)
        x = ResnetBlock2D(self.channels, name="resnets_0", **res)(x, temb)
        for j, dim in enumerate(self.cross_dims):
            ctx, bias = _stream_for(j, dim, streams)
            x = Transformer2D(self.heads, cross_attention=dim is not None, num_layers=self.transformer_layers,
                              norm_groups=self.groups, name=f"attentions_{j}", **kw)(x, ctx, bias)
        return ResnetBlock2D(self.channels, name="resnets_1", **res)(x, temb)


def mask_to_bias(mask: jax.Array | None, dtype=jnp.float32) -> jax.Array | None:
    """``[B, L]`` keep-mask (1 = attend) -> additive bias ``[B, 1, 1, L]`` of ``(1 - m) * -10000`` (the reference's)."""
    if mask is None:
        return None
    return ((1.0 - mask.astype(dtype)) * -10000.0)[:, None, None, :]


class AudioLDM2UNet(nn.Module):
    """``eps = unet(latents [B, H, W, C_in], t [B] or scalar, context [B, L0, D0], context_mask [B, L0] | None,
    context_1 [B, L1, D1] | None, context_1_mask [B, L1] | None) -> [B, H, W, C_out]``.

    ``context`` is the GPT-2 / LOA stream (the reference's ``encoder_hidden_states``), ``context_1`` the T5 stream
    (``encoder_hidden_states_1``); without ``context_1`` every cross-attention uses ``context``.
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, sample, timesteps, context, context_mask=None, context_1=None, context_1_mask=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b = sample.shape[0]
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        if context_1 is None:
            context_1, context_1_mask = context, context_mask
        streams = ((context.astype(self.dtype), mask_to_bias(context_mask, self.dtype)),
                   (context_1.astype(self.dtype), mask_to_bias(context_1_mask, self.dtype)))

        t = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t.astype(self.dtype))

        x = constrain(sample.astype(self.dtype), ("act_batch", "act_height", "act_width", "act_channels"))
        x = conv(cfg.block_out_channels[0], 3, padding=1, name="conv_in", **kw)(x)
        skips = [x]
        n = len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            x, outputs = _Block(
                cfg.block_out_channels[i], cfg.layers_per_block[i],
                cfg.cross_attention_dim[i] if kind == "CrossAttnDownBlock2D" else None, cfg.num_heads[i],
                cfg.transformer_layers_per_block[i], cfg.norm_num_groups, cfg.norm_eps,
                sampler="down" if i < n - 1 else None, downsample_padding=cfg.downsample_padding,
                name=f"down_blocks_{i}", **kw)(x, temb, streams)
            skips.extend(outputs)

        x = _MidBlock(cfg.block_out_channels[-1], cfg.cross_attention_dim[-1], cfg.num_heads[-1],
                      cfg.transformer_layers_per_block[-1], cfg.norm_num_groups, cfg.norm_eps,
                      cfg.mid_block_scale_factor, name="mid_block", **kw)(x, temb, streams)

        rev = lambda seq: tuple(reversed(seq))
        for i, kind in enumerate(cfg.up_block_types):
            num_resnets = rev(cfg.layers_per_block)[i] + 1
            block_skips, skips = skips[len(skips) - num_resnets:], skips[:len(skips) - num_resnets]
            # Upsample to the spatial size of the next skip connection: exact 2x when sizes divide, and the
            # reference's forced output size when they do not (latent lengths not divisible by 2^levels).
            size = skips[-1].shape[1:3] if i < n - 1 else None
            x, _ = _Block(
                rev(cfg.block_out_channels)[i], num_resnets,
                rev(cfg.cross_attention_dim)[i] if kind == "CrossAttnUpBlock2D" else None, rev(cfg.num_heads)[i],
                rev(cfg.transformer_layers_per_block)[i], cfg.norm_num_groups, cfg.norm_eps,
                sampler="up" if i < n - 1 else None, name=f"up_blocks_{i}", **kw)(
                    x, temb, streams, skips=list(block_skips), upsample_size=size)

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
        x = conv(cfg.out_channels, 3, padding=1, name="conv_out", **kw)(x)
        return constrain(x, ("act_batch", "act_height", "act_width", "act_channels"))


def context_dims(config: UNetConfig) -> tuple[int, int | None]:
    """Feature sizes (D0, D1) of the LOA and T5 streams the config's cross-attentions expect (D1 None: one stream)."""
    streams: tuple[set, set] = (set(), set())
    for block in config.cross_attention_dim:
        for j, dim in enumerate(block):
            if dim is not None:
                streams[0 if j <= 1 else 1].add(dim)
    for k, dims in enumerate(streams):
        if len(dims) > 1:
            raise ValueError(f"UNet config: cross_attention_dim gives context stream {k} several sizes {sorted(dims)}")
    if not streams[0] and not streams[1]:
        raise ValueError("UNet config: cross_attention_dim has no cross-attention at all")
    d0 = next(iter(streams[0])) if streams[0] else next(iter(streams[1]))
    return d0, (next(iter(streams[1])) if streams[1] else None)


def unet_dummy_inputs(config: UNetConfig, batch: int = 1, latent_hw: tuple[int, int] = (16, 16), context_len: int = 4,
                      dtype=jnp.float32):
    """Zero inputs with the right shapes for ``init`` / ``eval_shape``."""
    d0, d1 = context_dims(config)
    sample = jnp.zeros((batch, *latent_hw, config.in_channels), dtype)
    ctx0 = jnp.zeros((batch, context_len, d0), dtype)
    ctx1 = None if d1 is None else jnp.zeros((batch, context_len, d1), dtype)
    return sample, jnp.zeros((batch,), jnp.int32), ctx0, None, ctx1, None
