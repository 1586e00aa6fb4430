"""The T5 encoder (transformers' ``T5EncoderModel``), AudioLDM 2's second text encoder (FLAN-T5-large).

Pre-norm transformer with T5's particulars: RMS layer norm without bias or mean subtraction, attention scores that
are not scaled by ``1/sqrt(d)`` (the scale is folded into the weights), and a learned relative position bias that
the first block computes from bucketed distances and every later block reuses. The feed-forward is gated
(``act(wi_0 x) * wi_1 x``, FLAN-T5) or plain (``act(wi x)``, original T5).

Submodule names follow the torch state dict (``encoder/block_3/layer_1/DenseReluDense/wi_0``) so that conversion
is a mechanical renaming.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.layers import dense, dot_product_attention, embed
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any

# Activations by their transformers name (``ACT2FN``). "gelu" is the exact erf form, "gelu_new" the tanh one.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "swish": nn.silu,
}

# A large finite negative number for masked keys: finite so that a fully padded row gives a uniform softmax rather
# than NaN, large enough that exp() of it is exactly 0 next to any real score.
MASK_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 1024
    d_kv: int = 64
    d_ff: int = 2816
    num_layers: int = 24
    num_heads: int = 16
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"
    is_gated_act: bool = True

    def __post_init__(self):
        if self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(f"T5 config: feed_forward_proj activation {self.dense_act_fn!r} is not supported; "
                             f"supported: {sorted(ACTIVATIONS)}")
        for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                    "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"T5 config: {key}={value!r} must be a positive integer")

    @classmethod
    def from_transformers(cls, d: dict) -> "T5Config":
        """From a transformers ``T5Config`` dict (``config.json`` of ``T5EncoderModel``)."""
        proj = d.get("feed_forward_proj", "relu")
        parts = proj.split("-") if isinstance(proj, str) else []
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"T5 config: feed_forward_proj={proj!r} must be 'ACT' or 'gated-ACT'")
        gated = len(parts) == 2
        act = parts[-1]
        if proj == "gated-gelu":  # transformers maps this legacy name to the tanh approximation
            act = "gelu_new"
        if act not in ACTIVATIONS:
            raise ValueError(f"T5 config: feed_forward_proj={proj!r}: activation {act!r} is not supported; "
                             f"supported: {sorted(ACTIVATIONS)}")
        if d.get("is_decoder", False):
            raise ValueError("T5 config: is_decoder=true; only the (bidirectional) encoder is implemented")
        defaults = cls()
        return cls(
            vocab_size=d.get("vocab_size", defaults.vocab_size), d_model=d.get("d_model", defaults.d_model),
            d_kv=d.get("d_kv", defaults.d_kv), d_ff=d.get("d_ff", defaults.d_ff),
            num_layers=d.get("num_layers", defaults.num_layers), num_heads=d.get("num_heads", defaults.num_heads),
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6), dense_act_fn=act, is_gated_act=gated)


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets of ``key_pos - query_pos``: ``[Lq, Lk]`` int32, computed on the host.

    Half of the buckets go to each direction; within one, distances below ``num_buckets // 4`` get a bucket each and
    larger ones share log-spaced buckets up to ``max_distance``. Done in float32 like the reference, since
    distances that fall exactly on a log-bucket edge depend on the rounding.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    is_small = distance < max_exact
    # Only distances >= max_exact take this branch; clamping keeps log() away from 0.
    scaled = np.log(np.maximum(distance, max_exact).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(is_small, distance, large)).astype(np.int32)


class T5LayerNorm(nn.Module):
    """RMS norm: ``x / sqrt(mean(x^2) + eps) * weight``, statistics in float32."""

    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", with_axes(nn.initializers.ones_init(), ("norm",)), (x.shape[-1],),
                           self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32.astype(self.dtype) * scale.astype(self.dtype)).astype(self.dtype)


class T5Attention(nn.Module):
    """Unscaled self-attention: ``x: [B, L, d_model] -> [B, L, d_model]``.

    ``bias`` is additive, broadcastable to ``[B, N, L, L]``. The layer that owns the relative position table
    (block 0) adds the position bias to it; the combined bias is returned so that later blocks reuse it.
    """

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        cfg = self.config
        length = x.shape[1]
        if self.has_relative_attention_bias:
            table = embed(cfg.relative_attention_num_buckets, cfg.num_heads, ("position", None),
                          name="relative_attention_bias", dtype=jnp.float32, param_dtype=self.param_dtype)
            buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                                cfg.relative_attention_max_distance)
            position_bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]  # [1, N, L, L]
            bias = position_bias if bias is None else position_bias + bias
        inner = cfg.num_heads * cfg.d_kv
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(t):
            t = t.reshape(t.shape[:2] + (cfg.num_heads, cfg.d_kv))
            return constrain(t, ("act_batch", "act_length", "act_heads", None))

        q = heads(dense(inner, ("embed", "heads"), name="q", **kw)(x))
        k = heads(dense(inner, ("embed", "heads"), name="k", **kw)(x))
        v = heads(dense(inner, ("embed", "heads"), name="v", **kw)(x))
        out = dot_product_attention(q, k, v, bias=bias, scale=1.0)
        out = out.reshape(out.shape[:2] + (inner,))
        return dense(cfg.d_model, ("heads", "embed"), name="o", **kw)(out), bias


class T5DenseReluDense(nn.Module):
    """Gated (``act(wi_0 x) * wi_1 x``) or plain (``act(wi x)``) feed-forward, then ``wo``: ``[B, L, d_model]``."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        act = ACTIVATIONS[cfg.dense_act_fn]
        if cfg.is_gated_act:
            gate = act(dense(cfg.d_ff, ("embed", "mlp"), name="wi_0", **kw)(x))
            h = gate * dense(cfg.d_ff, ("embed", "mlp"), name="wi_1", **kw)(x)
        else:
            h = act(dense(cfg.d_ff, ("embed", "mlp"), name="wi", **kw)(x))
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return dense(cfg.d_model, ("mlp", "embed"), name="wo", **kw)(h)


