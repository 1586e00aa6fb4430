"""The AudioLDM 2 T-UNet: a latent-diffusion UNet whose blocks run, after every ResNet, one Transformer2D per entry
of ``cross_attention_dim``: ``None`` (self-attention only), the GPT-2 / LOA stream (entries 0 and 1, no mask) or
the T5 stream (entries 2 and 3, with its mask).

Layout: latents are channels-last ``[B, T/4, 16, 8]``; the reference's ``[B, 8, T/4, 16]`` is transposed at the
boundary (``to_nchw`` / ``from_nchw`` in the pipeline).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import (REMAT_POLICIES, Downsample2D, ResnetBlock2D, TimestepEmbedding, Transformer2D,
                                         Upsample2D, conv, group_norm, remat_block, timestep_embedding)
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
CrossDims = tuple[int | None, ...]

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)

# diffusers' ``get_activation`` (names are matched lower-cased there too); torch's GELU is the exact (erf) one.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu, "swish": nn.silu, "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: nn.gelu(x, approximate=False), "relu": nn.relu,
}

# ``AudioLDM2UNet2DConditionModel.__init__`` defaults, for keys a config.json may leave out.
_DIFFUSERS_DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
    transformer_layers_per_block=1, attention_head_dim=8, num_attention_heads=None, use_linear_projection=False,
    class_embed_type=None, num_class_embeds=None, upcast_attention=False, resnet_time_scale_shift="default",
    time_embedding_type="positional", time_embedding_dim=None, time_embedding_act_fn=None, timestep_post_act=None,
    time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3, projection_class_embeddings_input_dim=None,
    class_embeddings_concat=False,
)
# class_embed_type values for which the reference builds a class embedding (an unknown string builds none).
_CLASS_EMBEDDINGS = ("timestep", "identity", "projection", "simple_projection")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 8
    out_channels: int = 8
    block_out_channels: tuple[int, ...] = (128, 256, 384, 640)
    down_block_types: tuple[str, ...] = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    # One tuple per down block: the Transformer2D sequence run after each ResNet of that block. As in the reference,
    # down block i reads entry i, the mid block the last entry, up block i entry n-1-i; the entry of a plain
    # (DownBlock2D / UpBlock2D) block is never read, and may be anything (() for "none").
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
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    # Activations on the time embedding: after linear_2 (timestep_post_act), then once more before the blocks
    # (time_embedding_act_fn); None for neither, as in AudioLDM 2.
    timestep_post_act: str | None = None
    time_embedding_act_fn: str | None = None
    # Recorded for the checkpoint, not used by the network: the layout of the Transformer2Ds' proj_in / proj_out in
    # the reference's state dict (True: Linear, False: 1x1 Conv2d; the same map on the pixels), and the latent
    # height the pipeline derives its default duration from (the reference's ``sample_size``; None: not given).
    use_linear_projection: bool = False
    sample_size: int | tuple[int, ...] | None = None
    # What the backward pass keeps of each ResNet and Transformer2D (a name of layers.REMAT_POLICIES): a training
    # choice, not part of the network, so it is not written to (nor read from) a diffusers config.json.
    remat: str = "none"

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"UNet config: remat={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
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
        for i, dims in enumerate(self.cross_attention_dim):
            if not isinstance(dims, tuple) or not all(d is None or isinstance(d, int) for d in dims):
                raise ValueError(f"UNet config: cross_attention_dim[{i}]={dims!r} must be a tuple of ints / None "
                                 "(() for a block without attention)")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"UNet config: norm_num_groups={self.norm_num_groups} does not divide "
                             f"block_out_channels {bad}")
        for where, channels, heads, dims in attention_blocks(self):
            if len(dims) > 4:  # the reference's limit for the blocks that read their entry
                raise ValueError(f"UNet config: cross_attention_dim of {where} has {len(dims)} entries "
                                 f"{list(dims)}; at most 4")
            if dims and not 1 <= heads <= channels:
                raise ValueError(f"UNet config: {where} has {channels} channels and attention_head_dim (the head "
                                 f"count) {heads}: need 1 <= heads <= channels")
        for name in ("conv_in_kernel", "conv_out_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:  # the reference pads (k - 1) // 2: only an odd kernel keeps the latent size
                raise ValueError(f"UNet config: {name}={k} is not supported: an even kernel changes the latent size "
                                 "(the reference's UNet then fails at its skip connections, or returns a smaller "
                                 "output than its input)")
        for name in ("timestep_post_act", "time_embedding_act_fn"):
            act = getattr(self, name)
            if act is not None and act not in ACTIVATIONS:
                raise ValueError(f"UNet config: {name}={act!r}; supported: None, {sorted(ACTIVATIONS)}")

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @classmethod
    def from_diffusers(cls, d: dict) -> "UNetConfig":
        """From an ``AudioLDM2UNet2DConditionModel`` ``config.json`` dict, read as the reference's ``__init__``
        reads it (its defaults for missing keys). Values the reference accepts but this port does not implement
        raise ``ValueError`` naming the key; keys that do not change the computation the pipeline runs
        (``use_linear_projection``: a weight layout, kept for the converter; ``sample_size``: kept for the
        pipeline; ``upcast_attention``: logits are float32 here anyway; ``time_cond_proj_dim``: a projection of a
        ``timestep_cond`` the pipeline never passes) are accepted."""
        get = lambda key: d.get(key, _DIFFUSERS_DEFAULTS[key])  # noqa: E731

        def fail(key, why):
            raise ValueError(f"UNet config: {key}={get(key)!r} is not supported: {why}")

        # keys the reference rejects itself, or whose computation this port does not implement
        if get("num_attention_heads") is not None:
            fail("num_attention_heads", "the reference refuses it too (attention_head_dim is the head count)")
        if get("time_embedding_type") != "positional":
            fail("time_embedding_type", "the reference supports 'positional' only")
        if get("mid_block_type") not in MID_BLOCKS:
            fail("mid_block_type", f"the reference supports {list(MID_BLOCKS)} only")
        if get("resnet_time_scale_shift") != "default":
            fail("resnet_time_scale_shift", "only 'default' (time embedding added) is implemented")
        if not isinstance(get("act_fn"), str) or get("act_fn").lower() not in ("silu", "swish"):
            fail("act_fn", "only 'silu' / 'swish' is implemented for the ResNets and the time embedding")
        if get("norm_num_groups") is None:
            fail("norm_num_groups", "the reference's ResNets cannot be built without it either")
        if get("class_embeddings_concat"):
            fail("class_embeddings_concat", "it doubles the ResNets' time-embedding width for class embeddings, "
                 "which need class labels the pipeline never passes")
        cls_type, num_classes = get("class_embed_type"), get("num_class_embeds")
        if (cls_type is None and num_classes is not None) or cls_type in _CLASS_EMBEDDINGS:
            key = "class_embed_type" if cls_type is not None else "num_class_embeds"
            fail(key, "a class embedding needs class labels, which the AudioLDM 2 pipeline never passes")
        acts = {}
        for key in ("timestep_post_act", "time_embedding_act_fn"):
            act = get(key)
            if act is not None and (not isinstance(act, str) or act.lower() not in ACTIVATIONS):
                fail(key, f"the reference's activations are {sorted(ACTIVATIONS)}")
            acts[key] = None if act is None else act.lower()
        if not isinstance(get("use_linear_projection"), bool):
            fail("use_linear_projection", "expected true or false")
        sample_size = get("sample_size")
        if isinstance(sample_size, list):  # the reference stores it as given (a pair for non-square latents)
            sample_size = tuple(sample_size)

        def block_type(name):  # the reference reads "UNetResDownBlock2D" as "DownBlock2D" (and so on)
            return name[len("UNetRes"):] if isinstance(name, str) and name.startswith("UNetRes") else name

        down = tuple(block_type(t) for t in get("down_block_types"))
        up = tuple(block_type(t) for t in get("up_block_types"))
        channels = tuple(get("block_out_channels"))
        n = len(down)
        if len(up) != n or len(channels) != n:
            raise ValueError(f"UNet config: down_block_types ({n}), up_block_types ({len(up)}) and "
                             f"block_out_channels ({len(channels)}) must have the same length")

        def per_block(key, kind=int):
            value = get(key)
            if isinstance(value, (list, tuple)):
                # The reference refuses other lengths, except for transformer_layers_per_block, which it indexes
                # per block (down i: [i], mid: [-1], up i: [-1 - i]): a pairing with no per-block equivalent here.
                if len(value) != n:
                    fail(key, f"{len(value)} entries for {n} blocks")
                value = tuple(value)
            else:
                value = (value,) * n
            if not all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool)) for v in value):
                fail(key, f"expected {kind.__name__} or a list of {n}")
            return value

        cross = get("cross_attention_dim")
        if isinstance(cross, int) and not isinstance(cross, bool):
            cross = ((cross,),) * n
        elif isinstance(cross, (list, tuple)) and len(cross) == n:
            entries = []
            for entry in cross:  # per block: an int (one Transformer2D), a list of ints / nulls, or null
                if entry is None or isinstance(entry, int):
                    entries.append(entry if entry is None else (entry,))
                elif isinstance(entry, (list, tuple)) and all(x is None or isinstance(x, int) for x in entry):
                    entries.append(tuple(entry))
                else:
                    fail("cross_attention_dim", f"entry {entry!r} is neither an int, null, nor a list of them")
            cross = tuple(entries)
        else:
            fail("cross_attention_dim", f"expected an int or a list with one entry per block ({n})")
        # A null entry is fine where the reference never reads it (plain blocks); a block that reads it fails there.
        readers = [(f"down block {i} ({t})", i) for i, t in enumerate(down) if t == "CrossAttnDownBlock2D"]
        readers += [("the mid block", n - 1)]
        readers += [(f"up block {i} ({t})", n - 1 - i) for i, t in enumerate(up) if t == "CrossAttnUpBlock2D"]
        for where, i in readers:
            if cross[i] is None:
                fail("cross_attention_dim", f"entry {i} is null, and {where} reads it")
        cross = tuple(() if c is None else c for c in cross)

        # only_cross_attention is read by the cross-attention down / up blocks (not by the mid block).
        only_cross = per_block("only_cross_attention", bool)
        used = [(f"down block {i}", i) for i, t in enumerate(down) if t == "CrossAttnDownBlock2D" and cross[i]]
        used += [(f"up block {i}", n - 1 - i) for i, t in enumerate(up)
                 if t == "CrossAttnUpBlock2D" and cross[n - 1 - i]]
        for where, i in used:
            if only_cross[i]:
                fail("only_cross_attention", f"True for {where}: cross-attention in place of the first "
                     "self-attention is not implemented")

        try:
            return cls(
                in_channels=get("in_channels"), out_channels=get("out_channels"), block_out_channels=channels,
                down_block_types=down, up_block_types=up, layers_per_block=per_block("layers_per_block"),
                cross_attention_dim=cross, transformer_layers_per_block=per_block("transformer_layers_per_block"),
                num_heads=per_block("attention_head_dim"),  # diffusers' name; it is the head count
                norm_num_groups=get("norm_num_groups"), norm_eps=get("norm_eps"),
                flip_sin_to_cos=get("flip_sin_to_cos"), freq_shift=get("freq_shift"),
                time_embedding_dim=get("time_embedding_dim"), mid_block_scale_factor=get("mid_block_scale_factor"),
                downsample_padding=get("downsample_padding"), conv_in_kernel=get("conv_in_kernel"),
                conv_out_kernel=get("conv_out_kernel"), use_linear_projection=get("use_linear_projection"),
                sample_size=sample_size, **acts)
        except TypeError as err:  # e.g. a string where a number belongs
            raise ValueError(f"UNet config: {err}") from err


def attention_blocks(config: UNetConfig) -> list[tuple[str, int, int, CrossDims]]:
    """``(where, channels, heads, cross dims)`` of every block that runs Transformer2Ds, as the reference pairs
    them: cross-attention down block i reads entry i, the mid block the last entry, cross-attention up block i
    (counted from the bottom) entry ``n - 1 - i``; plain blocks read nothing."""
    c, n = config, len(config.block_out_channels)
    out = [(f"down block {i}", c.block_out_channels[i], c.num_heads[i], c.cross_attention_dim[i])
           for i, kind in enumerate(c.down_block_types) if kind == "CrossAttnDownBlock2D"]
    out.append(("the mid block", c.block_out_channels[-1], c.num_heads[-1], c.cross_attention_dim[-1]))
    for i, kind in enumerate(c.up_block_types):
        if kind == "CrossAttnUpBlock2D":
            j = n - 1 - i
            out.append((f"up block {i}", c.block_out_channels[j], c.num_heads[j], c.cross_attention_dim[j]))
    return out


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
    remat: str = "none"  # the policy each ResNet and Transformer2D runs under (layers.REMAT_POLICIES)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, streams, skips=None, upsample_size=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        resnet, transformer = remat_block(ResnetBlock2D, self.remat), remat_block(Transformer2D, self.remat)
        outputs = []
        for i in range(self.num_resnets):
            if skips is not None:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = resnet(self.out_channels, groups=self.groups, eps=self.eps, name=f"resnets_{i}", **kw)(x, temb)
            for j, dim in enumerate(self.cross_dims or ()):
                ctx, bias = _stream_for(j, dim, streams)
                x = transformer(self.heads, cross_attention=dim is not None, num_layers=self.transformer_layers,
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
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, streams):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        resnet, transformer = remat_block(ResnetBlock2D, self.remat), remat_block(Transformer2D, self.remat)
        res = dict(groups=self.groups, eps=self.eps, output_scale_factor=self.output_scale_factor, **kw)
        x = resnet(self.channels, name="resnets_0", **res)(x, temb)
        for j, dim in enumerate(self.cross_dims):
            ctx, bias = _stream_for(j, dim, streams)
            x = transformer(self.heads, cross_attention=dim is not None, num_layers=self.transformer_layers,
                            norm_groups=self.groups, name=f"attentions_{j}", **kw)(x, ctx, bias)
        return resnet(self.channels, name="resnets_1", **res)(x, temb)


def mask_to_bias(mask: jax.Array | None, dtype=jnp.float32) -> jax.Array | None:
    """``[B, L]`` keep-mask (1 = attend) -> additive bias ``[B, 1, 1, L]`` of ``(1 - m) * -10000`` (the reference's)."""
    if mask is None:
        return None
    return ((1.0 - mask.astype(dtype)) * -10000.0)[:, None, None, :]


class AudioLDM2UNet(nn.Module):
    """``eps = unet(latents [B, H, W, C_in], t [B] or scalar, context [B, L0, D0], context_mask [B, L0] | None,
    context_1 [B, L1, D1] | None, context_1_mask [B, L1] | None) -> [B, H, W, C_out]``.

    ``context`` is the GPT-2 / LOA stream (the reference's ``encoder_hidden_states``), ``context_1`` the T5 stream
    (``encoder_hidden_states_1``); without ``context_1`` every cross-attention uses ``context``, and the T5-stream
    entries keep ``context_1_mask`` (the reference falls back to the hidden states, not to their mask).
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
            context_1 = context
        streams = ((context.astype(self.dtype), mask_to_bias(context_mask, self.dtype)),
                   (context_1.astype(self.dtype), mask_to_bias(context_1_mask, self.dtype)))

        t = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t.astype(self.dtype))
        for act in (cfg.timestep_post_act, cfg.time_embedding_act_fn):  # the reference applies them in this order
            if act is not None:
                temb = ACTIVATIONS[act](temb)

        x = constrain(sample.astype(self.dtype), ("act_batch", "act_height", "act_width", "act_channels"))
        x = conv(cfg.block_out_channels[0], cfg.conv_in_kernel, padding=(cfg.conv_in_kernel - 1) // 2, name="conv_in",
                 **kw)(x)
        skips = [x]
        n = len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            x, outputs = _Block(
                cfg.block_out_channels[i], cfg.layers_per_block[i],
                cfg.cross_attention_dim[i] if kind == "CrossAttnDownBlock2D" else None, cfg.num_heads[i],
                cfg.transformer_layers_per_block[i], cfg.norm_num_groups, cfg.norm_eps,
                sampler="down" if i < n - 1 else None, downsample_padding=cfg.downsample_padding, remat=cfg.remat,
                name=f"down_blocks_{i}", **kw)(x, temb, streams)
            skips.extend(outputs)

        x = _MidBlock(cfg.block_out_channels[-1], cfg.cross_attention_dim[-1], cfg.num_heads[-1],
                      cfg.transformer_layers_per_block[-1], cfg.norm_num_groups, cfg.norm_eps,
                      cfg.mid_block_scale_factor, cfg.remat, name="mid_block", **kw)(x, temb, streams)

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
                sampler="up" if i < n - 1 else None, remat=cfg.remat, name=f"up_blocks_{i}", **kw)(
                    x, temb, streams, skips=list(block_skips), upsample_size=size)

        x = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out", **kw)(x))
        x = conv(cfg.out_channels, cfg.conv_out_kernel, padding=(cfg.conv_out_kernel - 1) // 2, name="conv_out",
                 **kw)(x)
        return constrain(x, ("act_batch", "act_height", "act_width", "act_channels"))


def _stream_sizes(config: UNetConfig) -> tuple[set, set]:
    """Feature sizes each context stream must have for the cross-attentions the model runs (entries of plain
    blocks are never read, so they do not count)."""
    streams: tuple[set, set] = (set(), set())
    for _, _, _, dims in attention_blocks(config):
        for j, dim in enumerate(dims):
            if dim is not None:
                streams[0 if j <= 1 else 1].add(dim)
    for k, dims in enumerate(streams):
        if len(dims) > 1:
            raise ValueError(f"UNet config: cross_attention_dim gives context stream {k} several sizes {sorted(dims)} "
                             f"in the blocks that attend to it")
    return streams


def context_dims(config: UNetConfig) -> tuple[int, int | None]:
    """Feature sizes (D0, D1) of the LOA and T5 streams the config's cross-attentions expect (D1 None: one stream)."""
    streams = _stream_sizes(config)
    if not streams[0] and not streams[1]:
        raise ValueError("UNet config: cross_attention_dim has no cross-attention at all (in the blocks that read it)")
    d0 = next(iter(streams[0])) if streams[0] else next(iter(streams[1]))
    return d0, (next(iter(streams[1])) if streams[1] else None)


def unet_dummy_inputs(config: UNetConfig, batch: int = 1, latent_hw: tuple[int, int] = (16, 16), context_len: int = 4,
                      dtype=jnp.float32):
    """Zero inputs with the right shapes for ``init`` / ``eval_shape`` (a context of width 1 when no block
    cross-attends: it is never read)."""
    streams = _stream_sizes(config)
    d0, d1 = context_dims(config) if streams[0] or streams[1] else (1, None)
    sample = jnp.zeros((batch, *latent_hw, config.in_channels), dtype)
    ctx0 = jnp.zeros((batch, context_len, d0), dtype)
    ctx1 = None if d1 is None else jnp.zeros((batch, context_len, d1), dtype)
    return sample, jnp.zeros((batch,), jnp.int32), ctx0, None, ctx1, None
