"""Layers shared by the networks: projections and convolutions with logical axes, norms, attention, ResNet and
transformer blocks of the latent-diffusion family.

Every module takes ``dtype`` (compute) and ``param_dtype``. Tensors are channels-last: images ``[B, H, W, C]``,
sequences ``[B, L, C]``. Submodule names follow the PyTorch reference (``to_out_0`` for ``to_out.0``) so that
checkpoint conversion is a mechanical renaming.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any
default_kernel_init = nn.initializers.lecun_normal()
zeros = nn.initializers.zeros_init()
ones = nn.initializers.ones_init()


# ----------------------------------------------------------------------------------------------------------------
# Parameterised primitives with logical axis names
# ----------------------------------------------------------------------------------------------------------------


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: str | None = None,
          kernel_init: Callable = default_kernel_init) -> nn.Dense:
    """``nn.Dense`` whose kernel is named ``axes = (in_axis, out_axis)`` and bias ``(out_axis,)``."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=with_axes(kernel_init, axes), bias_init=with_axes(zeros, (axes[1],)))


def conv(features: int, kernel_size: int | tuple[int, ...], *, strides: int | tuple[int, ...] = 1,
         padding: Any = "SAME", use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: str | None = None, ndim: int = 2, kernel_dilation: int | tuple[int, ...] = 1,
         feature_group_count: int = 1) -> nn.Conv:
    """``nn.Conv`` (``ndim`` spatial dims) with kernel axes ``(..., conv_kh, conv_kw, conv_in, conv_out)``.

    ``padding`` is an int (symmetric, like ``torch.nn.Conv*d(padding=p)``), a Flax padding spec, or "SAME".
    """
    ks = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
    st = (strides,) * ndim if isinstance(strides, int) else tuple(strides)
    dil = (kernel_dilation,) * ndim if isinstance(kernel_dilation, int) else tuple(kernel_dilation)
    if isinstance(padding, int):
        padding = ((padding, padding),) * ndim
    axes = ("conv_kd", "conv_kh", "conv_kw")[3 - ndim:] + ("conv_in", "conv_out")
    return nn.Conv(features, ks, strides=st, padding=padding, use_bias=use_bias, dtype=dtype,
                   param_dtype=param_dtype, name=name, kernel_dilation=dil, feature_group_count=feature_group_count,
                   kernel_init=with_axes(default_kernel_init, axes), bias_init=with_axes(zeros, ("conv_out",)))


