"""The phoneme text encoder of VITS (transformers' ``VitsModel.text_encoder``), the second text stream of the
AudioLDM 2 speech checkpoints (``text_encoder_2``): 192-d, 6 layers, 2 heads, vocabulary 183.

phoneme ids [B, L] -> embedding * sqrt(C) -> masked -> N x [self-attention with windowed relative positions
(keys and values, |i - j| <= window), post-LN; conv feed-forward (kernel 3, masked inputs), post-LN] -> masked
-> last_hidden_state [B, L, C]   (what AudioLDM 2 feeds to its projection model)
                  -> project (1x1 conv) -> prior means / log-variances [B, L, flow_size] each (VITS' prior)

Only the text encoder of VITS is here; the flow, HiFi-GAN decoder, duration predictor and posterior encoder are
not used by AudioLDM 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.layers import conv, dense, embed, layer_norm, transformers_activation
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any

# AudioLDM 2's speech pipeline marks the end of the phoneme sequence with this id (the first pad position).
END_OF_PHONEMES_ID = 182


# transformers' ``VitsConfig`` defaults for the fields of the rest of VITS (the MMS-TTS shapes).
VITS_DEFAULTS: dict[str, Any] = dict(
    layerdrop=0.1, spectrogram_bins=513, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
    initializer_range=0.02, use_stochastic_duration_prediction=True, num_speakers=1, speaker_embedding_size=0,
    upsample_initial_channel=512, upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
    resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], leaky_relu_slope=0.1,
    depth_separable_channels=2, depth_separable_num_layers=3, duration_predictor_flow_bins=10,
    duration_predictor_tail_bound=5.0, duration_predictor_kernel_size=3, duration_predictor_dropout=0.5,
    duration_predictor_num_flows=4, duration_predictor_filter_channels=256, prior_encoder_num_flows=4,
    prior_encoder_num_wavenet_layers=4, posterior_encoder_num_wavenet_layers=16, wavenet_kernel_size=5,
    wavenet_dilation_rate=1, wavenet_dropout=0.0, speaking_rate=1.0, noise_scale=0.667, noise_scale_duration=0.8,
    sampling_rate=16000, pad_token_id=None)


@dataclasses.dataclass(frozen=True)
class VitsTextConfig:
    """Text-encoder fields of transformers' ``VitsConfig`` (defaults are its defaults)."""

    vocab_size: int = 38
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 2
    window_size: int | None = 4
    use_bias: bool = True
    ffn_dim: int = 768
    ffn_kernel_size: int = 3
    flow_size: int = 192
    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        transformers_activation(self.hidden_act, "hidden_act")
        if self.window_size is not None and self.window_size < 1:
            # The reference allocates no relative tables for 0 but still indexes them: it cannot run.
            raise ValueError(f"window_size={self.window_size}: expected a positive int or null")
        if self.ffn_kernel_size < 1:
            raise ValueError(f"ffn_kernel_size={self.ffn_kernel_size}: expected a positive int")

    @classmethod
    def from_transformers(cls, d: Mapping) -> "VitsTextConfig":
        """From a transformers ``VitsModel`` ``config.json`` dict."""
        if d.get("model_type", "vits") != "vits":
            raise ValueError(f"model_type={d.get('model_type')!r}: expected 'vits'")
        kw = {}
        for name, field in cls.__dataclass_fields__.items():
            value = d.get(name, field.default)
            if name == "window_size" and value is None:
                kw[name] = None
                continue
            want = type(field.default)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"{name}={value!r}: expected {want.__name__}")
            kw[name] = value
        return cls(**kw)

    def to_transformers(self) -> dict:
        """A complete ``VitsModel`` ``config.json`` whose text encoder is this one (the inverse of
        :meth:`from_transformers`): these fields, and transformers' defaults (``VITS_DEFAULTS``) for the parts of
        VITS kept outside this model (flow, HiFi-GAN decoder, duration predictor, posterior encoder)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return dict(architectures=["VitsModel"], model_type="vits", **fields, **VITS_DEFAULTS, dtype="float32")


class VitsTextEncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, L, C], zero at padded positions
    prior_means: jax.Array  # [B, L, flow_size]
    prior_log_variances: jax.Array  # [B, L, flow_size]


def relative_one_hot(length: int, window: int) -> np.ndarray:
    """``[L, L, 2w+1]``: entry (i, j, r) is 1 where key j sits at offset ``r - w = j - i`` from query i, within the
    window; offsets beyond it have no embedding (the reference pads its table with zeros there)."""
    offset = np.arange(length)[None, :] - np.arange(length)[:, None] + window
    return (offset[:, :, None] == np.arange(2 * window + 1)[None, None, :]).astype(np.float32)


class VitsAttention(nn.Module):
    """Multi-head self-attention with relative position embeddings on keys (``emb_rel_k``) and values
    (``emb_rel_v``), shared by the heads. ``x [B, L, C]``, ``bias [B, 1, 1, L]`` additive -> ``[B, L, C]``.

    Scores and probabilities are formed explicitly rather than through ``dot_product_attention``: the value-side
    relative term needs the probability matrix itself.
    """

    config: VitsTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias):
        c = self.config
        b, length, width = x.shape
        heads = c.num_attention_heads
        head_dim = width // heads
        scaling = head_dim ** -0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=c.use_bias)
        axes = ("act_batch", "act_length", "act_heads", None)
        split = lambda t: constrain(t.reshape(b, length, heads, head_dim), axes)
        q = split(dense(width, ("embed", "heads"), name="q_proj", **kw)(x) * scaling)
        k = split(dense(width, ("embed", "heads"), name="k_proj", **kw)(x))
        v = split(dense(width, ("embed", "heads"), name="v_proj", **kw)(x))
        scores = jnp.einsum("bind,bjnd->bnij", q, k, preferred_element_type=jnp.float32)
        if c.window_size:
            span = 2 * c.window_size + 1
            init = nn.initializers.normal(head_dim ** -0.5)
            rel_k = self.param("emb_rel_k", with_axes(init, (None, "position", None)), (1, span, head_dim),
                               self.param_dtype)
            rel_v = self.param("emb_rel_v", with_axes(init, (None, "position", None)), (1, span, head_dim),
                               self.param_dtype)
            onehot = jnp.asarray(relative_one_hot(length, c.window_size))
            rel_logits = jnp.einsum("bind,rd->bnir", q, rel_k[0].astype(q.dtype), preferred_element_type=jnp.float32)
            scores = scores + jnp.einsum("bnir,ijr->bnij", rel_logits, onehot)
        probs = jax.nn.softmax(scores + bias, axis=-1)
        out = jnp.einsum("bnij,bjnd->bind", probs.astype(v.dtype), v)
        if c.window_size:
            rel_probs = jnp.einsum("bnij,ijr->bnir", probs, onehot)
            out = out + jnp.einsum("bnir,rd->bind", rel_probs.astype(v.dtype), rel_v[0].astype(v.dtype))
        out = out.reshape(b, length, width)
        return dense(width, ("heads", "embed"), name="out_proj", **kw)(out)


class VitsFeedForward(nn.Module):
    """``conv_1`` (kernel k, C -> ffn) -> act -> ``conv_2`` (k, ffn -> C); inputs of each conv and the output are
    masked. Padding ``(k-1)//2`` left, ``k//2`` right. ``x [B, L, C]``, ``mask [B, L, 1]``."""

    config: VitsTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = self.config
        k = c.ffn_kernel_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, ndim=1, padding=(((k - 1) // 2, k // 2),))
        h = conv(c.ffn_dim, k, name="conv_1", **kw)(x * mask)
        h = constrain(transformers_activation(c.hidden_act)(h), ("act_batch", "act_length", "act_mlp"))
        h = conv(c.hidden_size, k, name="conv_2", **kw)(h * mask)
        return h * mask


class VitsEncoderLayer(nn.Module):
    config: VitsTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, bias):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layer_norm(c.layer_norm_eps, name="layer_norm", **kw)(x + VitsAttention(c, name="attention", **kw)(x, bias))
        x = layer_norm(c.layer_norm_eps, name="final_layer_norm", **kw)(
            x + VitsFeedForward(c, name="feed_forward", **kw)(x, mask))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class VitsEncoder(nn.Module):
    config: VitsTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, bias):
        x = x * mask
        for i in range(self.config.num_hidden_layers):
            x = VitsEncoderLayer(self.config, name=f"layers_{i}", dtype=self.dtype, param_dtype=self.param_dtype)(
                x, mask, bias)
        return x * mask


