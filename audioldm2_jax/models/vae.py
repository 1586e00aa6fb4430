"""The mel-spectrogram VAE of AudioLDM 2: diffusers' ``AutoencoderKL`` (KL-regularised autoencoder with a
diagonal-Gaussian posterior), rebuilt channels-last.

Layout. diffusers works on ``[B, C, H, W]`` with the mel spectrogram as ``[B, 1, T, 64]`` (time is the height,
mel bins the width) and latents ``[B, 8, T/4, 16]``. Here everything is channels-last: the spectrogram is
``[B, T, 64, 1]`` and the latents ``[B, T/4, 16, 8]``; transpose ``(0, 2, 3, 1)`` at the boundary.

Lengths. Each down block but the last halves time and frequency with a stride-2 3x3 convolution after padding one
row/column at the end only (diffusers' ``downsample_padding=0``), so a length ``n`` becomes ``n // 2``; each up
block but the last doubles it. With the published three blocks, ``T`` frames encode to ``(T // 2) // 2`` latent
frames and ``L`` latent frames decode to ``4 L`` frames: the round trip keeps the length only when ``T`` is a
multiple of 4 (the pipeline rounds durations up to one). Nothing else constrains ``T``.

``scaling_factor`` is carried in ``VAEConfig`` but not applied here (as in diffusers): diffusion latents are
``z * scaling_factor``, and the pipeline divides by it before ``decode``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import (REMAT_POLICIES, Downsample2D, ResnetBlock2D, Upsample2D, conv, dense,
                                         dot_product_attention, group_norm, remat_block)
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any

DOWN_BLOCKS = ("DownEncoderBlock2D",)
UP_BLOCKS = ("UpDecoderBlock2D",)
# Every VAE norm (resnets, mid-block attention, conv_norm_out) uses this epsilon in diffusers' Encoder/Decoder,
# whatever the config says; the config has no key for it.
VAE_NORM_EPS = 1e-6
# Config keys that do not change the network: pipeline-level statistics and diffusers' runtime switches.
_IGNORED_KEYS = ("sample_size", "force_upcast", "latents_mean", "latents_std")
_SPATIAL = ("act_batch", "act_height", "act_width", "act_channels")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 1
    out_channels: int = 1
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 3
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 3
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    latent_channels: int = 8
    norm_num_groups: int = 32
    scaling_factor: float = 0.4110932946205139
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    # What the backward pass keeps of each encoder / decoder ResNet and the mid-block attention (a name of
    # layers.REMAT_POLICIES): a training choice, not part of the network, so not in the diffusers config.json.
    remat: str = "none"

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"VAE config: remat={self.remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("VAE config: block_out_channels is empty")
        for key, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
            types = getattr(self, key)
            bad = [t for t in types if t not in allowed]
            if bad:
                raise ValueError(f"VAE config: unknown {key} {bad}; supported: {list(allowed)}")
            if len(types) != n:
                raise ValueError(f"VAE config: {key} has {len(types)} entries, block_out_channels has {n}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"VAE config: norm_num_groups={self.norm_num_groups} does not divide "
                             f"block_out_channels {bad}")
        if self.layers_per_block < 1:
            raise ValueError(f"VAE config: layers_per_block={self.layers_per_block} must be >= 1")

    @property
    def downsample_factor(self) -> int:
        """Time and frequency reduction of the encoder (4 for the published VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, d: dict) -> "VAEConfig":
        """From an ``AutoencoderKL`` ``config.json`` dict. Unknown keys and unsupported values raise ValueError."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"remat"}  # remat is no diffusers key
        unknown = sorted(k for k in d if not k.startswith("_") and k not in fields and k not in _IGNORED_KEYS
                         and k != "act_fn")
        if unknown:
            raise ValueError(f"VAE config: unknown keys {unknown}")
        act = d.get("act_fn", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"VAE config: act_fn={act!r} is not supported (only 'silu')")
        kw = {k: d[k] for k in fields if k in d}
        for key in ("down_block_types", "up_block_types", "block_out_channels"):
            if key in kw:
                kw[key] = tuple(kw[key])
        # diffusers' defaults where the dict is silent (an AutoencoderKL() built with no arguments)
        kw.setdefault("down_block_types", ("DownEncoderBlock2D",))
        kw.setdefault("up_block_types", ("UpDecoderBlock2D",))
        kw.setdefault("block_out_channels", (64,))
        kw.setdefault("layers_per_block", 1)
        kw.setdefault("in_channels", 3)
        kw.setdefault("out_channels", 3)
        kw.setdefault("latent_channels", 4)
        kw.setdefault("scaling_factor", 0.18215)
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------------------
# Posterior
# ----------------------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)); ``mean`` and ``logvar`` are ``[B, h, w, latent_channels]``
    float32, ``logvar`` clipped to [-30, 20] as in diffusers."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """``moments: [..., 2 * latent]``: the first half of the channels is the mean, the second the log-variance."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> jax.Array:
        """KL(self || other), ``other`` the standard normal when None, summed over all but the batch axis: ``[B]``."""
        if other is None:
            terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
        else:
            terms = (jnp.square(self.mean - other.mean) / other.var + self.var / other.var - 1.0
                     - self.logvar + other.logvar)
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))

    def nll(self, x: jax.Array) -> jax.Array:
        """Negative log-likelihood of ``x`` under the posterior, summed over all but the batch axis: ``[B]``."""
        terms = math.log(2.0 * math.pi) + self.logvar + jnp.square(x - self.mean) / self.var
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


