"""AudioMAE (Huang et al., 2022), the self-supervised audio encoder behind AudioLDM 2's Language of Audio (LOA).

A ViT over the Kaldi fbank of a 10.24 s clip: ``[B, 1024, 128]`` (time x mel) is cut into 16x16 patches, a
64 (time) x 8 (frequency) grid of 512 tokens plus CLS. Pretraining hides most patches (ratio 0.8) and a decoder
reconstructs them; AudioLDM 2 keeps only the encoder and reads its last blocks as the LOA:

    features = mean(norm(h_i) for the last 3 blocks)              [B, 513, 768]
    LOA      = (avgpool + maxpool) / 2 over (lambda_t, lambda_f)   [B, 512 / (lambda_t lambda_f), 768]

Three modules, named after the PyTorch reference (``facebookresearch/AudioMAE`` ``models_mae.py``) so that checkpoint
conversion is a renaming:

- ``AudioMAEEncoder``: ``patch_embed.proj``, ``cls_token``, ``blocks_i`` (timm ``Block``), ``norm``.
- ``AudioMAEDecoder``: ``decoder_embed``, ``mask_token``, ``decoder_blocks_i``, ``decoder_norm``, ``decoder_pred``;
  ``decoder_type="global"`` uses ViT blocks over all tokens, ``"local"`` uses post-norm Swin blocks (scaled cosine
  attention, log-spaced continuous position bias) in 4x4 windows of the patch grid, shifted on every other block.
- ``MaskedAutoencoder``: both, plus the pretraining loss (MSE on masked patches, per-patch normalised targets).

Sequences are channels-last ``[B, L, C]``. Patches are ordered time-major (index ``t * 8 + f``), like the
reference's ``Conv2d`` output flattened from ``[B, C, T', F']``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.audio import fbank as kaldi
from audioldm2_jax.models.layers import REMAT_POLICIES, conv, dense, dot_product_attention, layer_norm, remat_block
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any

LOA_LAMBDAS = (1, 2, 4, 8)  # the pooling rates AudioLDM 2 trains with
DECODER_TYPES = ("global", "local")
POS_EMBED_LAYOUTS = ("audiomae", "grid")


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioMAEConfig:
    """Hyper-parameters; the defaults are AudioLDM 2's AudioMAE (ViT-B/16 over 1024 x 128, global decoder)."""

    input_frames: int = 1024  # fbank frames (time)
    mel_bins: int = 128  # fbank bins (frequency)
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    # How many of the last encoder blocks are averaged into the features (the reference's `n > contextual_depth`
    # with contextual_depth 8 of 12 blocks keeps the last 3).
    feature_layers: int = 3
    decoder_type: str = "global"
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    # Local decoder: windows over the (time, frequency) patch grid, the shift of odd blocks, the hidden width and
    # dropout of the MLP that turns relative coordinates into attention biases.
    decoder_window: tuple[int, int] = (4, 4)
    decoder_shift: tuple[int, int] = (2, 0)
    decoder_bias_hidden: int = 384
    decoder_bias_dropout: float = 0.1
    mask_ratio: float = 0.8
    norm_pix_loss: bool = True
    # "audiomae": the released checkpoints' sin-cos table, laid out over a (F', T') = (8, 64) grid while patches are
    # ordered time-major (patch k is encoded as column k % T', row k // T'); "grid": the table of the true grid.
    pos_embed_layout: str = "audiomae"
    # rematerialisation of each transformer block in the backward pass: a name of layers.REMAT_POLICIES (True /
    # False, the older spelling, read as "full" / "none")
    remat: str = "none"

    def __post_init__(self):
        def fail(key, why):
            raise ValueError(f"AudioMAE config: {key}={getattr(self, key)!r} {why}")

        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            fail("remat", f"is not one of {', '.join(REMAT_POLICIES)}")

        for key in ("input_frames", "mel_bins"):
            if getattr(self, key) <= 0 or getattr(self, key) % self.patch_size:
                fail(key, f"must be a positive multiple of patch_size={self.patch_size}")
        for key in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                    "decoder_depth", "decoder_num_heads", "decoder_bias_hidden"):
            if int(getattr(self, key)) <= 0:
                fail(key, "must be positive")
        if self.embed_dim % self.num_heads:
            fail("num_heads", f"does not divide embed_dim={self.embed_dim}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            fail("decoder_num_heads", f"does not divide decoder_embed_dim={self.decoder_embed_dim}")
        if self.embed_dim % 4 or self.decoder_embed_dim % 4:
            fail("embed_dim", "and decoder_embed_dim must be multiples of 4 (2-D sin-cos position embedding)")
        if not 1 <= self.feature_layers <= self.depth:
            fail("feature_layers", f"must be in [1, depth={self.depth}]")
        if self.decoder_type not in DECODER_TYPES:
            fail("decoder_type", f"is not one of {DECODER_TYPES}")
        if self.pos_embed_layout not in POS_EMBED_LAYOUTS:
            fail("pos_embed_layout", f"is not one of {POS_EMBED_LAYOUTS}")
        if not 0.0 <= self.mask_ratio < 1.0:
            fail("mask_ratio", "must be in [0, 1)")
        if int(self.num_patches * (1 - self.mask_ratio)) < 1:
            fail("mask_ratio", f"keeps no patch of {self.num_patches}")
        if self.decoder_type == "local":
            window, shift = self.window_and_shift(1)
            for axis, (g, w) in enumerate(zip(self.grid, window)):
                if g % w:
                    fail("decoder_window", f"does not tile the {self.grid[0]}x{self.grid[1]} patch grid")
                if not 0 <= shift[axis] < w:
                    fail("decoder_shift", "must be in [0, window) per axis")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(time, frequency)``: (64, 8) for 1024 x 128 fbanks."""
        return self.input_frames // self.patch_size, self.mel_bins // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_chans

    def window_and_shift(self, block_index: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Window and cyclic shift of local decoder block ``block_index`` (shifted on odd blocks). As in the
        reference, a window never exceeds the grid, and an axis the window covers whole is not shifted."""
        window = tuple(min(g, w) for g, w in zip(self.grid, self.decoder_window))
        shift = tuple(0 if block_index % 2 == 0 or g <= w else s
                      for g, w, s in zip(self.grid, window, self.decoder_shift))
        return window, shift

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AudioMAEConfig":
        """Our field names, or the keyword arguments of the reference's ``MaskedAutoencoderViT`` (``img_size``,
        ``decoder_mode``, ``contextual_depth``, ``no_shift``, ...). Unknown or unsupported values raise a ValueError
        naming the key."""
        fields = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        d = dict(d)
        local = False
        if "decoder_mode" in d:
            mode = d.pop("decoder_mode")
            if mode not in (0, 1):
                raise ValueError(f"AudioMAE config: decoder_mode={mode!r} is not 0 (global) or 1 (local)")
            local = mode == 1
            out["decoder_type"] = "local" if local else "global"
            if local:  # the reference builds 16 Swin blocks of 16 heads whatever decoder_depth says
                out["decoder_depth"], out["decoder_num_heads"] = 16, 16
        for key, value in d.items():
            if key == "img_size":
                frames, bins = (value, value) if isinstance(value, int) else tuple(value)
                out["input_frames"], out["mel_bins"] = int(frames), int(bins)
            elif key == "contextual_depth":
                continue  # resolved below, once depth is known
            elif key == "no_shift":
                if value:
                    out["decoder_shift"] = (0, 0)
            elif key == "audio_exp":
                if not value:
                    raise ValueError("AudioMAE config: audio_exp=False (square image grids) is not supported")
            elif key in ("use_custom_patch", "pos_trainable", "mask_2d", "use_nce"):
                if value:
                    raise ValueError(f"AudioMAE config: {key}={value!r} is not supported")
            elif key in ("stride", "alpha", "temperature", "mode", "split_pos", "beta", "epoch", "mask_t_prob",
                         "mask_f_prob", "norm_layer"):
                continue  # unused by the model we build (overlapping patches, contrastive terms, 2-D masking)
            elif key in ("decoder_depth", "decoder_num_heads") and local:
                continue
            elif key in fields:
                out[key] = tuple(value) if key in ("decoder_window", "decoder_shift") else value
            else:
                raise ValueError(f"AudioMAE config: unknown key {key!r}")
        if "contextual_depth" in d:
            depth = int(out.get("depth", cls.depth))
            out["feature_layers"] = depth - int(d["contextual_depth"]) - 1
        return cls(**out)


# ----------------------------------------------------------------------------------------------------------------
# Fixed tables
# ----------------------------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[M] -> [M, dim]``: sines then cosines of ``positions * 10000^(-2i/dim)``."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = positions.reshape(-1).astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], layout: str = "audiomae") -> np.ndarray:
    """Fixed 2-D sin-cos position table ``[1 + T' F', dim]`` (row 0, the CLS token's, is zero).

    Half the channels encode a column coordinate, half a row coordinate. ``layout="audiomae"`` reproduces the
    released checkpoints, whose table is built over an (F', T') grid and read in time-major patch order;
    ``"grid"`` encodes each patch's true (time, frequency) position.
    """
    t, f = grid
    k = np.arange(t * f)
    if layout == "audiomae":
        col, row = k % t, k // t
    elif layout == "grid":
        col, row = k % f, k // f
    else:
        raise ValueError(f"pos_embed_layout {layout!r} is not one of {POS_EMBED_LAYOUTS}")
    table = np.concatenate([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table], axis=0).astype(np.float32)


def _relative_log_coordinates(window: tuple[int, int]) -> np.ndarray:
    """``[A*A, 2]`` signed ``log(1 + |dy|), log(1 + |dx|)`` between all pairs of a window's ``A`` positions."""
    ys, xs = np.meshgrid(np.arange(window[0]), np.arange(window[1]), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)], axis=0).astype(np.float64)  # [2, A]
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).reshape(-1, 2)
    return (np.sign(rel) * np.log1p(np.abs(rel))).astype(np.float32)