class VitsTextEncoder(nn.Module):
    """``input_ids [B, L]``, ``attention_mask [B, L]`` (1 = phoneme; also the padding mask) ->
    ``VitsTextEncoderOutput``. Valid positions do not depend on what sits at padded ones."""

    config: VitsTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None) -> VitsTextEncoderOutput:
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        input_ids = constrain(input_ids, ("act_batch", "act_length"))
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        mask = attention_mask.astype(self.dtype)[:, :, None]
        # Padded keys get the most negative finite score, as the reference's additive mask does.
        bias = jnp.where(attention_mask[:, None, None, :] != 0, 0.0, jnp.finfo(jnp.float32).min)
        x = embed(c.vocab_size, c.hidden_size, name="embed_tokens", **kw)(input_ids) * math.sqrt(c.hidden_size)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        x = VitsEncoder(c, name="encoder", **kw)(x, mask, bias)
        stats = conv(2 * c.flow_size, 1, padding=0, ndim=1, name="project", **kw)(x) * mask
        return VitsTextEncoderOutput(x, stats[..., :c.flow_size], stats[..., c.flow_size:])


def mark_end_of_phonemes(input_ids: np.ndarray, attention_mask: np.ndarray, end_id: int = END_OF_PHONEMES_ID,
                         pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What AudioLDM 2's pipeline does to VITS tokenizer output before encoding: the first ``pad_id`` of each row
    becomes ``end_id`` and joins the attention mask (rows without padding are unchanged). ``[B, L]`` each."""
    ids, mask = np.array(input_ids, copy=True), np.array(attention_mask, copy=True)
    for row in range(ids.shape[0]):
        hits = np.flatnonzero(ids[row] == pad_id)
        if hits.size:
            ids[row, hits[0]] = end_id
            mask[row, hits[0]] = 1
    return ids, mask