def group_norm(num_groups: int, eps: float, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.GroupNorm:
    # Two-pass variance: E[x^2] - E[x]^2 loses digits on large activations and breaks 1e-4 parity.
    return nn.GroupNorm(num_groups=num_groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                        use_fast_variance=False, scale_init=with_axes(ones, ("norm",)),
                        bias_init=with_axes(zeros, ("norm",)))


def layer_norm(eps: float, *, use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                        use_fast_variance=False, scale_init=with_axes(ones, ("norm",)),
                        bias_init=with_axes(zeros, ("norm",)))


def embed(num_embeddings: int, features: int, axes: tuple[str | None, str | None] = ("vocab", "embed"), *,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Embed:
    return nn.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype, name=name,
                    embedding_init=with_axes(nn.initializers.normal(0.02), axes))


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


# The attention implementations, by name. Which one a program uses is the caller's choice, made for the platform it
# compiles for (:func:`resolve_attention`): the trainer from its mesh, the pipeline from its mesh or device.
#   xla       ``jax.nn.dot_product_attention``'s XLA implementation: correct on every platform.
#   per_head  score matrices of at least PER_HEAD_MIN_SCORES entries computed one (example, head) at a time
#             (:func:`per_head_attention`), smaller ones as ``xla``: XLA:CPU runs one plain matrix product per head
#             multi-threaded, a product batched over ``B x N`` far slower (docs/benchmarks.md).
#   cudnn     cuDNN's fused (flash) kernel for 16-bit inputs whose head size it takes, which
#             ``jax.nn.dot_product_attention``'s default does not pick; ``xla`` for the rest and for shapes cuDNN
#             rejects at trace time.
ATTENTION_IMPLEMENTATIONS = ("xla", "per_head", "cudnn")
# A device's ``platform`` -> the implementation that suits it; every other platform (tpu, rocm, ...) takes xla.
_PLATFORM_ATTENTION = {"cpu": "per_head", "gpu": "cudnn", "cuda": "cudnn"}
# Score matrices of at least this many entries (Lq * Lk) take the per-head path: below it the batched product is as
# fast, and a cross-attention to a handful of keys is slower per head (docs/benchmarks.md).
PER_HEAD_MIN_SCORES = 128 * 128
# Long sequences, whatever the implementation (but cuDNN's fused kernel, which never holds the scores): score matrices
# of at least QUERY_CHUNK_MIN_SCORES entries (per example and head: 8192^2, the UNet's top level past 20.48 s of
# audio, twice the published training length) are computed a block of queries at a time, each block's scores
# ``QUERY_BLOCK_SCORES`` entries per example and head (64 MiB in float32), so that attention's memory grows linearly
# with the length instead of with its square (minutes of audio: :func:`query_chunked_attention`).
QUERY_CHUNK_MIN_SCORES = 8192 * 8192
QUERY_BLOCK_SCORES = 4096 * 4096

# The implementation that traces of model code use, set by :func:`use_attention` (a context variable: local to the
# thread and the async task, restored on exit); "xla" when no caller chose.
_ATTENTION = contextvars.ContextVar("attention_implementation", default="xla")


def attention_for_platform(platform: str) -> str:
    """The attention implementation to compile for ``platform``: a device's ``.platform`` ("cpu", "gpu", "tpu",
    ...), e.g. ``mesh.devices.flat[0].platform``, which is the target even when the host is another platform (an
    ahead-of-time compile for TPU on a CPU host)."""
    return _PLATFORM_ATTENTION.get(str(platform).lower(), "xla")


def check_attention(name: str) -> str:
    """``name`` if it is one of :data:`ATTENTION_IMPLEMENTATIONS`; a ValueError naming them otherwise."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is not one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    return name


def resolve_attention(name: str, platform: str) -> str:
    """A configured implementation: "auto" -> :func:`attention_for_platform` of ``platform``, else ``name`` checked."""
    return attention_for_platform(platform) if name == "auto" else check_attention(name)


@contextlib.contextmanager
def use_attention(name: str):
    """Model code traced within it computes attention with implementation ``name`` (one of
    :data:`ATTENTION_IMPLEMENTATIONS`). Like ``nn.logical_axis_rules`` it acts at trace time: a jitted function keeps
    the implementation of the trace it cached, so trace each program under the context it is compiled for."""
    token = _ATTENTION.set(check_attention(name))
    try:
        yield
    finally:
        _ATTENTION.reset(token)


# Rematerialisation of a network's repeated blocks, by name: what the backward pass keeps from the forward pass of
# each block ("none": everything, no remat; "full": only the block's inputs, all else recomputed; "save_dots": the
# matmul / convolution outputs; "save_dots_no_batch": those without a batch dimension, i.e. weights-only products;
# "offload_dots_no_batch": those same products, kept in pinned host memory instead of the accelerator's until the
# backward pass reads them back: a platform without a "pinned_host" memory space fails to compile it).
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "save_dots": jax.checkpoint_policies.checkpoint_dots,
                  "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "offload_dots_no_batch": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device",
                                                                                                  "pinned_host")}


def check_remat(name: str) -> str:
    """``name`` if it is one of :data:`REMAT_POLICIES`; a ValueError naming them otherwise."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat policy {name!r} is not one of {', '.join(REMAT_POLICIES)}")
    return name


def remat_block(module_class: type, policy: str, static_argnums: tuple[int, ...] = ()) -> type:
    """``module_class`` rematerialised with the named policy (:data:`REMAT_POLICIES`; "none": unchanged)."""
    if check_remat(policy) == "none":
        return module_class
    return nn.remat(module_class, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          mask: jax.Array | None = None, scale: float | None = None,
                          is_causal: bool = False, implementation: str | None = None) -> jax.Array:
    """Multi-head attention on ``[B, L, N, D]`` tensors; the project's single attention entry point.

    ``bias`` is additive and broadcastable to ``[B, N, Lq, Lk]``; ``mask`` is boolean (True = attend).
    ``implementation``: one of :data:`ATTENTION_IMPLEMENTATIONS`; default the one :func:`use_attention` set ("xla"
    outside it). Every implementation computes the same function (float32 logits and softmax).
    """
    implementation = _ATTENTION.get() if implementation is None else check_attention(implementation)
    if bias is not None:
        bias = bias.astype(q.dtype)
    kwargs = dict(bias=bias, mask=mask, scale=scale, is_causal=is_causal)
    if implementation == "cudnn" and _cudnn_candidate(q):
        try:
            return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
        except Exception:  # noqa: BLE001 - shape / layout / version limits of the fused kernel, found at trace time
            pass
    scores = q.shape[1] * k.shape[1]
    if implementation == "per_head" and scores >= PER_HEAD_MIN_SCORES:
        return per_head_attention(q, k, v, **kwargs)  # in blocks of queries past QUERY_CHUNK_MIN_SCORES
    if scores >= QUERY_CHUNK_MIN_SCORES:
        return query_chunked_attention(q, k, v, **kwargs)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)


