"""GPT-2 (transformers' ``GPT2Model``) and AudioLDM 2's LOA generation with it.

In AudioLDM 2 the language model never sees tokens: it reads the projected CLAP / T5 sequence as
``inputs_embeds`` and generates the "language of audio" (LOA) by feeding each step's final hidden state (after
``ln_f``) back in as the next input embedding, greedily, for ``max_new_tokens`` steps.

Submodule names follow the torch state dict (``h_3/attn/c_attn``). The projections are HF ``Conv1D`` layers whose
weights are already stored ``(in, out)``, the Flax kernel layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import dense, dot_product_attention, embed, layer_norm
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
KVCache = tuple[dict[str, jax.Array], ...]  # one {"k", "v"} per layer, each [B, T, N, head_dim]

# transformers' ACT2FN names: "gelu_new" is the tanh approximation GPT-2 uses, "gelu" the exact erf form.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    max_new_tokens: int = 8  # the pipeline's default generation length, stored in the checkpoint config

    def __post_init__(self):
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"GPT-2 config: activation_function={self.activation_function!r} is not supported; "
                             f"supported: {sorted(ACTIVATIONS)}")
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPT-2 config: {key}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT-2 config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_transformers(cls, d: dict) -> "GPT2Config":
        """From a transformers ``GPT2Config`` dict (``config.json`` of ``GPT2Model`` / ``GPT2LMHeadModel``)."""
        if d.get("add_cross_attention", False):
            raise ValueError("GPT-2 config: add_cross_attention=true is not supported (AudioLDM 2 does not use it)")
        # transformers also accepts the generic names as aliases
        get = lambda key, alias, default: d.get(key, d.get(alias, default))
        return cls(
            vocab_size=d.get("vocab_size", 50257), n_positions=get("n_positions", "max_position_embeddings", 1024),
            n_embd=get("n_embd", "hidden_size", 768), n_layer=get("n_layer", "num_hidden_layers", 12),
            n_head=get("n_head", "num_attention_heads", 12), n_inner=d.get("n_inner"),
            activation_function=d.get("activation_function", "gelu_new"),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            scale_attn_weights=d.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=d.get("scale_attn_by_inverse_layer_idx", False),
            max_new_tokens=d.get("max_new_tokens") or 8)


class GPT2Attention(nn.Module):
    """Causal self-attention with a fused ``c_attn`` (q | k | v) and ``c_proj``.

    ``x: [B, Lq, D]``, ``mask: [B, 1, Lq, Lk]`` boolean (True = attend). With ``cache`` (``{"k", "v"}``, each
    ``[B, T, N, head_dim]``) the new keys/values are written at ``cache_index`` and the query attends over the whole
    cache (``Lk = T``); otherwise over ``x`` itself (``Lk = Lq``). Returns ``(out [B, Lq, D], cache)``.
    """

    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cache=None, cache_index=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * cfg.n_embd, ("embed", "heads"), name="c_attn", **kw)(x)

        def heads(t):
            t = t.reshape(t.shape[:2] + (cfg.n_head, cfg.head_dim))
            return constrain(t, ("act_batch", "act_length", "act_heads", None))

        q, k, v = (heads(t) for t in jnp.split(qkv, 3, axis=-1))
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
            cache = {"k": k, "v": v}
        scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= self.layer_idx + 1
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=scale)
        out = out.reshape(out.shape[:2] + (cfg.n_embd,))
        return dense(cfg.n_embd, ("heads", "embed"), name="c_proj", **kw)(out), cache


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = ACTIVATIONS[cfg.activation_function](dense(cfg.inner_dim, ("embed", "mlp"), name="c_fc", **kw)(x))
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        return dense(cfg.n_embd, ("mlp", "embed"), name="c_proj", **kw)(h)


class GPT2Block(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``. Returns ``(x, cache)``."""

    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cache=None, cache_index=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm(cfg.layer_norm_epsilon, name="ln_1", **kw)(x)
        h, cache = GPT2Attention(cfg, self.layer_idx, name="attn", **kw)(h, mask, cache, cache_index)
        x = x + h
        x = x + GPT2MLP(cfg, name="mlp", **kw)(layer_norm(cfg.layer_norm_epsilon, name="ln_2", **kw)(x))
        return constrain(x, ("act_batch", "act_length", "act_embed")), cache


