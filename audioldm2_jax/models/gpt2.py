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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import (REMAT_POLICIES, dense, dot_product_attention, embed, layer_norm, remat_block,
                                         transformers_activation)
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
KVCache = tuple[dict[str, jax.Array], ...]  # one {"k", "v"} per layer, each [B, T, N, head_dim]

@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters; the defaults are transformers' ``GPT2Config`` defaults (GPT-2 small).

    ``add_cross_attention`` and ``reorder_and_upcast_attn`` do not change what this model computes: cross-attention
    layers only run on ``encoder_hidden_states``, which AudioLDM 2 never passes (their weights are skipped on
    loading), and the reordered, upcast attention is the same product in float32 (transformers runs it only in its
    eager attention; here the logits and softmax are float32 whatever the compute dtype).
    """

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
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    max_new_tokens: int = 8  # the pipeline's default generation length, stored in the checkpoint config
    # What the backward pass keeps of each transformer block (a name of layers.REMAT_POLICIES): a training choice,
    # not part of the network, so it is neither written to nor read from a transformers config.json.
    remat: str = "none"

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"GPT-2 config: remat={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        transformers_activation(self.activation_function, "GPT-2 config: activation_function")
        for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "max_new_tokens"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPT-2 config: {key}={value!r} must be a positive integer")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ValueError(f"GPT-2 config: n_inner={self.n_inner!r} must be a positive integer or null (4 n_embd)")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT-2 config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @classmethod
    def from_transformers(cls, d: dict) -> "GPT2Config":
        """From a transformers ``GPT2Config`` dict (``config.json`` of ``GPT2Model``, ``GPT2LMHeadModel`` or a
        GPT-2 class with another head). Missing keys take transformers' defaults; the generic names of its
        ``attribute_map`` (``hidden_size``, ``max_position_embeddings``, ``num_attention_heads``,
        ``num_hidden_layers``) stand for GPT-2's own."""
        defaults = cls()
        aliases = {"n_embd": "hidden_size", "n_positions": "max_position_embeddings", "n_head": "num_attention_heads",
                   "n_layer": "num_hidden_layers"}

        def get(key):
            if key in d:
                return d[key]
            return d[aliases[key]] if aliases.get(key) in d else getattr(defaults, key)

        kw = {key: get(key) for key in cls.__dataclass_fields__ if key not in _NOT_TRANSFORMERS_KEYS}
        if isinstance(kw["layer_norm_epsilon"], int) and not isinstance(kw["layer_norm_epsilon"], bool):
            kw["layer_norm_epsilon"] = float(kw["layer_norm_epsilon"])
        return cls(**kw, max_new_tokens=d.get("max_new_tokens") or defaults.max_new_tokens)

    def to_transformers(self) -> dict:
        """The ``config.json`` of the ``GPT2LMHeadModel`` (the class diffusers' ``AudioLDM2Pipeline`` loads as
        ``language_model``) with exactly this model, as its ``save_pretrained`` writes it: every field here, the
        output head tied to ``wte``, ``max_new_tokens`` (read by the pipeline), and transformers' defaults for
        dropout and initialisation. The inverse of :meth:`from_transformers`."""
        fields = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "remat"}
        return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", **fields, tie_word_embeddings=True,
                    resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, initializer_range=0.02, use_cache=True,
                    dtype="float32")


# Fields that transformers' GPT2Config does not have: the pipeline's generation length (read separately, from the
# generation settings the checkpoint config carries) and the training-only remat policy (never read).
_NOT_TRANSFORMERS_KEYS = ("max_new_tokens", "remat")


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
        # A query with no key to attend to (left padding before the first token) gets a zero attention output, as
        # in the reference's (torch SDPA) attention; only c_proj's bias reaches the residual stream there.
        if mask is not None:
            attends = jnp.any(mask, axis=-1)  # [B, 1, Lq]
            out = jnp.where(jnp.transpose(attends, (0, 2, 1))[..., None], out, 0.0).astype(out.dtype)
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
        act = transformers_activation(cfg.activation_function)
        h = act(dense(cfg.inner_dim, ("embed", "mlp"), name="c_fc", **kw)(x))
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
    length, not from the mask). ``input_ids [B, L]`` may replace ``inputs_embeds``; ``token_type_ids [B, L]`` add
    their rows of the token table, as in the reference.

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
        block = remat_block(GPT2Block, cfg.remat)
        self.h = [block(cfg, i, **kw) for i in range(cfg.n_layer)]
        self.ln_f = layer_norm(cfg.layer_norm_epsilon, **kw)

    def _embed(self, inputs_embeds, input_ids, positions, token_type_ids=None):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("GPT2Model: pass inputs_embeds or input_ids")
            inputs_embeds = self.wte(input_ids)
        elif self.is_initializing():
            # The token table is part of the checkpoint even though LOA generation never looks tokens up.
            _ = self.wte.embedding
        x = inputs_embeds.astype(self.dtype) + self.wpe(positions)
        if token_type_ids is not None:  # GPT-2 has no type table: types are looked up in the token table
            x = x + self.wte(token_type_ids)
        return constrain(x, ("act_batch", "act_length", "act_embed"))

    def __call__(self, inputs_embeds=None, attention_mask=None, input_ids=None, token_type_ids=None):
        length = (inputs_embeds if inputs_embeds is not None else input_ids).shape[1]
        positions = jnp.arange(length)
        x = self._embed(inputs_embeds, input_ids, positions[None], token_type_ids)
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
    all inside one jit. ``params`` is the bare tree ``components.load("gpt2", folder)`` returns (without the
    ``"params"`` collection key).
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