def _logits_bias(bias: jax.Array | None, mask: jax.Array | None, is_causal: bool, lq: int,
                 lk: int) -> jax.Array:
    """``bias``, ``mask`` and the causal mask as one float32 additive bias broadcastable to ``[B, N, Lq, Lk]`` (a
    masked logit gets the large negative value ``jax.nn.dot_product_attention`` uses: ``x + it == it``)."""
    logits_bias = jnp.zeros((1, 1, 1, lk), jnp.float32) if bias is None else bias.astype(jnp.float32)
    allowed = None if mask is None else jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, (1, 1, 1, lk)))
    if is_causal:
        causal = jnp.tril(jnp.ones((lq, lk), bool))[None, None]  # jax's convention (no offset)
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        logits_bias = jnp.where(allowed, logits_bias, _LARGE_NEGATIVE)
    return logits_bias


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float) -> jax.Array:
    """``softmax(q k^T * scale + bias) v`` over any leading dimensions: ``q [..., Lq, D]``, ``k, v [..., Lk, D]``,
    float32 ``bias`` broadcastable to ``[..., Lq, Lk]``; logits and softmax in float32, the probabilities cast to
    ``v``'s dtype, as ``jax.nn.dot_product_attention``'s XLA implementation."""
    logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) * scale + bias
    return jnp.einsum("...qk,...kd->...qd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def _query_block(lq: int, lk: int) -> int:
    """Queries per block: all of them below :data:`QUERY_CHUNK_MIN_SCORES`, else ``QUERY_BLOCK_SCORES / Lk``."""
    return lq if lq * lk < QUERY_CHUNK_MIN_SCORES else max(1, QUERY_BLOCK_SCORES // lk)


def _in_query_blocks(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, scale: float,
                     block: int) -> jax.Array:
    """:func:`_softmax_attention` computed ``block`` queries at a time (``lax.map``; the last block padded): the
    scores held are ``[..., block, Lk]``. A bias with a row per query is split with them."""
    lq = q.shape[-2]
    if block >= lq:
        return _softmax_attention(q, k, v, bias, scale)
    blocks = -(-lq // block)

    def split(x):  # [..., Lq, X] -> [blocks, ..., block, X]
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, blocks * block - lq), (0, 0)])
        return jnp.moveaxis(x.reshape(*x.shape[:-2], blocks, block, x.shape[-1]), -3, 0)

    row_bias = split(bias) if bias.shape[-2] == lq else None
    out = jax.lax.map(lambda a: _softmax_attention(a[0], k, v, bias if a[1] is None else a[1], scale),
                      (split(q), row_bias))  # [blocks, ..., block, D]
    out = jnp.moveaxis(out, 0, -3)
    return out.reshape(*out.shape[:-3], blocks * block, out.shape[-1])[..., :lq, :]


def query_chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                            mask: jax.Array | None = None, scale: float | None = None, is_causal: bool = False,
                            block: int | None = None) -> jax.Array:
    """``jax.nn.dot_product_attention``'s XLA implementation on ``[B, L, N, D]`` tensors, computed ``block`` queries
    at a time for every example and head at once (default: :data:`QUERY_BLOCK_SCORES` / Lk queries when the scores
    reach :data:`QUERY_CHUNK_MIN_SCORES` entries, else all): each step of a ``lax.map`` holds ``[B, N, block, Lk]``
    scores instead of ``[B, N, Lq, Lk]``. XLA's cost analysis counts the loop's body once: FLOPs of a program with
    it are a lower bound."""
    b, lq, n, d = q.shape
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block = _query_block(lq, lk) if block is None else int(block)
    if block < 1:
        raise ValueError(f"query_chunked_attention: block={block} queries must be >= 1")
    heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731 - [B, L, N, D] <-> [B, N, L, D]
    out = _in_query_blocks(heads(q), heads(k), heads(v), _logits_bias(bias, mask, is_causal, lq, lk), scale, block)
    return heads(out)


