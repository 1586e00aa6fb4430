"""Exact decoding of long latents with bounded device memory: ``AutoencoderKL.decode`` streamed layer by layer.

The VAE decoder is not local along time: every GroupNorm normalises with statistics over the whole clip, and the
mid-block attention lets every latent cell see every other. Decoding overlapping windows independently therefore
changes the result. Here the decoder is cut at its GroupNorms into *segments*; each segment is local along time
(convolutions, the nearest upsampling, the residual additions), so it runs window by window with a halo as wide
as its convolutions reach, and only the GroupNorm at its start needs anything global: the statistics of its input,
which the previous segment's windows accumulate (count, mean and centred sum of squares per example and group,
merged in float64). The mid-block attention is one more segment: its keys and values are computed window by
window for the whole clip, then each window's queries attend to all of them in blocks of ``query_block`` queries
(``layers.query_chunked_attention``).

    z ─► post_quant_conv, conv_in ─► [ResNet: norm1·SiLU·conv1 | norm2·SiLU·conv2 + shortcut (+ upsampler)]
      ─► (mid block: ResNet, attention, ResNet; then each up block's ResNets) ─► conv_norm_out·SiLU·conv_out

Between segments the whole activation is held on the host (numpy); a device holds one window of one segment's
input and output (plus the attention's keys and values, ``2 x [B, L * w, C]``, and a ``query_block x L * w``
score block). The result equals ``AutoencoderKL.decode`` up to float32 rounding: the statistics are accumulated in
float64 instead of one float32 reduction, the attention's softmax rows are the same function.

The segments are written against the model's own parameter tree (the Flax ``AutoencoderKL`` params, converted
checkpoints included) and apply its own primitives (``layers.conv``, ``dense``, ``Upsample2D``); only the
GroupNorm is re-expressed, with given statistics, in Flax's formula.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.layers import Upsample2D, conv, dense, query_chunked_attention
from audioldm2_jax.models.vae import VAE_NORM_EPS, AutoencoderKL

# Queries per attention block: a block's scores are ``query_block x (L * w)`` float32 (L latent frames, w latent
# bins): 1024 x 60000 (150 s of the published VAE) is 245 MB.
QUERY_BLOCK = 1024


@dataclasses.dataclass
class GroupStats:
    """Running statistics of one activation, per example and group (float64): ``count`` values (the same for every
    group), their ``mean [B, G]`` and the sum of squared deviations from it, ``m2 [B, G]``."""

    count: float = 0.0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, count: float, mean: np.ndarray, m2: np.ndarray) -> None:
        """Merge a part of ``count`` values with its own ``mean`` and ``m2`` (Chan et al.'s pairwise update)."""
        if count == 0:
            return
        mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        if self.count == 0:
            self.count, self.mean, self.m2 = float(count), mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, var)``, float32 ``[B, G]``: the population variance, as GroupNorm normalises with."""
        return self.mean.astype(np.float32), (self.m2 / self.count).astype(np.float32)


def group_norm_with_stats(x: jax.Array, mean: jax.Array, var: jax.Array, params: dict, eps: float,
                          dtype: Any) -> jax.Array:
    """Flax's ``GroupNorm`` of ``x [B, T, W, C]`` with the given per-group ``mean, var [B, G]`` (float32) instead of
    the ones of ``x`` itself: ``(x - mean) * (rsqrt(var + eps) * scale) + bias``, in Flax's order of operations."""
    groups, c = mean.shape[-1], x.shape[-1]
    per_channel = lambda s: jnp.repeat(s, c // groups, axis=-1)[:, None, None, :]  # noqa: E731
    y = x - per_channel(mean)
    mul = jax.lax.rsqrt(per_channel(var) + eps) * params["scale"].reshape(1, 1, 1, c)
    y = y * mul + params["bias"].reshape(1, 1, 1, c)
    return y.astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Segments: local along time, each applied to one window ``[B, D, W, C]``
# ----------------------------------------------------------------------------------------------------------------


def _conv(p: dict, x: jax.Array, dtype: Any, kernel: int = 3) -> jax.Array:
    """The model's ``conv`` (stride 1, symmetric padding) with the parameters ``p``."""
    return conv(p["kernel"].shape[-1], kernel, padding=kernel // 2, dtype=dtype,
                param_dtype=p["kernel"].dtype).apply({"params": p}, x)


def _norm_silu(p: dict, x, stats, dtype):
    return nn.silu(group_norm_with_stats(x, *stats, p, VAE_NORM_EPS, dtype))


def _segment(kind: str, p: dict, xs: tuple, stats, kv, dtype, query_block: int) -> jax.Array:
    """One segment's output for a window; ``xs`` its window inputs, ``stats`` the ``(mean, var)`` of the first,
    ``kv`` (attention only) the whole clip's keys and values."""
    if kind == "conv_in":  # post_quant_conv (when present) and the decoder's conv_in
        (z,) = xs
        z = z.astype(dtype)
        if "post_quant_conv" in p:
            z = _conv(p["post_quant_conv"], z, dtype, kernel=1)
        return _conv(p["conv_in"], z, dtype)
    if kind == "norm_conv":  # a ResNet's norm1 -> SiLU -> conv1, or conv_norm_out -> SiLU -> conv_out
        (x,) = xs
        return _conv(p["conv"], _norm_silu(p["norm"], x, stats, dtype), dtype)
    if kind == "resnet_out":  # norm2 -> SiLU -> conv2, plus the (1x1-projected) input; then the block's upsampler
        x, h = xs
        h = _conv(p["conv2"], _norm_silu(p["norm2"], h, stats, dtype), dtype)
        if "conv_shortcut" in p:
            x = _conv(p["conv_shortcut"], x, dtype, kernel=1)
        out = x + h  # the VAE's ResNets have output_scale_factor 1
        if "upsample" in p:
            out = Upsample2D(p["upsample"]["conv"]["kernel"].shape[-1], dtype=dtype,
                             param_dtype=p["upsample"]["conv"]["kernel"].dtype).apply({"params": p["upsample"]}, out)
        return out
    if kind == "attn_kv":  # the mid-block attention's keys and values, [B, D * W, C] each, stacked
        (x,) = xs
        t = group_norm_with_stats(x, *stats, p["group_norm"], VAE_NORM_EPS, dtype)
        return jnp.stack([_dense(p[n], t, dtype) for n in ("to_k", "to_v")])
    if kind == "attention":  # the window's queries against every key, plus the residual
        (x,) = xs
        b, t, w, c = x.shape
        q = _dense(p["to_q"], group_norm_with_stats(x, *stats, p["group_norm"], VAE_NORM_EPS, dtype), dtype)
        one_head = lambda t: t[:, :, None]  # noqa: E731 - [B, L, C] -> [B, L, 1, C]
        out = query_chunked_attention(one_head(q), one_head(kv[0]), one_head(kv[1]), scale=1.0 / math.sqrt(c),
                                      block=query_block)[:, :, 0]
        out = dense(c, ("heads", "embed"), dtype=dtype, param_dtype=p["to_out_0"]["kernel"].dtype).apply(
            {"params": p["to_out_0"]}, out)
        return out.reshape(b, t, w, c) + x
    raise ValueError(f"unknown segment {kind!r}")


def _dense(p: dict, x, dtype):
    """A projection of the attention (``to_q`` / ``to_k`` / ``to_v``) of ``x [B, T, W, C]``: ``[B, T * W, C']``."""
    b, t, w, c = x.shape
    return dense(p["kernel"].shape[-1], ("embed", "heads"), dtype=dtype,
                 param_dtype=p["kernel"].dtype).apply({"params": p}, x.reshape(b, t * w, c))


@functools.partial(jax.jit, static_argnames=("kind", "keep", "up", "groups", "dtype", "query_block"))
def _window(p, xs, stats, kv, crop, fresh, *, kind, keep, up, groups, dtype, query_block):
    """One window of one segment: its output rows ``[crop * up, (crop + keep) * up)`` and, with ``groups``, the
    statistics ``(count, mean [B, G], m2 [B, G])`` of the kept rows from ``fresh * up`` on (the rows an earlier
    window has not counted)."""
    y = _segment(kind, p, xs, stats, kv, dtype, query_block)
    if kind == "attn_kv":  # [2, B, D * W, C]: back to rows of time to crop
        y = y.reshape(2, xs[0].shape[0], xs[0].shape[1], -1, y.shape[-1])
        return jax.lax.dynamic_slice_in_dim(y, crop, keep, axis=2), None
    y = jax.lax.dynamic_slice_in_dim(y, crop * up, keep * up, axis=1)
    if groups is None:
        return y, None
    b, t, w, c = y.shape
    g = y.astype(jnp.float32).reshape(b, t, w, groups, c // groups)
    counted = (jnp.arange(t) >= fresh * up)[None, :, None, None, None]
    n = (t - fresh * up) * w * (c // groups)
    mean = jnp.sum(jnp.where(counted, g, 0.0), axis=(1, 2, 4)) / jnp.maximum(n, 1)
    m2 = jnp.sum(jnp.where(counted, jnp.square(g - mean[:, None, None, :, None]), 0.0), axis=(1, 2, 4))
    return y, (n, mean, m2)


@dataclasses.dataclass(frozen=True)
class _Streamer:
    """Runs segments window by window over host arrays ``[B, T, W, C]``: ``window`` kept rows per window (at the
    segment's input resolution)."""

    window: int
    dtype: Any
    query_block: int

    def run(self, kind: str, p: dict, xs: tuple[np.ndarray, ...], *, halo: int, up: int = 1,
            stats: GroupStats | None = None, groups: int | None = None, kv=None):
        """The segment over the whole clip: ``(output [B, T * up, ...] host float array, GroupStats of the output
        or None)``. ``halo``: input rows each side the segment's convolutions reach (its windows decode that much
        context, cropped away; at the clip's ends the convolutions' own zero padding is the whole decode's)."""
        length = xs[0].shape[1]
        keep = min(self.window, length)
        span = min(keep + 2 * halo, length)
        moments = None if stats is None else tuple(jnp.asarray(m) for m in stats.moments())
        out, acc = None, GroupStats() if groups else None
        pending = None  # the previous window's result, fetched once the next one is dispatched (two in flight)
        for k in range(-(-length // keep)):
            start = min(k * keep, length - keep)  # the last window ends at the clip's end (same shape for all)
            first = min(max(start - halo, 0), length - span)
            result = _window(p, tuple(x[:, first:first + span] for x in xs), moments, kv, start - first,
                             k * keep - start, kind=kind, keep=keep, up=up, groups=groups, dtype=self.dtype,
                             query_block=self.query_block)
            if pending is not None:
                out = _store(out, *pending, kind=kind, length=length, up=up, acc=acc)
            pending = (start, keep, result)
        out = _store(out, *pending, kind=kind, length=length, up=up, acc=acc)
        return out, acc


def _store(out, start: int, keep: int, result, *, kind: str, length: int, up: int, acc: GroupStats | None):
    """Copies a window's kept output into the host array ``out`` (allocated at the first window) and merges its
    statistics into ``acc``."""
    y, part = result
    y = np.asarray(y)
    if out is None:
        shape = list(y.shape)
        shape[2 if kind == "attn_kv" else 1] = length * up
        out = np.empty(shape, y.dtype)
    if kind == "attn_kv":
        out[:, :, start:start + keep] = y
    else:
        out[:, start * up:(start + keep) * up] = y
    if part is not None:
        acc.add(float(part[0]), np.asarray(part[1]), np.asarray(part[2]))
    return out


def _resnet(streamer: _Streamer, p: dict, x: np.ndarray, stats: GroupStats, groups: int, upsample: dict | None):
    """A decoder ResNet (then the up block's upsampler, if given) as its two segments."""
    h, h_stats = streamer.run("norm_conv", {"norm": p["norm1"], "conv": p["conv1"]}, (x,), halo=1, stats=stats,
                              groups=groups)
    q = {k: p[k] for k in ("norm2", "conv2", "conv_shortcut") if k in p}
    if upsample is not None:
        q["upsample"] = upsample
    # conv2 reaches one row of h; the upsampler's conv reaches one doubled row, i.e. one more input row
    up = 1 if upsample is None else 2
    return streamer.run("resnet_out", q, (x, h), halo=up, up=up, stats=h_stats, groups=groups)


def streamed_decode(vae: AutoencoderKL, variables: dict, z, window: int, query_block: int = QUERY_BLOCK
                    ) -> np.ndarray:
    """``AutoencoderKL.decode`` of ``z [B, L, w, latent_channels]`` (unscaled) computed window by window:
    ``window`` latent frames kept per window (and as many frames at each resolution above: ``2 * window`` after the
    first upsampler, ...). ``variables``: what ``vae.apply`` takes (``{"params": ...}``). Returns the decoded
    ``[B, L * f, w * f, out_channels]`` as a host float array; see the module docstring for what stays on a device.
    """
    if int(window) < 1:
        raise ValueError(f"streamed VAE decoding: window={window} latent frames must be >= 1")
    if int(query_block) < 1:
        raise ValueError(f"streamed VAE decoding: query_block={query_block} must be >= 1")
    cfg = vae.config
    z = np.asarray(z)
    if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
        raise ValueError(f"streamed VAE decoding: latents must be [B, L, w, {cfg.latent_channels}], got {z.shape}")
    params = nn.meta.unbox(variables["params"] if "params" in variables else variables)
    dec, groups = params["decoder"], cfg.norm_num_groups
    streamer = _Streamer(int(window), vae.dtype, int(query_block))

    head = {"conv_in": dec["conv_in"]}
    if cfg.use_post_quant_conv:
        head["post_quant_conv"] = params["post_quant_conv"]
    x, stats = streamer.run("conv_in", head, (z,), halo=1, groups=groups)
    mid = dec["mid_block"]
    x, stats = _resnet(streamer, mid["resnets_0"], x, stats, groups, None)
    if cfg.mid_block_add_attention:
        attn = mid["attentions_0"]
        kv, _ = streamer.run("attn_kv", attn, (x,), halo=0, stats=stats)  # [2, B, L, w, C] on the host
        kv = jnp.asarray(kv.reshape(2, kv.shape[1], -1, kv.shape[-1]))  # the whole clip's, on the device
        x, stats = streamer.run("attention", attn, (x,), halo=0, stats=stats, groups=groups, kv=kv)
        del kv
    x, stats = _resnet(streamer, mid["resnets_1"], x, stats, groups, None)
    blocks = len(cfg.block_out_channels)
    for i in range(blocks):
        block = dec[f"up_blocks_{i}"]
        scale = 2 ** i  # this block's rows per latent frame: windows of the same stretch of audio
        streamer = dataclasses.replace(streamer, window=int(window) * scale)
        for j in range(cfg.layers_per_block + 1):
            last = j == cfg.layers_per_block and i != blocks - 1
            x, stats = _resnet(streamer, block[f"resnets_{j}"], x, stats, groups,
                               block["upsamplers_0"] if last else None)
    streamer = dataclasses.replace(streamer, window=int(window) * 2 ** (blocks - 1))
    out, _ = streamer.run("norm_conv", {"norm": dec["conv_norm_out"], "conv": dec["conv_out"]}, (x,), halo=1,
                          stats=stats)
    return out


__all__ = ["GroupStats", "QUERY_BLOCK", "group_norm_with_stats", "streamed_decode"]
