"""CLAP (transformers' ``ClapModel``): the RoBERTa text branch that conditions AudioLDM 2, and the HTSAT (Swin
transformer) audio branch used to rank generated waveforms against their prompt.

Text:  input_ids [B, L] -> RoBERTa encoder -> pooler (dense + tanh on token 0) -> projection (Linear, ReLU,
       Linear) -> L2 normalise -> [B, P]
Audio: log-mel views [B, V, T, F] (``audio.clap_features``) -> BatchNorm over mel bins -> time stretched to the Swin
       input and folded into a square image, one channel per view -> patch embedding -> Swin stages (window
       attention with relative position bias, shifted windows, patch merging) -> LayerNorm -> mean over all tokens
       -> projection -> L2 normalise

Both audio variants exist: unfused (laion/clap-htsat-unfused, AudioLDM 2's: the views are the patch convolution's
input channels, 1 for a ``rand_trunc`` extractor) and fused (``enable_fusion``, laion/clap-htsat-fused: view 0 is
the whole clip, views 1-3 local crops merged into the patches of clips flagged ``is_longer`` by an attentional
feature fusion block).

Submodule names follow the PyTorch state dict (``text_model/encoder/layer_3/attention/self/query``), so the
checkpoint conversion in ``convert/clap.py`` is a mechanical renaming.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.layers import conv, dense, dot_product_attention, embed, layer_norm
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any

_tanh_gelu = functools.partial(nn.gelu, approximate=True)  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

# transformers' ACT2FN names (the parameter-free ones; a learned PReLU / xIELU has weights this model never maps).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),  # transformers' "gelu" is the exact erf form
    "gelu_python": functools.partial(nn.gelu, approximate=False),
    "gelu_new": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_python_tanh": _tanh_gelu,
    "gelu_accurate": _tanh_gelu,
    "gelu_fast": _tanh_gelu,  # the same formula, its constant written out
    "gelu_10": lambda x: jnp.clip(nn.gelu(x, approximate=False), -10, 10),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "laplace": lambda x: 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "hardswish": jax.nn.hard_swish,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "linear": lambda x: x,
    "relu": nn.relu,
    "relu2": lambda x: jnp.square(nn.relu(x)),
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "silu": nn.silu,
    "swish": nn.silu,
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
}


def _activation(name: str, key: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{key}={name!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    return name


def _pair(value, key: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{key}={value!r}: expected an int or a pair of ints")


def _get(d: Mapping, key: str, default, kind, prefix: str):
    value = d.get(key, default)
    if value is None and default is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{prefix}{key}={value!r}: expected {kind.__name__}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def _projection_overrides(kw: dict, projection_dim: int | None, projection_hidden_act: str | None) -> dict:
    """A sub-config's keyword arguments with ClapConfig's own projection settings, where given, in place of the
    sub-config's (as transformers does)."""
    if projection_dim is not None:
        kw["projection_dim"] = projection_dim
    if projection_hidden_act is not None:
        kw["projection_hidden_act"] = projection_hidden_act
    return kw