def per_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                       mask: jax.Array | None = None, scale: float | None = None,
                       is_causal: bool = False) -> jax.Array:
    """``jax.nn.dot_product_attention``'s XLA implementation (float32 logits and softmax, masked logits at the same
    large negative value), computed one (example, head) at a time by ``lax.map``: each step is a pair of plain
    matrix products, which XLA:CPU runs multi-threaded, instead of one batched product over ``B x N``; past
    :data:`QUERY_CHUNK_MIN_SCORES` each head's in blocks of queries as :func:`query_chunked_attention`."""
    b, lq, n, d = q.shape
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    logits_bias = _logits_bias(bias, mask, is_causal, lq, lk)
    rows = logits_bias.shape[2]
    logits_bias = jnp.broadcast_to(logits_bias, (b, n, rows, lk)).reshape(b * n, rows, lk)
    heads = lambda x: x.transpose(0, 2, 1, 3).reshape(b * n, x.shape[1], x.shape[3])  # noqa: E731
    block = _query_block(lq, lk)
    out = jax.lax.map(lambda a: _in_query_blocks(*a, scale, block), (heads(q), heads(k), heads(v), logits_bias))
    return out.reshape(b, n, lq, v.shape[-1]).transpose(0, 2, 1, 3)


_LARGE_NEGATIVE = float(-0.7 * jnp.finfo(jnp.float32).max)


def _cudnn_candidate(q: jax.Array) -> bool:
    """Inputs cuDNN's fused kernel takes: 16-bit, head size a multiple of 8 up to 128."""
    return q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0


class Attention(nn.Module):
    """diffusers' ``Attention``: ``to_q``/``to_k``/``to_v`` projections, ``heads`` heads, ``to_out_0``.

    ``x: [B, Lq, C]``, ``context: [B, Lk, Cc]`` (self-attention when None), ``bias`` additive ``[B, 1|N, Lq|1, Lk]``.
    """

    heads: int
    dim_head: int
    out_dim: int | None = None
    qkv_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, bias=None):
        inner = self.heads * self.dim_head
        context = x if context is None else context
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.qkv_bias)
        q = dense(inner, ("embed", "heads"), name="to_q", **kw)(x)
        k = dense(inner, ("embed", "heads"), name="to_k", **kw)(context)
        v = dense(inner, ("embed", "heads"), name="to_v", **kw)(context)
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.dim_head))
        q, k, v = (constrain(split(t), ("act_batch", "act_length", "act_heads", None)) for t in (q, k, v))
        out = dot_product_attention(q, k, v, bias=bias, scale=1.0 / math.sqrt(self.dim_head))
        out = out.reshape(out.shape[:2] + (inner,))
        return dense(self.out_dim or x.shape[-1], ("heads", "embed"), name="to_out_0", dtype=self.dtype,
                     param_dtype=self.param_dtype)(out)


