"""The HiFi-GAN vocoder of AudioLDM 2 (transformers' ``SpeechT5HifiGan``): log-mel frames -> 16 kHz waveform.

``[B, T, model_in_dim]`` log-mel (the VAE's output ``[B, T, 64, 1]`` without its channel axis) ->
``[B, N]`` waveform in [-1, 1]. Each upsampler is a transposed 1-D convolution with kernel ``k``, stride ``u`` and
padding ``p = (k - u) // 2``, mapping ``n`` samples to ``(n - 1) u - 2p + k``; for the published rates
(5, 4, 2, 2, 2) and kernels (16, 16, 8, 4, 4) that is ``5n + 1``, ``4n``, ``2n``, ``2n``, ``2n``, so
``N = 160 T + 32``. ``output_length`` computes it for any config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import conv, default_kernel_init, ones, zeros
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any
_SEQ = ("act_batch", "act_length", "act_channels")

# transformers' ``SpeechT5HifiGanConfig`` defaults: what a config.json that omits a key means.
TRANSFORMERS_DEFAULTS = dict(model_in_dim=80, sampling_rate=16000, upsample_initial_channel=512,
                             upsample_rates=(4, 4, 4, 4), upsample_kernel_sizes=(8, 8, 8, 8),
                             resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3,
                             leaky_relu_slope=0.1, normalize_before=True)


@dataclasses.dataclass(frozen=True)
class VocoderConfig:
    """HiFi-GAN hyper-parameters. The defaults are AudioLDM 2's published vocoder; ``from_transformers`` fills keys a
    config.json omits with transformers' ``SpeechT5HifiGanConfig`` defaults instead."""

    model_in_dim: int = 64
    sampling_rate: int = 16000
    upsample_initial_channel: int = 1024
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    leaky_relu_slope: float = 0.1
    normalize_before: bool = False

    def __post_init__(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"vocoder config: upsample_rates has {len(self.upsample_rates)} entries, "
                             f"upsample_kernel_sizes has {len(self.upsample_kernel_sizes)}")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(f"vocoder config: resblock_kernel_sizes has {len(self.resblock_kernel_sizes)} entries, "
                             f"resblock_dilation_sizes has {len(self.resblock_dilation_sizes)}")
        if not self.upsample_rates or not self.resblock_kernel_sizes:
            raise ValueError("vocoder config: upsample_rates and resblock_kernel_sizes must not be empty")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u:
                raise ValueError(f"vocoder config: upsample_kernel_sizes entry {k} with upsample_rates entry {u}: "
                                 "the kernel must be at least the stride (negative padding)")
        for k in self.resblock_kernel_sizes:
            if k < 1 or k % 2 == 0:
                # "Same" padding (k d - d) // 2 loses a sample per layer for an even kernel: the residual sum of the
                # reference fails on the length mismatch.
                raise ValueError(f"vocoder config: resblock_kernel_sizes entry {k} must be a positive odd number")
        # Channels halve (rounding down, as in the reference) at every upsampler; the last stage needs at least one.
        if self.upsample_initial_channel // 2 ** len(self.upsample_rates) < 1:
            raise ValueError(f"vocoder config: upsample_initial_channel={self.upsample_initial_channel} leaves no "
                             f"channel after {len(self.upsample_rates)} halvings")

    @classmethod
    def from_transformers(cls, d: dict) -> "VocoderConfig":
        """From a ``SpeechT5HifiGan`` ``config.json`` dict (missing keys take transformers' defaults; the other
        keys of a saved config are ``PretrainedConfig`` bookkeeping and are ignored).

        As in the reference, which pairs the lists with ``zip``, entries of ``upsample_kernel_sizes`` beyond
        ``upsample_rates`` and of ``resblock_dilation_sizes`` beyond ``resblock_kernel_sizes`` are not used; fewer
        entries than that are an error (the reference cannot run them).
        """
        model_type = d.get("model_type", "speecht5_hifigan")
        if model_type != "speecht5_hifigan":
            raise ValueError(f"vocoder config: model_type={model_type!r} is not 'speecht5_hifigan'")
        kw = {k: d.get(k, v) for k, v in TRANSFORMERS_DEFAULTS.items()}
        for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            kw[key] = tuple(int(v) for v in kw[key])
        kw["resblock_dilation_sizes"] = tuple(tuple(int(v) for v in ds) for ds in kw["resblock_dilation_sizes"])
        for short, long in (("upsample_rates", "upsample_kernel_sizes"),
                            ("resblock_kernel_sizes", "resblock_dilation_sizes")):
            if len(kw[long]) < len(kw[short]):
                raise ValueError(f"vocoder config: {long} has {len(kw[long])} entries, fewer than the "
                                 f"{len(kw[short])} of {short}")
            kw[long] = kw[long][:len(kw[short])]
        kw["leaky_relu_slope"] = float(kw["leaky_relu_slope"])
        return cls(**kw)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame (160 for the published vocoder)."""
        out = 1
        for u in self.upsample_rates:
            out *= u
        return out

    def output_length(self, frames: int) -> int:
        """Waveform length for ``frames`` mel frames: each upsampler maps ``n -> (n-1) u - 2 ((k-u)//2) + k``."""
        n = frames
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            n = (n - 1) * u - 2 * ((k - u) // 2) + k
        return n


class ConvTranspose1d(nn.Module):
    """torch's ``ConvTranspose1d(c_in, features, k, stride, padding)`` on ``[B, n, c_in] -> [B, n', features]``,
    ``n' = (n - 1) stride - 2 padding + k``.

    The transposed convolution is a correlation of the input dilated by ``stride`` (``stride - 1`` zeros between
    samples) with the spatially flipped kernel, padded by ``k - 1 - padding`` on both sides. ``kernel`` is stored
    ``[k, c_in, features]`` in torch's tap order (torch's weight ``[c_in, features, k]`` transposed, unflipped).
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", with_axes(default_kernel_init, ("conv_kw", "conv_in", "conv_out")),
                            (k, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", with_axes(zeros, ("conv_out",)), (self.features,), self.param_dtype)
        x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
        edge = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(x, kernel[::-1], window_strides=(1,), padding=[(edge, edge)],
                                         lhs_dilation=(self.stride,), dimension_numbers=("NWC", "WIO", "NWC"))
        return y + bias


class ResidualBlock(nn.Module):
    """``HifiGanResidualBlock``: per dilation ``d``, ``x += conv2(lrelu(conv1_d(lrelu(x))))`` with "same" padding
    (``convs1`` dilated by ``d``, ``convs2`` undilated). ``[B, n, C] -> [B, n, C]``."""

    kernel_size: int
    dilations: tuple[int, ...]
    slope: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, ndim=1)
        c, k = x.shape[-1], self.kernel_size
        for i, d in enumerate(self.dilations):
            h = nn.leaky_relu(x, self.slope)
            h = conv(c, k, padding=(k * d - d) // 2, kernel_dilation=d, name=f"convs1_{i}", **kw)(h)
            h = nn.leaky_relu(h, self.slope)
            h = conv(c, k, padding=(k - 1) // 2, name=f"convs2_{i}", **kw)(h)
            x = x + h
        return x


class HifiGanVocoder(nn.Module):
    """``SpeechT5HifiGan``: ``[B, T, model_in_dim]`` log-mel -> ``[B, config.output_length(T)]`` waveform (an
    un-batched ``[T, model_in_dim]`` gives ``[config.output_length(T)]``).

    ``mean`` / ``scale`` (the optional input normalisation) exist only when ``normalize_before``; they are fixed
    statistics, so gradients do not reach them.
    """

    config: VocoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array) -> jax.Array:
        unbatched = mel.ndim == 2  # one spectrogram [T, model_in_dim] -> [N], as the reference allows
        if unbatched:
            mel = mel[None]
        if mel.ndim != 3 or mel.shape[-1] != self.config.model_in_dim:
            raise ValueError(f"HifiGanVocoder: expected a log-mel [B, T, {self.config.model_in_dim}] or "
                             f"[T, {self.config.model_in_dim}], got shape {mel.shape[1:] if unbatched else mel.shape}")
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = mel.astype(self.dtype)
        if cfg.normalize_before:
            mean = self.param("mean", with_axes(zeros, ("norm",)), (cfg.model_in_dim,), self.param_dtype)
            scale = self.param("scale", with_axes(ones, ("norm",)), (cfg.model_in_dim,), self.param_dtype)
            x = (x - jax.lax.stop_gradient(mean)) / jax.lax.stop_gradient(scale)
        x = constrain(x, _SEQ)
        x = conv(cfg.upsample_initial_channel, 7, padding=3, ndim=1, name="conv_pre", **kw)(x)
        kernels = len(cfg.resblock_kernel_sizes)
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            x = nn.leaky_relu(x, cfg.leaky_relu_slope)
            x = ConvTranspose1d(cfg.upsample_initial_channel // 2 ** (i + 1), k, u, (k - u) // 2,
                                name=f"upsampler_{i}", **kw)(x)
            # Multi-receptive-field fusion: the mean of parallel residual blocks with different kernels.
            total = 0.0
            for j, (rk, dil) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
                total = total + ResidualBlock(rk, dil, cfg.leaky_relu_slope, name=f"resblocks_{i * kernels + j}",
                                              **kw)(x)
            x = constrain(total / kernels, _SEQ)
        x = nn.leaky_relu(x, 0.01)  # the reference's last activation uses torch's default slope, not the config's
        x = conv(1, 7, padding=3, ndim=1, name="conv_post", **kw)(x)
        wave = jnp.tanh(x[..., 0])
        return wave[0] if unbatched else wave