class T5LayerSelfAttention(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm", **kw)(x)
        out, bias = T5Attention(self.config, self.has_relative_attention_bias, name="SelfAttention", **kw)(h, bias)
        return x + out, bias


class T5LayerFF(nn.Module):
    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm", **kw)(x)
        return x + T5DenseReluDense(self.config, name="DenseReluDense", **kw)(h)


class T5Block(nn.Module):
    """``layer_0`` (self-attention) and ``layer_1`` (feed-forward), each pre-norm with a residual."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, bias = T5LayerSelfAttention(self.config, self.has_relative_attention_bias, name="layer_0", **kw)(x, bias)
        x = T5LayerFF(self.config, name="layer_1", **kw)(x)
        return constrain(x, ("act_batch", "act_length", "act_embed")), bias


class T5Stack(nn.Module):
    """``encoder``: the blocks, then the final RMS norm. ``x: [B, L, d_model]``, ``mask_bias: [B, 1, 1, L]``."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bias = mask_bias
        for i in range(self.config.num_layers):
            # Only block 0 has a position table; the bias it returns (position + mask) serves every later block.
            x, bias = T5Block(self.config, i == 0, name=f"block_{i}", **kw)(x, bias)
        return T5LayerNorm(self.config.layer_norm_epsilon, name="final_layer_norm", **kw)(x)


def mask_to_bias(attention_mask: jax.Array | None) -> jax.Array | None:
    """``[B, L]`` 1/0 mask -> additive ``[B, 1, 1, L]`` float32 bias (0 to attend, ``MASK_NEG`` for padding)."""
    if attention_mask is None:
        return None
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, MASK_NEG).astype(jnp.float32)


class T5EncoderModel(nn.Module):
    """``input_ids: [B, L]`` int, ``attention_mask: [B, L]`` (1 = token, 0 = padding) -> ``[B, L, d_model]``."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = embed(cfg.vocab_size, cfg.d_model, name="shared", **kw)(input_ids)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        return T5Stack(cfg, name="encoder", **kw)(x, mask_to_bias(attention_mask))


def t5_dummy_inputs(batch: int = 1, length: int = 4) -> tuple[jax.Array, jax.Array]:
    """Inputs for ``init`` / ``eval_shape``: ``(input_ids [B, L], attention_mask [B, L])``."""
    return jnp.zeros((batch, length), jnp.int32), jnp.ones((batch, length), jnp.int32)