class GEGLU(nn.Module):
    """``proj`` to twice the width, split into value and gate, ``value * gelu(gate)`` (exact GELU)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(self.features * 2, ("embed", "mlp"), name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h, gate = jnp.split(h, 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class GEGLUFeedForward(nn.Module):
    """diffusers' ``FeedForward(activation_fn="geglu")``: ``net_0`` (GEGLU to ``mult`` x width), ``net_2`` back."""

    mult: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        h = GEGLU(dim * self.mult, name="net_0", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return dense(dim, ("mlp", "embed"), name="net_2", dtype=self.dtype, param_dtype=self.param_dtype)(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention (or a second self-attention), GEGLU feed-forward."""

    heads: int
    dim_head: int
    cross_attention: bool
    norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, context_bias=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(heads=self.heads, dim_head=self.dim_head, **kw)
        x = x + Attention(name="attn1", **attn)(layer_norm(self.norm_eps, name="norm1", **kw)(x))
        h = layer_norm(self.norm_eps, name="norm2", **kw)(x)
        if self.cross_attention:
            x = x + Attention(name="attn2", **attn)(h, context, context_bias)
        else:  # "double self-attention": the block of a `null` cross_attention_dim entry
            x = x + Attention(name="attn2", **attn)(h)
        x = x + GEGLUFeedForward(name="ff", **kw)(layer_norm(self.norm_eps, name="norm3", **kw)(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class Transformer2D(nn.Module):
    """diffusers' ``Transformer2DModel`` with conv 1x1 in/out projections: ``[B, H, W, C] -> [B, H, W, C]``."""

    heads: int
    cross_attention: bool
    num_layers: int = 1
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None, context_bias=None):
        b, hgt, wid, ch = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        residual = x
        # The reference's width inside: heads * (ch // heads), less than ch when the head count does not divide it.
        inner = self.heads * (ch // self.heads)
        h = group_norm(self.norm_groups, 1e-6, name="norm", **kw)(x)
        h = conv(inner, 1, padding=0, name="proj_in", **kw)(h)
        h = h.reshape(b, hgt * wid, inner)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(self.heads, ch // self.heads, self.cross_attention,
                                      name=f"transformer_blocks_{i}", **kw)(h, context, context_bias)
        h = h.reshape(b, hgt, wid, inner)
        return conv(ch, 1, padding=0, name="proj_out", **kw)(h) + residual


# ----------------------------------------------------------------------------------------------------------------
# Convolutional blocks
# ----------------------------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D`` (pre-norm, SiLU, optional time embedding, 1x1 shortcut when channels change)."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None, deterministic: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(self.groups, self.eps, name="norm1", **kw)(x))
        h = conv(self.out_channels, 3, padding=1, name="conv1", **kw)(h)
        if temb is not None:
            t = dense(self.out_channels, ("embed", "conv_out"), name="time_emb_proj", **kw)(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, name="norm2", **kw)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = conv(self.out_channels, 3, padding=1, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, padding=0, name="conv_shortcut", **kw)(x)
        out = (x + h) / self.output_scale_factor
        return constrain(out, ("act_batch", "act_height", "act_width", "act_channels"))


class Downsample2D(nn.Module):
    """3x3 convolution with stride 2 and symmetric padding ``padding`` (``downsamplers.0.conv``)."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        pad = ((self.padding, self.padding),) * 2 if self.padding else ((0, 1), (0, 1))  # padding 0: pad right/bottom
        return conv(self.out_channels, 3, strides=2, padding=pad, name="conv", dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)


def upsample_nearest(x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """Nearest-neighbour upsampling of ``[B, H, W, C]`` by 2, or to ``size`` with torch's index rule ``floor(i*in/out)``."""
    if size is None or tuple(size) == (2 * x.shape[1], 2 * x.shape[2]):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    (h, w), (oh, ow) = x.shape[1:3], size
    rows = (jnp.arange(oh) * h) // oh
    cols = (jnp.arange(ow) * w) // ow
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest upsampling (by 2, or to an explicit size) followed by a 3x3 convolution (``upsamplers.0.conv``)."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, size: tuple[int, int] | None = None):
        x = upsample_nearest(x, size)
        return conv(self.out_channels, 3, padding=1, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


# ----------------------------------------------------------------------------------------------------------------
# Timestep embeddings
# ----------------------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[B] -> [B, dim]`` as diffusers' ``get_timestep_embedding``."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2``."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.features, ("embed", "mlp"), name="linear_1", **kw)(x)
        return dense(self.features, ("mlp", "embed"), name="linear_2", **kw)(nn.silu(x))


# ----------------------------------------------------------------------------------------------------------------
# Activations by their transformers name
# ----------------------------------------------------------------------------------------------------------------


def _gelu_fast(x):
    # transformers' FastGELUActivation: the tanh form with sqrt(2/pi) written out to 10 digits and x^3 factored.
    return 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _laplace(x, mu=0.707107, sigma=0.282095):
    # transformers' LaplaceActivation (MEGA): a Gaussian CDF centred at mu.
    return 0.5 * (1.0 + jax.lax.erf((x - mu) / (sigma * math.sqrt(2.0))))


# transformers' ``ACT2FN`` names -> the same function. "gelu" (and "gelu_python") is the exact erf form; "gelu_new",
# "gelu_pytorch_tanh", "gelu_python_tanh" and "gelu_accurate" are the tanh approximation
# ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; "leaky_relu" is torch's default slope 0.01. The two ACT2FN
# entries that carry learned parameters ("prelu", "xielu") are absent: their weights would be part of the model.
TRANSFORMERS_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_python": lambda x: nn.gelu(x, approximate=False),
    "gelu_10": lambda x: jnp.clip(nn.gelu(x, approximate=False), -10.0, 10.0),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_python_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_accurate": lambda x: nn.gelu(x, approximate=True),
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": nn.relu,
    "relu2": lambda x: jnp.square(nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.01),
    "hardswish": jax.nn.hard_swish,
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
    "laplace": _laplace,
    "linear": lambda x: x,
}


def transformers_activation(name: str, what: str = "activation") -> Callable[[jax.Array], jax.Array]:
    """The activation transformers' ``ACT2FN[name]`` computes; ``what`` names the config key in the error."""
    if not isinstance(name, str) or name not in TRANSFORMERS_ACTIVATIONS:
        raise ValueError(f"{what}={name!r} is not a supported activation; supported (transformers' ACT2FN names "
                         f"without learned parameters): {sorted(TRANSFORMERS_ACTIVATIONS)}")
    return TRANSFORMERS_ACTIVATIONS[name]