class SpatialSelfAttention(nn.Module):
    """The VAE mid-block attention (diffusers ``Attention`` with ``norm_num_groups``, ``bias=True``,
    ``residual_connection=True``): group norm, one head as wide as the channels over all ``h * w`` positions,
    output projection, residual. ``[B, h, w, C] -> [B, h, w, C]``.

    Softmax runs in float32 (the reference's ``upcast_softmax``) inside ``dot_product_attention``.
    """

    groups: int
    eps: float = VAE_NORM_EPS
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t = group_norm(self.groups, self.eps, name="group_norm", **kw)(x).reshape(b, h * w, c)
        q, k, v = (dense(c, ("embed", "heads"), name=n, **kw)(t).reshape(b, h * w, 1, c)
                   for n in ("to_q", "to_k", "to_v"))
        out = dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c)).reshape(b, h * w, c)
        out = dense(c, ("heads", "embed"), name="to_out_0", **kw)(out)
        return out.reshape(b, h, w, c) + x


class MidBlock(nn.Module):
    """``UNetMidBlock2D`` without time embedding: resnet, then (attention, resnet) once."""

    groups: int
    add_attention: bool = True
    remat: str = "none"  # the policy each ResNet and the attention run under (layers.REMAT_POLICIES)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        resnet = remat_block(ResnetBlock2D, self.remat)
        x = resnet(c, groups=self.groups, eps=VAE_NORM_EPS, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = remat_block(SpatialSelfAttention, self.remat)(self.groups, name="attentions_0", **kw)(x)
        x = resnet(c, groups=self.groups, eps=VAE_NORM_EPS, name="resnets_1", **kw)(x)
        return constrain(x, _SPATIAL)


class ResnetBlocks(nn.Module):
    """diffusers' ``DownEncoderBlock2D`` (``resample="down"``) and ``UpDecoderBlock2D`` (``"up"``): ``num_layers``
    resnets, then the asymmetric-pad stride-2 conv (down) or nearest x2 upsampling + conv (up); ``None`` (the last
    block of each side) resamples nothing."""

    out_channels: int
    num_layers: int
    groups: int
    resample: str | None = None
    remat: str = "none"  # the policy each ResNet runs under (layers.REMAT_POLICIES)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        resnet = remat_block(ResnetBlock2D, self.remat)
        for j in range(self.num_layers):
            x = resnet(self.out_channels, groups=self.groups, eps=VAE_NORM_EPS, name=f"resnets_{j}", **kw)(x)
        if self.resample == "down":
            x = Downsample2D(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
        elif self.resample == "up":
            x = Upsample2D(self.out_channels, name="upsamplers_0", **kw)(x)
        return constrain(x, _SPATIAL)


class Encoder(nn.Module):
    """``[B, T, F, in_channels] -> [B, T/f, F/f, 2 * latent_channels]`` (moments before ``quant_conv``)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = conv(cfg.block_out_channels[0], 3, padding=1, name="conv_in", **kw)(x.astype(self.dtype))
        last = len(cfg.block_out_channels) - 1
        for i, channels in enumerate(cfg.block_out_channels):
            x = ResnetBlocks(channels, cfg.layers_per_block, cfg.norm_num_groups, "down" if i != last else None,
                             cfg.remat, name=f"down_blocks_{i}", **kw)(x)
        x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, cfg.remat, name="mid_block", **kw)(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, VAE_NORM_EPS, name="conv_norm_out", **kw)(x))
        return conv(2 * cfg.latent_channels, 3, padding=1, name="conv_out", **kw)(x)


class Decoder(nn.Module):
    """``[B, h, w, latent_channels] -> [B, h*f, w*f, out_channels]`` (after ``post_quant_conv``)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = tuple(reversed(cfg.block_out_channels))
        x = conv(channels[0], 3, padding=1, name="conv_in", **kw)(z)
        x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, cfg.remat, name="mid_block", **kw)(x)
        for i, ch in enumerate(channels):
            x = ResnetBlocks(ch, cfg.layers_per_block + 1, cfg.norm_num_groups,
                             "up" if i != len(channels) - 1 else None, cfg.remat, name=f"up_blocks_{i}", **kw)(x)
        x = nn.silu(group_norm(cfg.norm_num_groups, VAE_NORM_EPS, name="conv_norm_out", **kw)(x))
        return conv(cfg.out_channels, 3, padding=1, name="conv_out", **kw)(x)


# ----------------------------------------------------------------------------------------------------------------
# Autoencoder
# ----------------------------------------------------------------------------------------------------------------


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL``, channels-last.

    ``encode(x: [B, T, F, 1]) -> DiagonalGaussian`` over ``[B, T/4, F/4, 8]`` (published config),
    ``decode(z: [B, L, F/4, 8]) -> [B, 4L, F, 1]``, ``__call__`` for training.
    """

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        self.quant_conv = conv(2 * cfg.latent_channels, 1, padding=0, **kw) if cfg.use_quant_conv else None
        self.post_quant_conv = conv(cfg.latent_channels, 1, padding=0, **kw) if cfg.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """``x: [B, T, F, in_channels]`` (log-mel ``[B, T, 64, 1]``) -> posterior over ``[B, T/f, F/f, latent]``."""
        x = constrain(x, _SPATIAL)
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        """``z: [B, L, F/f, latent_channels]`` (unscaled: already divided by ``scaling_factor``) ->
        ``[B, L*f, F, out_channels]``."""
        z = constrain(z.astype(self.dtype), _SPATIAL)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return constrain(self.decoder(z), _SPATIAL)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction for training: encode, sample the posterior with ``key`` (its mode when None), decode.

        Returns ``(reconstruction [B, T', F, out_channels], posterior)``; ``posterior.kl()`` is the ``[B]`` KL term.
        """
        posterior = self.encode(x)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z), posterior


def vae_dummy_input(config: VAEConfig, frames: int | None = None, mels: int | None = None) -> jax.Array:
    """A zero ``[1, frames, mels, in_channels]`` input for ``init`` / ``eval_shape`` (shapes do not depend on it)."""
    f = config.downsample_factor
    return jnp.zeros((1, frames or 4 * f, mels or 4 * f, config.in_channels), jnp.float32)