class GPT2Model(nn.Module):
    """GPT-2 on input embeddings; hidden states are returned after ``ln_f``.

    ``__call__``: ``inputs_embeds [B, L, D]``, ``attention_mask [B, L]`` (1 = token, 0 = padding) -> ``[B, L, D]``,
    causal, positions ``0..L-1`` whatever the padding (as the reference, which derives positions from the cache
    length, not from the mask). ``input_ids [B, L]`` may replace ``inputs_embeds``.

    ``forward_with_cache``: one prefill or decode step of generation (see ``generate_loa``).
    """

    config: GPT2Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.wte = embed(cfg.vocab_size, cfg.n_embd, ("vocab", "embed"), **kw)
        self.wpe = embed(cfg.n_positions, cfg.n_embd, ("position", "embed"), **kw)
        self.h = [GPT2Block(cfg, i, **kw) for i in range(cfg.n_layer)]
        self.ln_f = layer_norm(cfg.layer_norm_epsilon, **kw)

    def _embed(self, inputs_embeds, input_ids, positions):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("GPT2Model: pass inputs_embeds or input_ids")
            inputs_embeds = self.wte(input_ids)
        elif self.is_initializing():
            # The token table is part of the checkpoint even though LOA generation never looks tokens up.
            _ = self.wte.embedding
        x = inputs_embeds.astype(self.dtype) + self.wpe(positions)
        return constrain(x, ("act_batch", "act_length", "act_embed"))

    def __call__(self, inputs_embeds=None, attention_mask=None, input_ids=None):
        length = (inputs_embeds if inputs_embeds is not None else input_ids).shape[1]
        positions = jnp.arange(length)
        x = self._embed(inputs_embeds, input_ids, positions[None])
        mask = (positions[None, :] <= positions[:, None])[None, None]  # causal [1, 1, L, L]
        if attention_mask is not None:
            mask = mask & (attention_mask[:, None, None, :] > 0)
        for block in self.h:
            x, _ = block(x, mask)
        return self.ln_f(x)

    def forward_with_cache(self, inputs_embeds, key_mask, start, cache: KVCache):
        """``inputs_embeds [B, Lq, D]`` at positions ``start .. start+Lq-1``; ``key_mask [B, T]`` bool over every
        cache slot (prompt mask, then True for generated steps); ``cache`` as from ``init_cache``.
        Returns ``(hidden [B, Lq, D] after ln_f, updated cache)``."""
        length, total = inputs_embeds.shape[1], key_mask.shape[1]
        positions = start + jnp.arange(length)
        x = self._embed(inputs_embeds, None, positions[None])
        causal = jnp.arange(total)[None, :] <= positions[:, None]  # [Lq, T]; also hides not-yet-written slots
        mask = causal[None, None] & key_mask[:, None, None, :]
        new_cache = []
        for block, layer_cache in zip(self.h, cache):
            x, layer_cache = block(x, mask, layer_cache, start)
            new_cache.append(layer_cache)
        return self.ln_f(x), tuple(new_cache)


def init_cache(config: GPT2Config, batch: int, length: int, dtype: Dtype = jnp.float32) -> KVCache:
    """Zeroed key/value cache: per layer ``{"k", "v"}`` of ``[B, length, N, head_dim]``."""
    shape = (batch, length, config.n_head, config.head_dim)
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.n_layer))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def generate_loa(model: GPT2Model, params, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None,
                 max_new_tokens: int = 8) -> jax.Array:
    """Greedy LOA generation: ``inputs_embeds [B, L, D]``, ``attention_mask [B, L]`` -> ``[B, max_new_tokens, D]``.

    Matches diffusers' ``AudioLDM2Pipeline.generate_language_model``: the final hidden state of the last position
    becomes the next input embedding; positions run on contiguously (``L, L+1, ...``) and padded prompt slots stay
    masked. One prefill over the prompt fills a key/value cache, then a ``lax.scan`` decodes one position per step,
    all inside one jit. ``params`` is the tree from ``load_gpt2`` (without the ``"params"`` collection key).
    """
    cfg = model.config
    batch, length, _ = inputs_embeds.shape
    if max_new_tokens < 1:
        raise ValueError(f"generate_loa: max_new_tokens={max_new_tokens} must be >= 1")
    # The last generated state is returned, never fed back: the model sees L + max_new_tokens - 1 positions.
    total = length + max_new_tokens - 1
    if total > cfg.n_positions:
        raise ValueError(f"generate_loa: prompt length {length} + max_new_tokens {max_new_tokens} - 1 = {total} "
                         f"exceeds n_positions={cfg.n_positions}")
    variables = {"params": params}
    if attention_mask is None:
        prompt_mask = jnp.ones((batch, length), bool)
    else:
        prompt_mask = attention_mask > 0
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new_tokens - 1), bool)], axis=1)
    cache = init_cache(cfg, batch, total, model.dtype)

    step = functools.partial(model.apply, variables, method=GPT2Model.forward_with_cache)
    hidden, cache = step(inputs_embeds, key_mask, 0, cache)
    first = hidden[:, -1]

    def decode(carry, index):
        cache, previous = carry
        hidden, cache = step(previous[:, None, :], key_mask, index, cache)
        return (cache, hidden[:, 0]), hidden[:, 0]

    _, rest = jax.lax.scan(decode, (cache, first), length + jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def gpt2_dummy_inputs(config: GPT2Config, batch: int = 1, length: int = 4) -> tuple[jax.Array, jax.Array]:
    """Inputs for ``init`` / ``eval_shape``: ``(inputs_embeds [B, L, D], attention_mask [B, L])``."""
    return jnp.zeros((batch, length, config.n_embd), jnp.float32), jnp.ones((batch, length), jnp.int32)
