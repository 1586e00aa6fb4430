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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.layers import dense, dot_product_attention, embed, transformers_activation
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any

# transformers' ``T5Config`` defaults (t5-small): what a config.json that omits a key means.
TRANSFORMERS_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                             relative_attention_num_buckets=32, relative_attention_max_distance=128,
                             layer_norm_epsilon=1e-6, feed_forward_proj="relu")
# transformers' ``T5Config.attribute_map``: generic names a config may use instead of T5's own.
ALIASES = {"d_model": "hidden_size", "num_heads": "num_attention_heads", "num_layers": "num_hidden_layers",
           "d_kv": "head_dim"}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5 encoder hyper-parameters. The defaults are FLAN-T5-large's (AudioLDM 2's ``text_encoder_2``);
    ``from_transformers`` fills keys a config.json omits with transformers' own defaults instead."""

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
        transformers_activation(self.dense_act_fn, "T5 config: dense_act_fn")
        for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                    "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"T5 config: {key}={value!r} must be a positive integer")
        if self.relative_attention_num_buckets < 4:
            # Below 4, half a direction's buckets leave no exact ones (num_buckets // 4 == 0): the log-spaced
            # formula divides by zero.
            raise ValueError(f"T5 config: relative_attention_num_buckets={self.relative_attention_num_buckets} "
                             "must be at least 4")
        if not isinstance(self.is_gated_act, bool):
            raise ValueError(f"T5 config: is_gated_act={self.is_gated_act!r} must be true or false")

    @classmethod
    def from_transformers(cls, d: dict) -> "T5Config":
        """From a transformers ``T5Config`` dict (``config.json`` of ``T5EncoderModel``, ``T5Model``,
        ``T5ForConditionalGeneration``, ...), read as transformers reads it:

        - a missing key takes transformers' default (``TRANSFORMERS_DEFAULTS``), and the generic names of
          ``attribute_map`` (``hidden_size``, ``num_attention_heads``, ``num_hidden_layers``, ``head_dim``) stand for
          T5's own;
        - the feed-forward comes from ``feed_forward_proj`` (``"ACT"`` or ``"gated-ACT"``; the legacy
          ``"gated-gelu"`` means the tanh GELU ``gelu_new``), unless the config also holds the derived
          ``dense_act_fn`` / ``is_gated_act``, which then win, each on its own. Every saved config holds both, and
          they can disagree: a config whose ``feed_forward_proj`` was changed after it was built (transformers' own
          T5 tests do that) keeps the derived values it was built with, and so does the model saved with it.
        """
        def get(key):
            if key in d:
                return d[key]
            alias = ALIASES.get(key)
            return d[alias] if alias in d else TRANSFORMERS_DEFAULTS[key]

        proj = get("feed_forward_proj")
        parts = proj.split("-") if isinstance(proj, str) else []
        if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"T5 config: feed_forward_proj={proj!r} must be 'ACT' or 'gated-ACT'")
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        act = d.get("dense_act_fn", act)
        gated = d.get("is_gated_act", len(parts) == 2)
        transformers_activation(act, f"T5 config (feed_forward_proj={proj!r}): dense_act_fn")
        if d.get("is_decoder", False):
            # T5EncoderModel keeps the flag: its stack would then be a causal decoder (one-directional position
            # buckets, cross-attention layers), which is not the text encoder AudioLDM 2 runs.
            raise ValueError("T5 config: is_decoder=true makes the stack a causal decoder; only the bidirectional "
                             "encoder is implemented")
        keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance")
        eps = get("layer_norm_epsilon")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise ValueError(f"T5 config: layer_norm_epsilon={eps!r} must be a number")
        return cls(**{key: get(key) for key in keys}, layer_norm_epsilon=float(eps), dense_act_fn=act,
                   is_gated_act=gated)

    def to_transformers(self) -> dict:
        """The ``config.json`` transformers' ``T5EncoderModel.save_pretrained`` writes for this encoder (the inverse
        of :meth:`from_transformers`). ``feed_forward_proj`` is written in the form transformers parses back to the
        same feed-forward where one exists (FLAN-T5's ``"gated-gelu"`` for the gated tanh GELU); the derived
        ``dense_act_fn`` / ``is_gated_act`` are written too, as transformers does, and win on reading (a gated exact
        GELU has no ``feed_forward_proj`` spelling of its own). The token table is tied (``shared`` is the
        encoder's ``embed_tokens``); the dropout and initialisation fields are transformers' defaults."""
        act = self.dense_act_fn
        proj = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if self.is_gated_act else act
        return dict(architectures=["T5EncoderModel"], model_type="t5", vocab_size=self.vocab_size,
                    d_model=self.d_model, d_kv=self.d_kv, d_ff=self.d_ff, num_layers=self.num_layers,
                    num_decoder_layers=self.num_layers, num_heads=self.num_heads,
                    relative_attention_num_buckets=self.relative_attention_num_buckets,
                    relative_attention_max_distance=self.relative_attention_max_distance,
                    layer_norm_epsilon=self.layer_norm_epsilon, feed_forward_proj=proj, dense_act_fn=act,
                    is_gated_act=self.is_gated_act, is_encoder_decoder=False, is_decoder=False, use_cache=False,
                    tie_word_embeddings=True, dropout_rate=0.1, classifier_dropout=0.0, initializer_factor=1.0,
                    pad_token_id=0, eos_token_id=1, dtype="float32")


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

    ``position_bias`` is additive, ``[1, N, L, L]``; ``mask`` is boolean (True = attend), broadcastable to
    ``[B, N, L, L]``, or None. The layer that owns the relative position table (block 0) computes the position bias
    from it; the bias is returned so that later blocks reuse it.
    """

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, position_bias, mask):
        cfg = self.config
        length = x.shape[1]
        if self.has_relative_attention_bias:
            table = embed(cfg.relative_attention_num_buckets, cfg.num_heads, ("position", None),
                          name="relative_attention_bias", dtype=jnp.float32, param_dtype=self.param_dtype)
            buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                                cfg.relative_attention_max_distance)
            position_bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None]  # [1, N, L, L]
        inner = cfg.num_heads * cfg.d_kv
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(t):
            t = t.reshape(t.shape[:2] + (cfg.num_heads, cfg.d_kv))
            return constrain(t, ("act_batch", "act_length", "act_heads", None))

        q = heads(dense(inner, ("embed", "heads"), name="q", **kw)(x))
        k = heads(dense(inner, ("embed", "heads"), name="k", **kw)(x))
        v = heads(dense(inner, ("embed", "heads"), name="v", **kw)(x))
        out = dot_product_attention(q, k, v, bias=position_bias, mask=mask, scale=1.0)
        out = out.reshape(out.shape[:2] + (inner,))
        return dense(cfg.d_model, ("heads", "embed"), name="o", **kw)(out), position_bias


class T5DenseReluDense(nn.Module):
    """Gated (``act(wi_0 x) * wi_1 x``) or plain (``act(wi x)``) feed-forward, then ``wo``: ``[B, L, d_model]``."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        act = transformers_activation(cfg.dense_act_fn)
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
    def __call__(self, x, position_bias, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = T5LayerNorm(self.config.layer_norm_epsilon, name="layer_norm", **kw)(x)
        out, position_bias = T5Attention(self.config, self.has_relative_attention_bias, name="SelfAttention",
                                         **kw)(h, position_bias, mask)
        return x + out, position_bias


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
    def __call__(self, x, position_bias, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, position_bias = T5LayerSelfAttention(self.config, self.has_relative_attention_bias, name="layer_0",
                                                **kw)(x, position_bias, mask)
        x = T5LayerFF(self.config, name="layer_1", **kw)(x)
        return constrain(x, ("act_batch", "act_length", "act_embed")), position_bias


class T5Stack(nn.Module):
    """``encoder``: the blocks, then the final RMS norm. ``x: [B, L, d_model]``, ``mask: [B, 1, 1, L]`` boolean
    (True = attend) or None."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        position_bias = None
        for i in range(self.config.num_layers):
            # Only block 0 has a position table; the bias it returns serves every later block.
            x, position_bias = T5Block(self.config, i == 0, name=f"block_{i}", **kw)(x, position_bias, mask)
        return T5LayerNorm(self.config.layer_norm_epsilon, name="final_layer_norm", **kw)(x)


def key_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """``[B, L]`` 1/0 mask -> boolean ``[B, 1, 1, L]`` (True = attend), or None.

    A boolean mask replaces a masked key's logit by a large negative number rather than adding to it: a row whose
    keys are all padding then gets a uniform softmax over every key whatever its scores, as the reference's
    ``where(mask, position_bias, finfo.min)`` does.
    """
    if attention_mask is None:
        return None
    return attention_mask[:, None, None, :] > 0


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
        return T5Stack(cfg, name="encoder", **kw)(x, key_mask(attention_mask))


def t5_dummy_inputs(batch: int = 1, length: int = 4) -> tuple[jax.Array, jax.Array]:
    """Inputs for ``init`` / ``eval_shape``: ``(input_ids [B, L], attention_mask [B, L])``."""
    return jnp.zeros((batch, length), jnp.int32), jnp.ones((batch, length), jnp.int32)