def _window_partition(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """``[B, H, W, C] -> [B * nW, wh * ww, C]``, windows in row-major order (NumPy or JAX arrays)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window[0], window[0], w // window[1], window[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], c)


def _window_merge(x: jax.Array, window: tuple[int, int], grid: tuple[int, int]) -> jax.Array:
    """Inverse of ``_window_partition``: ``[B * nW, wh * ww, C] -> [B, H, W, C]``."""
    h, w = grid
    c = x.shape[-1]
    x = x.reshape(-1, h // window[0], w // window[1], window[0], window[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """``[nW, A, A]`` additive mask (0 / -100) keeping attention inside the regions that a cyclic shift glued
    together in one window. Along an axis, the regions are ``[0, n - w)``, ``[n - w, n - s)``, ``[n - s, n)``."""

    def regions(n, w, s):
        idx = np.arange(n)
        if s == 0:
            return np.zeros(n, np.int64)
        return np.where(idx < n - w, 0, np.where(idx < n - s, 1, 2))

    label = regions(grid[0], window[0], shift[0])[:, None] * 3 + regions(grid[1], window[1], shift[1])[None, :]
    windows = _window_partition(label[None, :, :, None], window)[..., 0]  # numpy in, numpy out
    return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc1``, exact GELU, ``fc2``."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x), approximate=False)
        h = constrain(h, ("act_batch", "act_length", "mlp"))
        return dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h)


class SelfAttention(nn.Module):
    """timm ``Attention``: one fused ``qkv`` projection (with bias), softmax(q k^T / sqrt(d)) v, ``proj``."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        head_dim = c // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * c, ("embed", "heads"), name="qkv", **kw)(x).reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = (constrain(qkv[:, :, i], ("act_batch", "act_length", "act_heads", None)) for i in range(3))
        out = dot_product_attention(q, k, v, scale=head_dim ** -0.5).reshape(b, n, c)
        return dense(c, ("heads", "embed"), name="proj", **kw)(out)


class ViTBlock(nn.Module):
    """timm ``Block`` (pre-norm): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. ``[B, L, C] -> [B, L, C]``."""

    num_heads: int
    mlp_ratio: float = 4.0
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + SelfAttention(self.num_heads, name="attn", **kw)(layer_norm(self.eps, name="norm1", **kw)(x))
        x = x + Mlp(int(x.shape[-1] * self.mlp_ratio), name="mlp", **kw)(layer_norm(self.eps, name="norm2", **kw)(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class RelativeBiasMlp(nn.Module):
    """The Swin-V2 "meta" network: relative log-coordinates ``[P, 2]`` -> per-head biases ``[P, heads]``."""

    hidden: int
    heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, coords, deterministic: bool = True):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.relu(dense(self.hidden, ("position", "mlp"), name="fc1", **kw)(coords))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return dense(self.heads, ("mlp", "position"), name="fc2", **kw)(h)


class WindowAttention(nn.Module):
    """Scaled cosine attention inside windows with a continuous relative-position bias (the reference's
    ``WindowMultiHeadAttention``): ``softmax(cos(q, k) / max(tau, 0.01) + bias + mask) v``.

    ``x: [B * nW, A, C]``; ``mask: [nW, A, A]`` or None.
    """

    num_heads: int
    window: tuple[int, int]
    bias_hidden: int = 384
    bias_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True):
        bw, area, c = x.shape
        head_dim = c // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * c, ("embed", "heads"), name="qkv", **kw)(x).reshape(bw, area, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

        # Cosine similarity; the clamp keeps the gradient finite for an all-zero query or key.
        def unit(t):
            t32 = t.astype(jnp.float32)
            return (t32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(t32 * t32, -1, keepdims=True), 1e-12))).astype(t.dtype)

        tau = self.param("tau", with_axes(nn.initializers.ones_init(), ("norm",)), (self.num_heads,), self.param_dtype)
        q = unit(q) / jnp.maximum(tau, 0.01).astype(q.dtype)[None, None, :, None]
        coords = jnp.asarray(_relative_log_coordinates(self.window))
        bias = RelativeBiasMlp(self.bias_hidden, self.num_heads, self.bias_dropout, name="meta_mlp", **kw)(
            coords, deterministic)  # [A*A, heads]
        bias = bias.T.reshape(1, self.num_heads, area, area).astype(jnp.float32)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = jnp.tile(bias + jnp.asarray(mask)[:, None], (bw // num_windows, 1, 1, 1))
        out = dot_product_attention(q, unit(k), v, bias=bias, scale=1.0).reshape(bw, area, c)
        return dense(c, ("heads", "embed"), name="proj", **kw)(out)


class SwinBlock(nn.Module):
    """Post-norm Swin block over the patch grid (the reference's ``SwinTransformerBlock``):
    ``x + norm1(shifted_window_attn(x))``, then ``x + norm2(mlp(x))``. ``[B, T' F', C] -> [B, T' F', C]``."""

    num_heads: int
    grid: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    mlp_ratio: float = 4.0
    eps: float = 1e-6
    bias_hidden: int = 384
    bias_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        b, n, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = x.reshape(b, self.grid[0], self.grid[1], c)
        shifted = any(self.shift)
        if shifted:
            h = jnp.roll(h, (-self.shift[0], -self.shift[1]), axis=(1, 2))
        mask = _shift_mask(self.grid, self.window, self.shift) if shifted else None
        h = WindowAttention(self.num_heads, self.window, self.bias_hidden, self.bias_dropout, name="attn", **kw)(
            _window_partition(h, self.window), mask, deterministic)
        h = _window_merge(h, self.window, self.grid)
        if shifted:
            h = jnp.roll(h, self.shift, axis=(1, 2))
        x = x + layer_norm(self.eps, name="norm1", **kw)(h.reshape(b, n, c))
        x = x + layer_norm(self.eps, name="norm2", **kw)(Mlp(int(c * self.mlp_ratio), name="mlp", **kw)(x))
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class PatchEmbed(nn.Module):
    """``[B, T, F] -> [B, T' F', C]``: a ``p x p`` convolution with stride ``p`` (``proj``), time-major tokens."""

    embed_dim: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, fbank):
        x = fbank[..., None] if fbank.ndim == 3 else fbank  # channels-last: [B, T, F, in_chans]
        x = conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding="VALID", name="proj",
                 dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x.reshape(x.shape[0], -1, self.embed_dim)


# ----------------------------------------------------------------------------------------------------------------
# Masking and the pretraining loss
# ----------------------------------------------------------------------------------------------------------------


def random_masking(x: jax.Array, mask_ratio: float, noise: jax.Array):
    """Keeps the ``int(L (1 - ratio))`` tokens of lowest ``noise`` (per sample), in ascending-noise order.

    ``x: [B, L, C]``, ``noise: [B, L]`` -> ``kept [B, K, C]``, ``mask [B, L]`` (1 = hidden), ``ids_restore [B, L]``
    (``ids_restore[b, i]`` is the rank of token ``i``: where it sits in the shuffled sequence).
    """
    length = x.shape[1]
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    kept = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
    mask = (ids_restore >= keep).astype(x.dtype)
    return kept, mask, ids_restore


def patchify(fbank: jax.Array, patch_size: int) -> jax.Array:
    """``[B, T, F]`` (or ``[B, T, F, C]``) -> ``[B, T' F', p * p * C]``, time-major patches, row-major pixels."""
    x = fbank[..., None] if fbank.ndim == 3 else fbank
    b, t, f, c = x.shape
    p = patch_size
    x = x.reshape(b, t // p, p, f // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (t // p) * (f // p), p * p * c)


def unpatchify(patches: jax.Array, grid: tuple[int, int], patch_size: int) -> jax.Array:
    """Inverse of ``patchify`` for one channel: ``[B, T' F', p * p] -> [B, T, F]``."""
    b = patches.shape[0]
    p = patch_size
    x = patches.reshape(b, grid[0], grid[1], p, p).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, grid[0] * p, grid[1] * p)


def masked_patch_loss(fbank: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int,
                      norm_pix_loss: bool = True) -> jax.Array:
    """Mean squared error over the hidden patches (``mask == 1``), per-patch normalised targets when
    ``norm_pix_loss`` (mean 0, unbiased variance 1 with eps 1e-6, as the reference's ``torch.var``).

    ``fbank [B, T, F]``, ``pred [B, L, p * p]``, ``mask [B, L]`` -> scalar (float32).
    """
    target = patchify(fbank.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(-1, keepdims=True)
        var = jnp.sum((target - mean) ** 2, -1, keepdims=True) / (target.shape[-1] - 1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Encoder, decoder, masked autoencoder
# ----------------------------------------------------------------------------------------------------------------


class AudioMAEEncoder(nn.Module):
    """The ViT encoder. ``__call__`` runs pretraining's masked pass; ``features`` the unmasked pass of LOA
    extraction. Inputs are normalised fbanks ``[B, T, F]``."""

    config: AudioMAEConfig = AudioMAEConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.patch_embed = PatchEmbed(c.embed_dim, c.patch_size, **kw)
        self.cls_token = self.param("cls_token", with_axes(nn.initializers.normal(0.02), (None, None, "embed")),
                                    (1, 1, c.embed_dim), self.param_dtype)
        block = remat_block(ViTBlock, c.remat)
        self.blocks = [block(c.num_heads, c.mlp_ratio, c.norm_eps, **kw) for _ in range(c.depth)]
        self.norm = layer_norm(c.norm_eps, **kw)

    def _embed(self, fbank):
        c = self.config
        if fbank.shape[-2:] != (c.input_frames, c.mel_bins):
            raise ValueError(f"AudioMAE expects fbanks [B, {c.input_frames}, {c.mel_bins}], got {fbank.shape}")
        pos = jnp.asarray(sincos_pos_embed(c.embed_dim, c.grid, c.pos_embed_layout), self.dtype)
        x = self.patch_embed(fbank.astype(self.dtype)) + pos[None, 1:]
        cls = jnp.broadcast_to((self.cls_token.astype(self.dtype) + pos[None, :1]), (x.shape[0], 1, x.shape[-1]))
        return constrain(x, ("act_batch", "act_length", "act_embed")), cls

    def __call__(self, fbank, mask_ratio: float = 0.0, noise=None):
        """``fbank [B, T, F]`` -> ``latent [B, 1 + K, C]`` (final norm applied, CLS first), ``mask [B, L]``
        (1 = hidden), ``ids_restore [B, L]``. With ``mask_ratio > 0`` the shuffling noise comes from ``noise``
        ``[B, L]`` or the ``"masking"`` rng stream."""
        x, cls = self._embed(fbank)
        b, length, _ = x.shape
        if mask_ratio > 0 or noise is not None:
            if noise is None:
                noise = jax.random.uniform(self.make_rng("masking"), (b, length))
            x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        else:
            mask = jnp.zeros((b, length), x.dtype)
            ids_restore = jnp.broadcast_to(jnp.arange(length), (b, length))
        x = jnp.concatenate([cls, x], axis=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def features(self, fbank):
        """``[B, T, F] -> [B, 1 + L, C]``: the mean of the final norm applied to each of the last
        ``feature_layers`` block outputs (AudioLDM 2's ``forward_encoder_no_mask``); CLS first."""
        x, cls = self._embed(fbank)
        x = jnp.concatenate([cls, x], axis=1)
        first = self.config.depth - self.config.feature_layers
        total = None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i >= first:
                normed = self.norm(x).astype(jnp.float32)
                total = normed if total is None else total + normed
        return (total / self.config.feature_layers).astype(self.dtype)


class AudioMAEDecoder(nn.Module):
    """Reconstructs every patch from the encoder's kept tokens. ``latent [B, 1 + K, C_enc]``, ``ids_restore
    [B, L]`` -> ``pred [B, L, p * p * in_chans]``."""

    config: AudioMAEConfig = AudioMAEConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, latent, ids_restore, deterministic: bool = True):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dim = c.decoder_embed_dim
        x = dense(dim, ("embed", None), name="decoder_embed", **kw)(latent.astype(self.dtype))
        mask_token = self.param("mask_token", with_axes(nn.initializers.normal(0.02), (None, None, "embed")),
                                (1, 1, dim), self.param_dtype).astype(self.dtype)
        b, length = ids_restore.shape
        hidden = jnp.broadcast_to(mask_token, (b, length + 1 - x.shape[1], dim))
        tokens = jnp.concatenate([x[:, 1:], hidden], axis=1)
        tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None], axis=1)  # back to patch order
        pos = jnp.asarray(sincos_pos_embed(dim, c.grid, c.pos_embed_layout), self.dtype)
        x = jnp.concatenate([x[:, :1], tokens], axis=1) + pos[None]
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        if c.decoder_type == "global":
            block = remat_block(ViTBlock, c.remat)
            for i in range(c.decoder_depth):
                x = block(c.decoder_num_heads, c.mlp_ratio, c.norm_eps, name=f"decoder_blocks_{i}", **kw)(x)
        else:  # the local decoder works on the patch grid: CLS is dropped before its blocks
            x = x[:, 1:]
            block = remat_block(SwinBlock, c.remat, static_argnums=(2,))
            for i in range(c.decoder_depth):
                window, shift = c.window_and_shift(i)
                x = block(c.decoder_num_heads, c.grid, window, shift, c.mlp_ratio, c.norm_eps, c.decoder_bias_hidden,
                          c.decoder_bias_dropout, name=f"decoder_blocks_{i}", **kw)(x, deterministic)
        x = layer_norm(c.norm_eps, name="decoder_norm", **kw)(x)
        pred = dense(c.patch_dim, ("embed", "conv_out"), name="decoder_pred", **kw)(x)
        return pred[:, 1:] if c.decoder_type == "global" else pred


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder + loss, the pretraining model. Parameters: ``{"encoder": ..., "decoder": ...}``.

    ``__call__(fbank [B, T, F])`` -> ``{"loss": [], "pred": [B, L, p * p], "mask": [B, L]}``; the mask ratio is the
    config's, the shuffling noise ``noise [B, L]`` or the ``"masking"`` rng; the local decoder's bias-MLP dropout
    uses the ``"dropout"`` rng when ``deterministic`` is False.
    """

    config: AudioMAEConfig = AudioMAEConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = AudioMAEEncoder(self.config, **kw)
        self.decoder = AudioMAEDecoder(self.config, **kw)

    def __call__(self, fbank, noise=None, deterministic: bool = True, mask_ratio: float | None = None):
        c = self.config
        ratio = c.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.encoder(fbank, ratio, noise)
        pred = self.decoder(latent, ids_restore, deterministic)
        loss = masked_patch_loss(fbank, pred, mask, c.patch_size, c.norm_pix_loss)
        return {"loss": loss, "pred": pred, "mask": mask}

    def features(self, fbank):
        return self.encoder.features(fbank)


def dummy_fbank(config: AudioMAEConfig, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, config.input_frames, config.mel_bins), jnp.float32)


def init_encoder(rng: jax.Array, config: AudioMAEConfig = AudioMAEConfig(), **kw) -> dict:
    """Randomly initialised encoder parameters (logically partitioned boxes; ``nn.unbox`` for plain arrays)."""
    return AudioMAEEncoder(config, **kw).init(rng, dummy_fbank(config), method=AudioMAEEncoder.features)["params"]


def init_mae(rng: jax.Array, config: AudioMAEConfig = AudioMAEConfig(), **kw) -> dict:
    """Randomly initialised ``MaskedAutoencoder`` parameters ``{"encoder", "decoder"}`` (boxed)."""
    model = MaskedAutoencoder(config, **kw)
    noise = jnp.zeros((1, config.num_patches))
    return model.init({"params": rng}, dummy_fbank(config), noise)["params"]


# ----------------------------------------------------------------------------------------------------------------
# Language of Audio
# ----------------------------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def loa_pooling(lam: int | Sequence[int], grid: tuple[int, int] = (64, 8)) -> tuple[int, int]:
    """``(lambda_t, lambda_f)`` for a pooling rate: an int ``lam`` pools ``(lam, min(F', lam))`` as AudioLDM 2 does
    (the frequency axis has only 8 patches), a pair is taken as is. Raises a ValueError listing the valid values
    when a rate does not divide the ``(T', F')`` patch grid."""
    if isinstance(lam, (int, np.integer)):
        lam_t, lam_f = int(lam), min(grid[1], int(lam))
    else:
        lam_t, lam_f = (int(v) for v in lam)
    valid_t, valid_f = _divisors(grid[0]), _divisors(grid[1])
    if lam_t not in valid_t or lam_f not in valid_f:
        raise ValueError(f"LOA pooling lambda={lam!r} -> (lambda_t={lam_t}, lambda_f={lam_f}) does not divide the "
                         f"{grid[0]}x{grid[1]} patch grid; valid lambda_t: {valid_t}, valid lambda_f: {valid_f} "
                         f"(AudioLDM 2 uses lambda in {list(LOA_LAMBDAS)})")
    return lam_t, lam_f


def loa_token_count(lam: int | Sequence[int], grid: tuple[int, int] = (64, 8)) -> int:
    lam_t, lam_f = loa_pooling(lam, grid)
    return (grid[0] // lam_t) * (grid[1] // lam_f)


def pool_loa(features: jax.Array, lam: int | Sequence[int], grid: tuple[int, int] = (64, 8)) -> jax.Array:
    """``[B, 1 + T' F', C]`` encoder features -> LOA ``[B, (T'/lt) (F'/lf), C]``: CLS dropped, the tokens laid out
    on the (time, frequency) grid, ``(mean + max) / 2`` over non-overlapping ``(lt, lf)`` tiles, time-major."""
    lam_t, lam_f = loa_pooling(lam, grid)
    b, n, c = features.shape
    if n != 1 + grid[0] * grid[1]:
        raise ValueError(f"features have {n} tokens; expected 1 + {grid[0]}x{grid[1]}")
    x = features[:, 1:].reshape(b, grid[0] // lam_t, lam_t, grid[1] // lam_f, lam_f, c)
    pooled = (x.mean(axis=(2, 4)) + x.max(axis=(2, 4))) / 2
    return pooled.reshape(b, -1, c)


def _encoder_params(params: Mapping) -> Mapping:
    params = params.get("params", params)
    return params["encoder"] if "encoder" in params else params


@functools.partial(jax.jit, static_argnames=("config", "lam", "dtype"))
def _loa_from_fbank(params, fbank, *, config: AudioMAEConfig, lam, dtype):
    features = AudioMAEEncoder(config, dtype=dtype).apply({"params": params}, fbank, method=AudioMAEEncoder.features)
    return pool_loa(features.astype(jnp.float32), lam, config.grid)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _features_from_fbank(params, fbank, *, config: AudioMAEConfig, dtype):
    return AudioMAEEncoder(config, dtype=dtype).apply({"params": params}, fbank, method=AudioMAEEncoder.features)


def _as_fbank(x, config: AudioMAEConfig, sample_rate: int | None):
    """Normalised fbank ``[B, T, F]`` from fbank input (``[T, F]`` / ``[B, T, F]``) or 16 kHz waveforms
    (``[N]`` / ``[B, N]``, through the Kaldi front end)."""
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if x.ndim >= 2 and tuple(x.shape[-2:]) == (config.input_frames, config.mel_bins):
        if sample_rate is not None:
            raise ValueError("sample_rate is given but the input is already an fbank "
                             f"[..., {config.input_frames}, {config.mel_bins}]")
        return x.reshape((-1,) + x.shape[-2:])
    if x.ndim not in (1, 2):
        raise ValueError(f"expected fbanks [B, {config.input_frames}, {config.mel_bins}] or 16 kHz waveforms [B, N]; "
                         f"got shape {x.shape}")

    sr = kaldi.SAMPLE_RATE if sample_rate is None else int(sample_rate)
    kaldi._check_sample_rate(sr)  # raises a ValueError naming the rate
    if (config.mel_bins, config.patch_size) != (kaldi.NUM_MEL_BINS, 16):
        raise ValueError(f"the waveform path makes {kaldi.NUM_MEL_BINS}-bin fbanks; this config takes "
                         f"{config.mel_bins} bins: pass fbanks")
    wave = x if x.ndim == 2 else x[None]
    if wave.shape[-1] < kaldi.FRAME_LENGTH:
        # Shorter than one 25 ms window: zero-pad to one window (one frame, then the usual zero frames).
        wave = jnp.pad(wave, ((0, 0), (0, kaldi.FRAME_LENGTH - wave.shape[-1])))
    return _waveform_to_fbank(wave, config.input_frames)


@functools.partial(jax.jit, static_argnames=("frames",))
def _waveform_to_fbank(wave, frames):
    return kaldi.audiomae_input_jnp(wave.astype(jnp.float32), target_frames=frames)


def extract_features(params: Mapping, waveform_or_fbank, *, config: AudioMAEConfig = AudioMAEConfig(),
                     sample_rate: int | None = None, dtype: Dtype = jnp.float32) -> jax.Array:
    """Encoder features ``[B, 1 + L, C]`` (mean of the last normed blocks) of fbanks or 16 kHz waveforms."""
    fbank = _as_fbank(waveform_or_fbank, config, sample_rate)
    return _features_from_fbank(_encoder_params(params), fbank, config=config, dtype=dtype)


def extract_loa(params: Mapping, waveform_or_fbank, lam: int | Sequence[int] = 8, *,
                config: AudioMAEConfig = AudioMAEConfig(), sample_rate: int | None = None,
                dtype: Dtype = jnp.float32) -> jax.Array:
    """The Language of Audio: ``[B, 512 / (lt lf), C]`` (float32) for normalised fbanks ``[B, 1024, 128]`` or 16 kHz
    waveforms ``[B, N]`` (``sample_rate`` other than 16000 raises). ``lam`` is an int (``lt = lam``,
    ``lf = min(8, lam)``) or a ``(lt, lf)`` pair. ``params`` are the encoder's, or a ``{"encoder", ...}`` tree.
    Jitted once per (config, lam, dtype)."""
    lam = lam if isinstance(lam, (int, np.integer)) else tuple(int(v) for v in lam)
    loa_pooling(lam, config.grid)  # validate before tracing
    fbank = _as_fbank(waveform_or_fbank, config, sample_rate)
    return _loa_from_fbank(_encoder_params(params), fbank, config=config, lam=lam, dtype=dtype)