@dataclasses.dataclass(frozen=True)
class ClapTextConfig:
    """RoBERTa text tower; defaults are transformers' ``ClapTextConfig`` defaults (RoBERTa-base shapes; the published
    checkpoint's config.json sets ``layer_norm_eps`` 1e-5)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    projection_dim: int = 512
    projection_hidden_act: str = "relu"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"text_config.hidden_size={self.hidden_size} is not a multiple of "
                             f"text_config.num_attention_heads={self.num_attention_heads}")
        _activation(self.hidden_act, "text_config.hidden_act")
        _activation(self.projection_hidden_act, "text_config.projection_hidden_act")

    @classmethod
    def from_transformers(cls, d: Mapping, projection_dim: int | None = None,
                          projection_hidden_act: str | None = None) -> "ClapTextConfig":
        p = "text_config."
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{p}position_embedding_type={d['position_embedding_type']!r}: only 'absolute' "
                             "(RoBERTa) positions are supported")
        if d.get("pad_token_id", 1) is None:
            raise ValueError(f"{p}pad_token_id is null: RoBERTa positions are counted from the padding index")
        f = cls.__dataclass_fields__
        kw = {name: _get(d, name, f[name].default, type(f[name].default), p) for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
            "projection_dim", "projection_hidden_act")}
        return cls(**_projection_overrides(kw, projection_dim, projection_hidden_act))

    def to_transformers(self) -> dict:
        """The ``text_config`` of a saved ``ClapModel`` (the inverse of :meth:`from_transformers`; RoBERTa's special
        token ids and the dropouts at transformers' defaults)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return dict(model_type="clap_text_model", **fields, bos_token_id=0, eos_token_id=2,
                    position_embedding_type="absolute", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@dataclasses.dataclass(frozen=True)
class ClapAudioConfig:
    """HTSAT audio tower; defaults are transformers' ``ClapAudioConfig`` defaults.

    Construction refuses only what transformers refuses when it builds the model (a stage width that its head count
    does not divide, ...). Configs it builds but whose audio tower it cannot run (a Swin window larger than a stage's
    token grid, a grid the patch merging cannot halve, ...) load here too, so that the text tower works; running the
    audio tower on them raises with the reasons (:meth:`audio_problems`).
    """

    num_mel_bins: int = 64
    spec_size: int = 256
    window_size: int = 8
    patch_size: tuple[int, int] = (4, 4)
    patch_stride: tuple[int, int] = (4, 4)
    patch_embeds_hidden_size: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    enable_patch_layer_norm: bool = True
    hidden_size: int = 768
    projection_dim: int = 512
    projection_hidden_act: str = "relu"
    # Feature fusion (laion/clap-htsat-fused): the patch embedding also sees 3 local mel crops of clips flagged
    # ``is_longer`` (an extra strided convolution and an attentional feature fusion block).
    enable_fusion: bool = False
    fusion_type: str | None = None
    aff_block_r: int = 4
    # Input channels of the patch convolution: the mel views stacked as image channels (4 for a ``fusion`` feature
    # extractor paired with an unfused model, as in diffusers' tests).
    patch_embed_input_channels: int = 1
    flatten_patch_embeds: bool = True

    def __post_init__(self):
        p = "audio_config."
        for name in ("num_mel_bins", "spec_size", "window_size", "patch_embeds_hidden_size", "hidden_size",
                     "projection_dim", "patch_embed_input_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{p}{name}={getattr(self, name)} must be positive")
        if any(v <= 0 for v in self.patch_size + self.patch_stride):
            raise ValueError(f"{p}patch_size {self.patch_size} / patch_stride {self.patch_stride} must be positive")
        if not self.depths or any(d < 0 for d in self.depths):
            raise ValueError(f"{p}depths={self.depths}: expected a non-empty list of ints >= 0")
        if len(self.num_attention_heads) < len(self.depths) or any(h <= 0 for h in self.num_attention_heads):
            raise ValueError(f"{p}num_attention_heads {self.num_attention_heads} needs a positive head count for "
                             f"each of the {len(self.depths)} stages of {p}depths {self.depths}")
        for i, (depth, dim) in enumerate(zip(self.depths, self.stage_dims)):
            heads = self.num_attention_heads[i]
            if depth and dim % heads:  # transformers raises this when it builds the attention layers
                raise ValueError(f"{p}num_attention_heads[{i}]={heads} does not divide stage width {dim}")
        if self.enable_fusion and self.aff_block_r <= 0:
            raise ValueError(f"{p}aff_block_r={self.aff_block_r} must be positive (the fusion block's channel "
                             "reduction)")
        _activation(self.hidden_act, f"{p}hidden_act")
        _activation(self.projection_hidden_act, f"{p}projection_hidden_act")

    @property
    def freq_ratio(self) -> int:
        """Time chunks stacked along frequency to make the square image: ``spec_size // num_mel_bins``."""
        return self.spec_size // self.num_mel_bins

    @property
    def spec_width(self) -> int:
        """Frames the mel is stretched to: ``spec_size * freq_ratio``."""
        return self.spec_size * self.freq_ratio

    @property
    def spec_height(self) -> int:
        """Mel bins after the (rare) frequency stretch: ``spec_size // freq_ratio`` (= num_mel_bins when
        spec_size is a multiple of it)."""
        return self.spec_size // self.freq_ratio if self.freq_ratio else 0

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.spec_size // self.patch_stride[0], self.spec_size // self.patch_stride[1])

    @property
    def stage_resolutions(self) -> list[tuple[int, int]]:
        """Token grid each stage's blocks see (the reference's ``grid // 2**i``)."""
        g = self.grid_size
        return [(g[0] // 2 ** i, g[1] // 2 ** i) for i in range(len(self.depths))]

    @property
    def stage_dims(self) -> list[int]:
        return [self.patch_embeds_hidden_size * 2 ** i for i in range(len(self.depths))]

    @property
    def patch_padding(self) -> tuple[int, int]:
        """The patch convolutions' padding, ``(size - stride) // 2`` per axis (as the reference computes it)."""
        return tuple((k - s) // 2 for k, s in zip(self.patch_size, self.patch_stride))

    @property
    def proj_in_channels(self) -> int:
        """Input channels of ``patch_embed.proj`` (4x for the fused ``channel_map`` variant)."""
        scale = 4 if self.enable_fusion and self.fusion_type == "channel_map" else 1
        return self.patch_embed_input_channels * scale

    def audio_problems(self) -> list[str]:
        """Why transformers' audio tower cannot run on any input with this config ([] when it can); each reason is
        where the reference fails."""
        out = []
        s, r = self.spec_size, self.freq_ratio
        if r == 0:
            return [f"spec_size={s} < num_mel_bins={self.num_mel_bins}: the mel cannot be folded into the square "
                    "image (the reference divides by spec_size // num_mel_bins = 0)"]
        if self.spec_height * r != s:
            out.append(f"spec_size={s} is not a multiple of freq_ratio={r} (= spec_size // num_mel_bins): the folded "
                       f"image is {self.spec_height * r} rows, not {s}")
        pad = self.patch_padding
        if min(pad) < 0:
            out.append(f"patch_size {self.patch_size} < patch_stride {self.patch_stride}: negative convolution "
                       "padding")
        else:
            conv = tuple((s + 2 * q - k) // t + 1 for q, k, t in zip(pad, self.patch_size, self.patch_stride))
            if conv != self.grid_size:
                out.append(f"patch_size {self.patch_size} / patch_stride {self.patch_stride} give a {conv[0]}x"
                           f"{conv[1]} patch grid, not the {self.grid_size[0]}x{self.grid_size[1]} the stages "
                           "expect (size - stride must be even)")
        if not self.flatten_patch_embeds:
            out.append("flatten_patch_embeds=false: the reference's encoder needs flattened patch tokens")
        if self.enable_fusion and self.proj_in_channels != 1:
            out.append(f"enable_fusion with fusion_type={self.fusion_type!r} and patch_embed_input_channels="
                       f"{self.patch_embed_input_channels}: the patch convolution takes {self.proj_in_channels} "
                       "channels but fusion feeds it the single global mel")
        if self.enable_fusion and s + 2 * max(pad[1], 0) < 3 * self.patch_size[1]:
            out.append(f"spec_size={s} is narrower than the fusion convolution's kernel 3 x {self.patch_size[1]}")
        grid = self.grid_size
        for i, (want, depth) in enumerate(zip(self.stage_resolutions, self.depths)):
            if grid != want:
                out.append(f"stage {i} receives a {grid[0]}x{grid[1]} token grid from patch merging but expects "
                           f"{want[0]}x{want[1]} (the patch grid {self.grid_size} must be divisible by "
                           f"2**(len(depths)-1) = {2 ** (len(self.depths) - 1)})")
                break
            if depth and min(want) < self.window_size:
                out.append(f"window_size={self.window_size} exceeds stage {i}'s {want[0]}x{want[1]} token grid: the "
                           "reference shrinks that stage's windows to the grid but keeps the relative position bias "
                           f"of a {self.window_size}x{self.window_size} window, whose shapes do not match")
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        final = self.stage_resolutions[-1][0]
        if final // r == 0 or final % (final // r):
            out.append(f"the final {final}-row token grid cannot be split into freq_ratio={r} frequency groups (the "
                       "reference's pooling reshape)")
        return out

    @classmethod
    def from_transformers(cls, d: Mapping, projection_dim: int | None = None,
                          projection_hidden_act: str | None = None) -> "ClapAudioConfig":
        p = "audio_config."
        f = cls.__dataclass_fields__
        kw = {name: _get(d, name, f[name].default, type(f[name].default), p) for name in (
            "num_mel_bins", "spec_size", "window_size", "patch_embeds_hidden_size", "mlp_ratio", "qkv_bias",
            "hidden_act", "layer_norm_eps", "enable_patch_layer_norm", "hidden_size", "projection_dim",
            "projection_hidden_act", "enable_fusion", "aff_block_r", "patch_embed_input_channels",
            "flatten_patch_embeds")}
        fusion_type = d.get("fusion_type")
        if fusion_type is not None and not isinstance(fusion_type, str):
            raise ValueError(f"{p}fusion_type={fusion_type!r}: expected a string or null")
        kw["fusion_type"] = fusion_type
        kw["patch_size"] = _pair(d.get("patch_size", 4), f"{p}patch_size")
        kw["patch_stride"] = _pair(d.get("patch_stride", (4, 4)), f"{p}patch_stride")
        for name in ("depths", "num_attention_heads"):
            value = d.get(name, f[name].default)
            if not isinstance(value, (list, tuple)) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise ValueError(f"{p}{name}={value!r}: expected a non-empty list of ints")
            kw[name] = tuple(int(v) for v in value)
        return cls(**_projection_overrides(kw, projection_dim, projection_hidden_act))

    def to_transformers(self) -> dict:
        """The ``audio_config`` of a saved ``ClapModel`` (the inverse of :meth:`from_transformers`; pairs are written
        as one int where both sides agree, as transformers' own configs do)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("patch_size", "patch_stride"):
            pair = fields[name]
            fields[name] = pair[0] if pair[0] == pair[1] else list(pair)
        fields["depths"], fields["num_attention_heads"] = list(self.depths), list(self.num_attention_heads)
        return dict(model_type="clap_audio_model", **fields, num_hidden_layers=len(self.depths),
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, drop_path_rate=0.0)


@dataclasses.dataclass(frozen=True)
class ClapConfig:
    """Both towers and the joint space (``projection_dim``; the logit scales are learned parameters)."""

    text: ClapTextConfig = ClapTextConfig()
    audio: ClapAudioConfig = ClapAudioConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 1 / 0.07

    @classmethod
    def from_transformers(cls, d: Mapping) -> "ClapConfig":
        """From a transformers ``ClapModel`` ``config.json`` dict (``text_config`` / ``audio_config`` inside)."""
        if d.get("model_type", "clap") != "clap":
            raise ValueError(f"model_type={d.get('model_type')!r}: expected 'clap'")
        projection_dim = _get(d, "projection_dim", 512, int, "")
        act = _activation(_get(d, "projection_hidden_act", "relu", str, ""), "projection_hidden_act")
        text, audio = d.get("text_config") or {}, d.get("audio_config") or {}
        if not isinstance(text, Mapping) or not isinstance(audio, Mapping):
            raise ValueError("text_config / audio_config must be JSON objects")
        return cls(text=ClapTextConfig.from_transformers(text, projection_dim, act),
                   audio=ClapAudioConfig.from_transformers(audio, projection_dim, act),
                   projection_dim=projection_dim,
                   logit_scale_init_value=_get(d, "logit_scale_init_value", 1 / 0.07, float, ""))

    def to_transformers(self) -> dict:
        """The ``config.json`` ``ClapModel.save_pretrained`` writes for this model (the inverse of
        :meth:`from_transformers`). transformers keeps one projection setting for both towers, at the top level, so a
        config whose towers disagree with it has no ``config.json`` and raises ``ValueError``."""
        dims = {self.projection_dim, self.text.projection_dim, self.audio.projection_dim}
        acts = {self.text.projection_hidden_act, self.audio.projection_hidden_act}
        if len(dims) != 1 or len(acts) != 1:
            raise ValueError(f"CLAP config: projection_dim {self.projection_dim} (text {self.text.projection_dim}, "
                             f"audio {self.audio.projection_dim}) and projection_hidden_act (text "
                             f"{self.text.projection_hidden_act!r}, audio {self.audio.projection_hidden_act!r}) must "
                             "agree: transformers stores one value for both towers")
        return dict(architectures=["ClapModel"], model_type="clap", text_config=self.text.to_transformers(),
                    audio_config=self.audio.to_transformers(), projection_dim=self.projection_dim,
                    projection_hidden_act=self.text.projection_hidden_act,
                    logit_scale_init_value=self.logit_scale_init_value, initializer_factor=1.0, dtype="float32")


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize``: ``x / max(||x||, eps)`` over the last axis."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return (x / jnp.maximum(norm, eps)).astype(x.dtype)


class ClapProjection(nn.Module):
    """``linear1 -> act -> linear2`` into the joint text-audio space: ``[B, C] -> [B, P]`` (not normalised)."""

    projection_dim: int
    act: str = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.projection_dim, ("embed", "mlp"), name="linear1", **kw)(x)
        x = ACTIVATIONS[self.act](x)
        return dense(self.projection_dim, ("mlp", "embed"), name="linear2", **kw)(x)


# ----------------------------------------------------------------------------------------------------------------
# Text branch (RoBERTa)
# ----------------------------------------------------------------------------------------------------------------


def roberta_position_ids(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """Positions count the non-pad tokens from ``padding_idx + 1``; pad tokens sit at ``padding_idx``."""
    not_pad = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + padding_idx


class ClapTextEmbeddings(nn.Module):
    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        words = embed(c.vocab_size, c.hidden_size, name="word_embeddings", **kw)(input_ids)
        positions = embed(c.max_position_embeddings, c.hidden_size, ("position", "embed"),
                          name="position_embeddings", **kw)(roberta_position_ids(input_ids, c.pad_token_id))
        # Token types are always 0 here (the reference's all-zero buffer): add row 0 of the table.
        token_type = embed(c.type_vocab_size, c.hidden_size, (None, "embed"), name="token_type_embeddings",
                           **kw)(jnp.zeros_like(input_ids))
        x = words + token_type + positions
        return layer_norm(c.layer_norm_eps, name="LayerNorm", **kw)(x)


class ClapTextSelfAttention(nn.Module):
    """``query`` / ``key`` / ``value`` projections and scaled dot-product attention (no output projection)."""

    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = self.config
        heads, head_dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        split = lambda t: constrain(t.reshape(t.shape[:2] + (heads, head_dim)),
                                    ("act_batch", "act_length", "act_heads", None))
        q = split(dense(c.hidden_size, ("embed", "heads"), name="query", **kw)(x))
        k = split(dense(c.hidden_size, ("embed", "heads"), name="key", **kw)(x))
        v = split(dense(c.hidden_size, ("embed", "heads"), name="value", **kw)(x))
        out = dot_product_attention(q, k, v, mask=mask, scale=1.0 / math.sqrt(head_dim))
        return out.reshape(out.shape[:2] + (c.hidden_size,))



class ClapDenseResidualNorm(nn.Module):
    """``dense`` then ``LayerNorm(h + residual)``: BERT's ``attention.output`` and ``output`` sub-blocks."""

    features: int
    in_axis: str
    eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, residual):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.features, (self.in_axis, "embed"), name="dense", **kw)(x)
        return layer_norm(self.eps, name="LayerNorm", **kw)(h + residual)


class ClapTextAttention(nn.Module):
    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = ClapTextSelfAttention(c, name="self", **kw)(x, mask)
        return ClapDenseResidualNorm(c.hidden_size, "heads", c.layer_norm_eps, name="output", **kw)(h, x)


class ClapTextIntermediate(nn.Module):
    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = dense(c.intermediate_size, ("embed", "mlp"), name="dense", dtype=self.dtype,
                  param_dtype=self.param_dtype)(x)
        return constrain(ACTIVATIONS[c.hidden_act](h), ("act_batch", "act_length", "act_mlp"))


class ClapTextLayer(nn.Module):
    """Post-LN BERT layer: ``h = LN(x + attn(x))``, ``out = LN(h + W2 act(W1 h))``. ``[B, L, C] -> [B, L, C]``."""

    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = ClapTextAttention(c, name="attention", **kw)(x, mask)
        inner = ClapTextIntermediate(c, name="intermediate", **kw)(h)
        out = ClapDenseResidualNorm(c.hidden_size, "mlp", c.layer_norm_eps, name="output", **kw)(inner, h)
        return constrain(out, ("act_batch", "act_length", "act_embed"))


class ClapTextEncoder(nn.Module):
    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.config.num_hidden_layers):
            x = ClapTextLayer(self.config, name=f"layer_{i}", dtype=self.dtype, param_dtype=self.param_dtype)(x, mask)
        return x


class ClapTextPooler(nn.Module):
    """BERT pooler: ``tanh(dense(h[:, 0]))``, ``[B, C] -> [B, C]``."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, first_token):
        h = dense(self.features, ("embed", "mlp"), name="dense", dtype=self.dtype, param_dtype=self.param_dtype)
        return jnp.tanh(h(first_token))


class ClapTextModel(nn.Module):
    """RoBERTa with BERT's pooler. ``input_ids [B, L]``, ``attention_mask [B, L]`` (1 = token) ->
    ``(last_hidden_state [B, L, C], pooled [B, C])`` where ``pooled = tanh(dense(h[:, 0]))``."""

    config: ClapTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        input_ids = constrain(input_ids, ("act_batch", "act_length"))
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        # Padded keys are dropped for every query; a boolean mask [B, 1, 1, L] broadcasts over heads and queries.
        mask = (attention_mask != 0)[:, None, None, :]
        x = ClapTextEmbeddings(c, name="embeddings", **kw)(input_ids)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        x = ClapTextEncoder(c, name="encoder", **kw)(x, mask)
        pooled = ClapTextPooler(c.hidden_size, name="pooler", **kw)(x[:, 0])
        return x, pooled


# ----------------------------------------------------------------------------------------------------------------
# Audio branch (HTSAT: a Swin transformer on the folded log-mel spectrogram)
# ----------------------------------------------------------------------------------------------------------------


def bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``[n_out, 4]`` and weights ``[n_out, 4]`` of torch's bicubic resize (``align_corners=True``,
    A = -0.75, borders clamped), computed in float32 as torch does on CPU."""
    a = np.float32(-0.75)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    base = np.floor(src)
    t = (src - base).astype(np.float32)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    one = np.float32(1)
    weights = np.stack([far(t + one), near(t), near(one - t), far(2 * one - t)], axis=1).astype(np.float32)
    index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1).astype(np.int32)
    return index, weights


def resize_bicubic_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Bicubic resampling of one axis to ``size`` samples, as ``F.interpolate(mode="bicubic", align_corners=True)``
    does along that axis (the 2D kernel is separable, so resizing one axis at a time gives the same result)."""
    n_in = x.shape[axis]
    if n_in == size:
        return x  # align_corners with equal sizes samples every source point exactly
    index, weights = bicubic_taps(n_in, size)
    x = jnp.moveaxis(x, axis, -1)
    gathered = x[..., jnp.asarray(index)]  # [..., size, 4]
    out = jnp.sum(gathered * jnp.asarray(weights, x.dtype), axis=-1)
    return jnp.moveaxis(out, -1, axis)


class FrozenBatchNorm(nn.Module):
    """Inference-mode ``BatchNorm`` on the last axis with the running statistics stored as (frozen) parameters."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n = x.shape[-1]
        p = lambda name, init: self.param(name, with_axes(init, ("norm",)), (n,), self.param_dtype)
        scale, bias = p("scale", nn.initializers.ones_init()), p("bias", nn.initializers.zeros_init())
        mean, var = p("running_mean", nn.initializers.zeros_init()), p("running_var", nn.initializers.ones_init())
        x = x.astype(self.dtype)
        return ((x - mean) / jnp.sqrt(var + self.eps) * scale + bias).astype(self.dtype)


def mel_to_image(x: jax.Array, config: ClapAudioConfig) -> jax.Array:
    """Normalised log-mel views ``[B, V, T, F]`` -> square Swin input ``[B, S, S, V]`` (S = spec_size; each view one
    image channel).

    Time is stretched (bicubic) to ``S * r`` frames (r = ``freq_ratio``), frequency to ``S / r`` bins when S is not
    a multiple of F; the frames are then cut into r consecutive chunks stacked along frequency: row ``k * F + f``
    of a channel is mel bin f of time chunk k. Shapes are checked by :func:`audio_input_problems`.
    """
    b, v, t, f = x.shape
    r, width, height = config.freq_ratio, config.spec_width, config.spec_height
    if t < width:
        x = resize_bicubic_axis(x, 2, width)
    elif f < height:
        # The reference's frequency stretch keeps the original frame count: only a full-width mel reaches here.
        x = resize_bicubic_axis(x, 3, height)
    t, f = x.shape[2:]
    x = x.reshape(b, v, r, t // r, f).transpose(0, 1, 2, 4, 3).reshape(b, v, r * f, t // r)
    return x.transpose(0, 2, 3, 1)


def audio_input_problems(config: ClapAudioConfig, shape: tuple[int, ...], is_longer_given: bool) -> list[str]:
    """Why the reference cannot run the audio tower on features of ``shape`` (``[B, V, T, F]``), beyond the config's
    own :meth:`ClapAudioConfig.audio_problems`."""
    _, v, t, f = shape
    out = []
    if f != config.num_mel_bins:
        out.append(f"features have {f} mel bins, the model's batch norm {config.num_mel_bins}")
    if t > config.spec_width:
        out.append(f"{t} frames exceed the Swin input's {config.spec_width} (spec_size * freq_ratio)")
    elif f < config.spec_height and t != config.spec_width:
        out.append(f"with {f} mel bins stretched to {config.spec_height}, the reference keeps the frame count: "
                   f"{t} frames give a {t // max(config.freq_ratio, 1)}-column image, not {config.spec_size}")
    if config.enable_fusion:
        if not is_longer_given:
            out.append("enable_fusion=true needs is_longer (one flag per clip, from the feature extractor)")
    elif v != config.patch_embed_input_channels:
        out.append(f"features have {v} mel view(s) per clip but patch_embed_input_channels="
                   f"{config.patch_embed_input_channels} (a 'fusion' feature extractor gives 4, 'rand_trunc' 1)")
    return out


def relative_position_index(window: int) -> np.ndarray:
    """``[T, T]`` (T = window^2) index into the ``(2w-1)^2`` bias table for every (query, key) pair of a window."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """``[num_windows, T, T]`` additive mask (0 / -100) of shifted-window attention: after the cyclic roll, tokens
    that came from different image regions must not attend to each other."""

    def regions(n):
        i = np.arange(n)
        return (i >= n - window).astype(np.int64) + (i >= n - shift).astype(np.int64)

    label = regions(height)[:, None] * 3 + regions(width)[None, :]
    label = label.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    label = label.reshape(-1, window * window)
    return np.where(label[:, None, :] != label[:, :, None], -100.0, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """``[B, H, W, C] -> [B * (H/w) * (W/w), w*w, C]`` (windows in row-major order, batch outermost)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: jax.Array, window: int, batch: int, height: int, width: int) -> jax.Array:
    """Inverse of ``window_partition``: ``[B * nW, w*w, C] -> [B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.reshape(batch, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, c)


class NamedDense(nn.Module):
    """A ``dense`` child called ``dense`` (the torch wrappers ``attention.output``, ``intermediate``, ``output``),
    optionally followed by an activation."""

    features: int
    axes: tuple[str | None, str | None]
    act: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.features, self.axes, name="dense", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return ACTIVATIONS[self.act](x) if self.act else x


class ClapAudioSelfAttention(nn.Module):
    """Window attention with a learned relative position bias. ``[B * nW, T, C]`` windows -> same shape;
    ``mask [nW, T, T]`` (shifted windows) or None."""

    heads: int
    window: int
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        bw, t, c = x.shape
        head_dim = c // self.heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.qkv_bias)
        split = lambda y: y.reshape(bw, t, self.heads, head_dim)
        q = split(dense(c, ("embed", "heads"), name="query", **kw)(x))
        k = split(dense(c, ("embed", "heads"), name="key", **kw)(x))
        v = split(dense(c, ("embed", "heads"), name="value", **kw)(x))
        table = self.param("relative_position_bias_table", with_axes(nn.initializers.zeros_init(), ("position", None)),
                           ((2 * self.window - 1) ** 2, self.heads), self.param_dtype)
        index = relative_position_index(self.window).reshape(-1)
        bias = jnp.asarray(table, jnp.float32)[index].reshape(t, t, self.heads).transpose(2, 0, 1)[None]  # [1,N,T,T]
        if mask is not None:
            num_windows = mask.shape[0]
            bias = bias + jnp.asarray(mask)[:, None]  # [nW, N, T, T]
            bias = jnp.broadcast_to(bias[None], (bw // num_windows,) + bias.shape).reshape(bw, self.heads, t, t)
        out = dot_product_attention(q, k, v, bias=bias, scale=1.0 / math.sqrt(head_dim))
        return out.reshape(bw, t, c)


class ClapAudioAttention(nn.Module):
    heads: int
    window: int
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = ClapAudioSelfAttention(self.heads, self.window, self.qkv_bias, name="self", **kw)(x, mask)
        return NamedDense(x.shape[-1], ("heads", "embed"), name="output", **kw)(h)


class ClapAudioLayer(nn.Module):
    """Swin block on ``[B, H*W, C]`` tokens of an ``H x W`` grid: pre-LN (shifted) window attention, pre-LN MLP.

    ``shift`` is 0 or half the window; when the grid is no larger than the window the whole grid is one window and
    nothing is shifted (as in the reference).
    """

    config: ClapAudioConfig
    heads: int
    resolution: tuple[int, int]
    shift: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        height, width = self.resolution
        window = c.window_size
        shift = 0 if min(height, width) <= window else self.shift
        b, _, ch = x.shape

        h = layer_norm(c.layer_norm_eps, name="layernorm_before", **kw)(x).reshape(b, height, width, ch)
        pad_h, pad_w = (-height) % window, (-width) % window
        if pad_h or pad_w:  # zero tokens that take part in attention, as in the reference
            h = jnp.pad(h, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = height + pad_h, width + pad_w
        if shift:
            h = jnp.roll(h, (-shift, -shift), axis=(1, 2))
        mask = shifted_window_mask(hp, wp, window, shift) if shift else None
        h = ClapAudioAttention(self.heads, window, c.qkv_bias, name="attention", **kw)(window_partition(h, window),
                                                                                       mask)
        h = window_merge(h, window, b, hp, wp)
        if shift:
            h = jnp.roll(h, (shift, shift), axis=(1, 2))
        x = x + h[:, :height, :width].reshape(b, height * width, ch)

        h = layer_norm(c.layer_norm_eps, name="layernorm_after", **kw)(x)
        h = NamedDense(int(c.mlp_ratio * ch), ("embed", "mlp"), act=c.hidden_act, name="intermediate", **kw)(h)
        h = NamedDense(ch, ("mlp", "embed"), name="output", **kw)(h)
        return constrain(x + h, ("act_batch", "act_length", "act_embed"))


class ClapAudioPatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (``[0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2]``), LayerNorm,
    bias-free ``4C -> 2C`` projection. ``[B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 2C]``."""

    resolution: tuple[int, int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        height, width = self.resolution
        b, _, ch = x.shape
        x = x.reshape(b, height, width, ch)
        if height % 2 or width % 2:
            x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = x.reshape(b, -1, 4 * ch)
        x = layer_norm(1e-5, name="norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return dense(2 * ch, ("mlp", "embed"), use_bias=False, name="reduction", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)


class ClapAudioStage(nn.Module):
    config: ClapAudioConfig
    index: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # At least 1x1: only init reaches a stage whose grid vanished (running such a config is refused first).
        resolution = tuple(max(v, 1) for v in c.stage_resolutions[self.index])
        for j in range(c.depths[self.index]):
            shift = 0 if j % 2 == 0 else c.window_size // 2
            x = ClapAudioLayer(c, c.num_attention_heads[self.index], resolution, shift, name=f"blocks_{j}", **kw)(x)
        if self.index < len(c.depths) - 1:
            x = ClapAudioPatchMerging(resolution, name="downsample", **kw)(x)
        return x


class ClapAudioAFFBlock(nn.Module):
    """Attentional feature fusion (2D): ``x [B, H, W, C]`` (global patches), ``residual [B, H, W, C]`` (local
    patches) -> ``2 x w + 2 residual (1 - w)`` with ``w = sigmoid(local_att(x + residual) + global_att(x + residual))``;
    ``local_att`` is 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN per position, ``global_att`` the same on the spatial
    mean. Submodule names are the reference's ``nn.Sequential`` indices."""

    channels: int
    reduction: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, residual):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = int(self.channels // self.reduction)

        def branch(h, prefix, first):
            h = conv(inner, (1, 1), padding="VALID", name=f"{prefix}_{first}", **kw)(h)
            h = nn.relu(FrozenBatchNorm(name=f"{prefix}_{first + 1}", **kw)(h))
            h = conv(self.channels, (1, 1), padding="VALID", name=f"{prefix}_{first + 3}", **kw)(h)
            return FrozenBatchNorm(name=f"{prefix}_{first + 4}", **kw)(h)

        both = x + residual
        local = branch(both, "local_att", 0)
        pooled = jnp.mean(both.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(both.dtype)
        weight = jax.nn.sigmoid(local + branch(pooled, "global_att", 1))  # index 0 is the (parameter-free) pool
        return 2 * x * weight + 2 * residual * (1 - weight)


class ClapAudioPatchEmbed(nn.Module):
    """Strided convolution into patches, flattened row-major, LayerNorm: image ``[B, S, S, V] -> [B, H*W, C0]``.

    Unfused: all V views are the convolution's input channels. Fused (``enable_fusion``): view 0 (the whole clip)
    goes through ``proj``; for clips flagged ``is_longer [B]`` the other views (local crops) each go through
    ``mel_conv2d`` (kernel and stride 3x wider along time), are laid side by side along time, zero-padded to the
    global patch grid's width and merged with the global patches by the attentional fusion block.
    """

    config: ClapAudioConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image, is_longer=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pad = tuple((q, q) for q in c.patch_padding)
        proj = conv(c.patch_embeds_hidden_size, c.patch_size, strides=c.patch_stride, padding=pad, name="proj", **kw)
        local_kernel = (c.patch_size[0], 3 * c.patch_size[1])
        local_stride = (c.patch_stride[0], 3 * c.patch_stride[1])
        norm = layer_norm(1e-5, name="norm", **kw) if c.enable_patch_layer_norm else (lambda h: h)
        b = image.shape[0]
        if self.is_initializing():
            # Creates every parameter with the reference's shapes, whether or not this config can run (see
            # ClapAudioConfig.audio_problems); the numbers are never used.
            size = (max(c.spec_size, 4 * local_kernel[0]), max(c.spec_size, 4 * local_kernel[1]))
            h = proj(jnp.zeros((b,) + size + (c.proj_in_channels,), self.dtype))
            if c.enable_fusion:
                conv(c.patch_embeds_hidden_size, local_kernel, strides=local_stride, padding=pad, name="mel_conv2d",
                     **kw)(jnp.zeros((b,) + size + (c.patch_embed_input_channels,), self.dtype))
                ClapAudioAFFBlock(c.patch_embeds_hidden_size, c.aff_block_r, name="fusion_model", **kw)(h, h)
            gh, gw = c.grid_size
            return norm(jnp.zeros((b, gh * gw, c.patch_embeds_hidden_size), self.dtype))
        if not c.enable_fusion:
            x = proj(image)
        else:
            x = proj(image[..., :1])
            views = image.shape[-1] - 1
            gh, gw = x.shape[1:3]
            if views:
                local = image[..., 1:].transpose(0, 3, 1, 2).reshape(b * views, *image.shape[1:3], 1)
                local = conv(c.patch_embeds_hidden_size, local_kernel, strides=local_stride, padding=pad,
                             name="mel_conv2d", **kw)(local)  # [B*V, gh, w, C]
                lw = local.shape[2]
                local = local.reshape(b, views, gh, lw, -1).transpose(0, 2, 1, 3, 4).reshape(b, gh, views * lw, -1)
                local = local[:, :, :gw]
            else:  # one view only: the reference's local patches are then all zero
                local = jnp.zeros((b, gh, 0, x.shape[-1]), x.dtype)
            local = jnp.pad(local, ((0, 0), (0, 0), (0, gw - local.shape[2]), (0, 0)))
            fused = ClapAudioAFFBlock(c.patch_embeds_hidden_size, c.aff_block_r, name="fusion_model", **kw)(x, local)
            x = jnp.where(is_longer.reshape(b, 1, 1, 1), fused, x)
        x = x.reshape(b, -1, x.shape[-1])
        return norm(x)


class ClapAudioEncoder(nn.Module):
    """HTSAT trunk: log-mel ``[B, T, F]`` or views ``[B, V, T, F]`` (+ ``is_longer [B]`` for a fused model) ->
    ``(last_hidden_state [B, L, C], pooled [B, C])``; pooled is the mean over all final tokens (the reference's
    frequency-group reshape before its average pool only reorders them)."""

    config: ClapAudioConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_features, is_longer=None):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = input_features[:, None] if input_features.ndim == 3 else input_features
        if x.ndim != 4:
            raise ValueError(f"expected log-mel features [B, T, F] or [B, V, T, F], got shape {input_features.shape}")
        b = x.shape[0]
        batch_norm = FrozenBatchNorm(name="batch_norm", **kw)
        embed = ClapAudioPatchEmbed(c, name="patch_embed", **kw)
        if self.is_initializing():  # shapes from the config alone (audio_problems are raised when it runs)
            batch_norm(jnp.zeros((b, 1, 1, c.num_mel_bins), self.dtype))
            x = embed(jnp.zeros((b, 1, 1, 1), self.dtype))
        else:
            problems = c.audio_problems() + audio_input_problems(c, x.shape, is_longer is not None)
            if problems:
                raise ValueError("CLAP audio tower cannot run (nor can transformers'): " + "; ".join(problems))
            if is_longer is not None:
                is_longer = jnp.asarray(is_longer).reshape(b).astype(bool)
            x = mel_to_image(batch_norm(x), c)
            x = embed(x, is_longer)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        for i in range(len(c.depths)):
            if self.is_initializing():  # each stage on its own grid, even where merging could not produce it
                h, w = c.stage_resolutions[i]
                x = jnp.zeros((b, max(h, 1) * max(w, 1), c.stage_dims[i]), self.dtype)
            x = ClapAudioStage(c, i, name=f"layers_{i}", **kw)(x)
        x = layer_norm(1e-5, name="norm", **kw)(x)
        return x, jnp.mean(x.astype(jnp.float32), axis=1).astype(x.dtype)


class ClapAudioModel(nn.Module):
    config: ClapAudioConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_features, is_longer=None):
        return ClapAudioEncoder(self.config, name="audio_encoder", dtype=self.dtype,
                                param_dtype=self.param_dtype)(input_features, is_longer)


# ----------------------------------------------------------------------------------------------------------------
# Both branches
# ----------------------------------------------------------------------------------------------------------------


class ClapModel(nn.Module):
    """transformers' ``ClapModel``. ``__call__`` (used for ``init``) runs both branches and returns
    ``logits_per_text [Bt, Ba]``; ``get_text_features`` / ``get_audio_features`` are the entry points.

    ``params = ClapModel(cfg).init(rng, ids, mask, feats)``;
    ``ClapModel(cfg).apply(params, ids, mask, method="get_text_features")``.
    """

    config: ClapConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.text_model = ClapTextModel(c.text, **kw)
        self.text_projection = ClapProjection(c.text.projection_dim, c.text.projection_hidden_act, **kw)
        self.audio_model = ClapAudioModel(c.audio, **kw)
        self.audio_projection = ClapProjection(c.audio.projection_dim, c.audio.projection_hidden_act, **kw)
        scale = nn.initializers.constant(math.log(c.logit_scale_init_value))
        self.logit_scale_a = self.param("logit_scale_a", with_axes(scale, ()), (), self.param_dtype)
        self.logit_scale_t = self.param("logit_scale_t", with_axes(scale, ()), (), self.param_dtype)

    def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """``input_ids [B, L]``, ``attention_mask [B, L]`` -> L2-normalised text embeddings ``[B, P]``."""
        _, pooled = self.text_model(input_ids, attention_mask)
        return l2_normalize(self.text_projection(pooled))

    def get_audio_features(self, input_features: jax.Array, is_longer: jax.Array | None = None) -> jax.Array:
        """Log-mel ``[B, T, F]`` or mel views ``[B, V, T, F]`` (V = ``patch_embed_input_channels``, or 4 for a fused
        model, which also needs the extractor's ``is_longer [B]``) -> L2-normalised audio embeddings ``[B, P]``."""
        c = self.config.audio
        _, pooled = self.audio_model(input_features, is_longer)
        if pooled.shape[-1] != c.hidden_size:
            if not self.is_initializing():
                raise ValueError(f"audio_config.hidden_size={c.hidden_size} differs from the last stage width "
                                 f"{pooled.shape[-1]} (patch_embeds_hidden_size * 2**(len(depths)-1)): the audio "
                                 "projection cannot take the pooled features (nor can transformers')")
            pooled = jnp.zeros(pooled.shape[:-1] + (c.hidden_size,), pooled.dtype)  # the projection's shape
        return l2_normalize(self.audio_projection(pooled))

    def __call__(self, input_ids, attention_mask, input_features, is_longer=None):
        text = self.get_text_features(input_ids, attention_mask)
        audio = self.get_audio_features(input_features, is_longer)
        return jnp.exp(self.logit_scale_t) * text @ audio.T


class ClapTextTower(nn.Module):
    """CLAP's text tower with its projection, the part of ``ClapModel`` AudioLDM 2 trains against and conditions on:
    ``input_ids [B, L]``, ``attention_mask [B, L]`` -> L2-normalised embeddings ``[B, P]``. Its parameters
    ``{"text_model", "text_projection"}`` are the same subtrees as in ``ClapModel``."""

    config: ClapConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.text_model = ClapTextModel(self.config.text, **kw)
        self.text_projection = ClapProjection(self.config.text.projection_dim, self.config.text.projection_hidden_act,
                                              **kw)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        _, pooled = self.text_model(input_ids, attention_mask)
        return l2_normalize(self.text_projection(pooled))


def own_prompt_scores(text_embeds: jax.Array, audio_embeds: jax.Array, logit_scale: float | jax.Array = 1.0
                      ) -> jax.Array:
    """Similarity of each waveform to its OWN prompt: ``text_embeds [P, D]``, ``audio_embeds [P * n, D]`` (the n
    waveforms of prompt p at rows ``p*n .. p*n+n-1``) -> ``[P, n]`` = ``logit_scale * <text_p, audio_{p,k}>``.

    These are the diagonal blocks of the reference's ``logits_per_text`` (whose logit scale is
    ``exp(logit_scale_t)``; the ranking does not depend on it)."""
    p, d = text_embeds.shape
    if audio_embeds.shape[0] % p:
        raise ValueError(f"{audio_embeds.shape[0]} waveforms cannot be split evenly over {p} prompts")
    audio = audio_embeds.reshape(p, audio_embeds.shape[0] // p, d)
    return logit_scale * jnp.einsum("pd,pnd->pn", text_embeds, audio)


def rank_waveforms(scores: jax.Array) -> jax.Array:
    """``scores [P, n]`` -> indices ``[P * n]`` into the waveform batch: each prompt's waveforms best first, prompts in
    order. (The reference ranks every waveform against every prompt and can hand one prompt another's audio.)"""
    p, n = scores.shape
    order = jnp.argsort(-scores, axis=1, stable=True)
    return (order + n * jnp.arange(p)[:, None]).reshape(-1)
