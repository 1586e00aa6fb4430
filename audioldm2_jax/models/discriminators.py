"""Discriminators of the adversarial training stages.

- ``PatchGANDiscriminator``: the taming-transformers ``NLayerDiscriminator`` that AudioLDM's VAE training puts
  behind its ``LPIPSWithDiscriminator`` loss, on log-mel images ``[B, T, 64, 1]`` -> patch logits
  ``[B, T', F', 1]``.
- ``MultiPeriodDiscriminator`` / ``MultiScaleDiscriminator``: HiFi-GAN's (Kong et al., 2020) waveform
  discriminators for vocoder training, on ``[B, N]`` waveforms -> ``(logits, feature_maps)``: one logits array
  ``[B, L_k]`` per sub-discriminator and, per sub-discriminator, the list of its post-activation feature maps
  (channels-last) followed by its final 1-channel map.

Differences from the PyTorch originals, each chosen so that the modules stay pure functions under ``jit``:

- PatchGAN normalisation. The original uses BatchNorm (or ActNorm). Training-mode BatchNorm makes each
  example's logits depend on the rest of the batch (and taming calls the discriminator separately on the real
  and the fake batch, so the two are normalised with different statistics), needs a mutable ``batch_stats``
  collection threaded through the train state, and behaves differently at evaluation; ActNorm initialises itself
  from the first batch it sees (a data-dependent, stateful init). We use GroupNorm (``norm="group"``, default,
  32 groups): per-example statistics, no state, identical under any batch size or sharding. ``norm="none"``
  drops the normalisation (convolutions then get biases). Convolutions that feed a norm have no bias, as in the
  original with BatchNorm. Kernels start from N(0, 0.02) as taming's ``weights_init``.
- HiFi-GAN weight norm is implemented as the reparametrisation it is (``kernel = g * v / ||v||``, parameters
  ``kernel_g [C_out]`` and ``kernel_v``), on by default. Spectral norm on the first scale discriminator is
  omitted (it needs a power-iteration state); that scale uses weight norm like the others. A published
  spectral-normed checkpoint still converts exactly (``convert_torch_discriminator`` folds ``sigma`` in).

Submodules are named after the PyTorch ones (``main_0`` for ``main.0``, ``discriminators_1/convs_2``) so that
``convert_torch_discriminator`` is mostly the project's mechanical renaming.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from audioldm2_jax.models.layers import group_norm, zeros
from audioldm2_jax.parallel.partitioning import constrain, with_axes

Dtype = Any
_IMAGE = ("act_batch", "act_height", "act_width", "act_channels")
_SEQ = ("act_batch", "act_length", "act_channels")

# torch's default Conv initialisation (kaiming_uniform with a=sqrt(5): U(+-1/sqrt(fan_in))), which HiFi-GAN's
# discriminators keep; fan_in is k * C_in / groups in both frameworks.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# taming's weights_init for the PatchGAN.
patchgan_kernel_init = nn.initializers.normal(0.02)


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchGANConfig:
    """``NLayerDiscriminator(input_nc=in_channels, ndf=base_channels, n_layers=num_layers)``.

    Conv widths: ``base``, then ``base * min(2**n, 8)`` for ``n = 1..num_layers`` (all but the last of these
    with stride 2), then 1. Every conv is 4x4 with padding 1.
    """

    in_channels: int = 1
    base_channels: int = 64
    num_layers: int = 3
    norm: str = "group"  # "group" | "none"
    norm_groups: int = 32
    norm_eps: float = 1e-5
    leaky_relu_slope: float = 0.2

    def __post_init__(self):
        for key in ("in_channels", "base_channels", "num_layers", "norm_groups"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"PatchGAN config: {key}={getattr(self, key)!r} must be a positive int")
        if self.norm not in ("group", "none"):
            raise ValueError(f"PatchGAN config: norm={self.norm!r} must be 'group' or 'none'")
        if self.norm == "group":
            for c in self.hidden_channels[1:]:
                if c % self.norm_groups:
                    raise ValueError(f"PatchGAN config: norm_groups={self.norm_groups} does not divide the "
                                     f"{c} channels of a normalised layer (base_channels={self.base_channels})")

    @property
    def hidden_channels(self) -> tuple[int, ...]:
        """Output widths of the convolutions before the final 1-channel one."""
        return (self.base_channels,) + tuple(self.base_channels * min(2 ** n, 8)
                                             for n in range(1, self.num_layers + 1))

    def output_size(self, size: int) -> int:
        """Patch-grid size along one axis for an input of ``size``: ``num_layers`` stride-2 convs (k4, p1) halve
        it (floor), the two stride-1 convs remove one each."""
        for _ in range(self.num_layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2

    _LOSS_KEYS = ("disc_start", "logvar_init", "kl_weight", "pixelloss_weight", "disc_factor", "disc_weight",
                  "perceptual_weight", "disc_conditional", "disc_loss")

    @classmethod
    def from_loss_config(cls, d: Mapping[str, Any], **overrides) -> "PatchGANConfig":
        """From the ``params`` of an AudioLDM / taming ``LPIPSWithDiscriminator`` loss config (architecture keys
        ``disc_in_channels``, ``disc_num_layers``, ``disc_ndf``; the loss weights are the trainer's and are
        ignored here). ``use_actnorm`` is accepted and ignored: ActNorm and BatchNorm both become ``norm``."""
        kw: dict[str, Any] = {}
        for key, value in d.items():
            if key == "disc_in_channels":
                kw["in_channels"] = value
            elif key == "disc_num_layers":
                kw["num_layers"] = value
            elif key == "disc_ndf":
                kw["base_channels"] = value
            elif key == "use_actnorm" or key in cls._LOSS_KEYS:
                continue
            else:
                raise ValueError(f"PatchGAN loss config: unknown key {key!r}")
        kw.update(overrides)
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class HifiGanDiscriminatorConfig:
    """HiFi-GAN's MPD and MSD (V1 values by default).

    Period discriminator ``p``: the waveform, reflect-padded to a multiple of ``p``, is viewed as
    ``[B, N/p, p, 1]``; convs with kernel ``(period_kernel_size, 1)``, padding ``((k-1)/2, 0)``, stride
    ``(period_stride, 1)`` except the last (stride 1), widths ``period_channels``; post conv ``(3, 1)`` to 1.
    Scale discriminator: 1-D convs with ``scale_kernel_sizes / scale_strides / scale_groups``, padding
    ``(k-1)/2``, widths ``scale_channels``; post conv 3 to 1. Scales after the first see the waveform average-
    pooled (window 4, stride 2, padding 2, zeros counted) once more each. Leaky ReLU after every conv but the post.
    """

    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    period_kernel_size: int = 5
    period_stride: int = 3
    num_scales: int = 3
    scale_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    scale_kernel_sizes: tuple[int, ...] = (15, 41, 41, 41, 41, 41, 5)
    scale_strides: tuple[int, ...] = (1, 2, 2, 4, 4, 1, 1)
    scale_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)
    post_kernel_size: int = 3
    leaky_relu_slope: float = 0.1
    weight_norm: bool = True

    def __post_init__(self):
        for key in ("periods", "period_channels", "scale_channels", "scale_kernel_sizes", "scale_strides",
                    "scale_groups"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or not value or any(not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"HiFi-GAN discriminator config: {key}={value!r} must be a non-empty tuple of "
                                 "positive ints")
        for key in ("period_kernel_size", "period_stride", "num_scales", "post_kernel_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"HiFi-GAN discriminator config: {key}={getattr(self, key)!r} must be a positive "
                                 "int")
        n = len(self.scale_channels)
        for key in ("scale_kernel_sizes", "scale_strides", "scale_groups"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"HiFi-GAN discriminator config: {key} has {len(getattr(self, key))} entries, "
                                 f"scale_channels has {n}")
        c_in = 1
        for i, (c, g) in enumerate(zip(self.scale_channels, self.scale_groups)):
            if c_in % g or c % g:
                raise ValueError(f"HiFi-GAN discriminator config: scale_groups[{i}]={g} does not divide the "
                                 f"{c_in} -> {c} channels of that conv")
            c_in = c
        for key in ("period_kernel_size", "post_kernel_size"):
            if getattr(self, key) % 2 == 0:
                raise ValueError(f"HiFi-GAN discriminator config: {key}={getattr(self, key)} must be odd "
                                 "('same' padding)")
        if any(k % 2 == 0 for k in self.scale_kernel_sizes):
            raise ValueError(f"HiFi-GAN discriminator config: scale_kernel_sizes={self.scale_kernel_sizes} must "
                             "be odd ('same' padding)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HifiGanDiscriminatorConfig":
        """From a plain dict of the field names (lists become tuples); unknown keys raise."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for key, value in d.items():
            if key not in fields:
                raise ValueError(f"HiFi-GAN discriminator config: unknown key {key!r}")
            kw[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------------------
# Convolution with optional weight norm
# ----------------------------------------------------------------------------------------------------------------


def _l2_norm_per_output(v: jax.Array) -> jax.Array:
    """||v|| over every axis but the last (output channels): torch ``weight_norm(dim=0)``'s norm."""
    return jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=tuple(range(v.ndim - 1))))


class DiscriminatorConv(nn.Module):
    """An N-d convolution ``[B, *spatial, C_in] -> [B, *spatial', features]`` with explicit padding, groups and,
    with ``weight_norm``, the kernel reparametrised as ``g * v / ||v||`` (norm per output channel).

    Parameters: ``kernel [*k, C_in/groups, features]`` (or ``kernel_v`` of that shape and ``kernel_g [features]``,
    ``g`` initialised to ``||v||`` so that the initial kernel is ``v``), ``bias [features]``.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    feature_group_count: int = 1
    use_bias: bool = True
    weight_norm: bool = False
    kernel_init: Any = torch_default_kernel_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ndim = len(self.kernel_size)
        axes = ("conv_kd", "conv_kh", "conv_kw")[3 - ndim:] + ("conv_in", "conv_out")
        shape = tuple(self.kernel_size) + (x.shape[-1] // self.feature_group_count, self.features)
        if self.weight_norm:
            v = self.param("kernel_v", with_axes(self.kernel_init, axes), shape, self.param_dtype)
            g = self.param("kernel_g", with_axes(lambda _, v_: _l2_norm_per_output(v_).astype(self.param_dtype),
                                                 ("conv_out",)), v)
            kernel = v * (g / _l2_norm_per_output(v)).astype(v.dtype)
        else:
            kernel = self.param("kernel", with_axes(self.kernel_init, axes), shape, self.param_dtype)
        spatial = "DHW"[3 - ndim:]
        dims = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype),
                                         window_strides=tuple(self.strides), padding=tuple(self.padding),
                                         dimension_numbers=dims, feature_group_count=self.feature_group_count)
        if self.use_bias:
            bias = self.param("bias", with_axes(zeros, ("conv_out",)), (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN (VAE stage)
# ----------------------------------------------------------------------------------------------------------------


class PatchGANDiscriminator(nn.Module):
    """taming's ``NLayerDiscriminator`` with GroupNorm (see the module docstring): ``[B, T, F, in_channels]`` ->
    patch logits ``[B, T', F', 1]`` float32, ``T' = config.output_size(T)`` (``[B, 1024, 64, 1]`` ->
    ``[B, 126, 6, 1]`` with 3 layers). Each logit sees a 70 x 70 window (3 layers)."""

    config: PatchGANConfig = PatchGANConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = lambda c, stride, bias, name: DiscriminatorConv(c, (4, 4), (stride, stride), ((1, 1), (1, 1)),
                                                               use_bias=bias, kernel_init=patchgan_kernel_init,
                                                               name=name, **kw)
        x = constrain(x.astype(self.dtype), _IMAGE)
        channels = cfg.hidden_channels
        # torch Sequential indices: conv 0, lrelu 1, then (conv, norm, lrelu) per layer, then the final conv.
        x = nn.leaky_relu(conv(channels[0], 2, True, "main_0")(x), cfg.leaky_relu_slope)
        index = 2
        for n in range(1, cfg.num_layers + 1):
            stride = 2 if n < cfg.num_layers else 1
            x = conv(channels[n], stride, cfg.norm == "none", f"main_{index}")(x)
            if cfg.norm == "group":
                x = group_norm(cfg.norm_groups, cfg.norm_eps, name=f"main_{index + 1}", **kw)(x)
            x = constrain(nn.leaky_relu(x, cfg.leaky_relu_slope), _IMAGE)
            index += 3
        return conv(1, 1, True, f"main_{index}")(x).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# HiFi-GAN discriminators (vocoder stage)
# ----------------------------------------------------------------------------------------------------------------


def _as_waveform(wave: jax.Array) -> jax.Array:
    if wave.ndim == 3 and wave.shape[-1] == 1:
        wave = wave[..., 0]
    if wave.ndim != 2:
        raise ValueError(f"discriminator input: expected a waveform [B, N] or [B, N, 1], got shape {wave.shape}")
    return wave


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's ``DiscriminatorP``: ``[B, N]`` -> ``(logits [B, H * period], feature_maps)`` with
    ``H = ceil(N / period)`` shrunk by the strided convs; feature maps ``[B, H_i, period, C_i]``."""

    period: int
    config: HifiGanDiscriminatorConfig = HifiGanDiscriminatorConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        cfg, p = self.config, self.period
        wave = _as_waveform(wave)
        b, n = wave.shape
        if n % p:  # torch pads the end by reflection ("reflect": the edge sample is not repeated)
            wave = jnp.pad(wave, ((0, 0), (0, p - n % p)), mode="reflect")
        x = wave.reshape(b, -1, p, 1).astype(self.dtype)
        k = cfg.period_kernel_size
        kw = dict(weight_norm=cfg.weight_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        feature_maps = []
        for i, c in enumerate(cfg.period_channels):
            stride = cfg.period_stride if i < len(cfg.period_channels) - 1 else 1
            x = DiscriminatorConv(c, (k, 1), (stride, 1), ((k // 2, k // 2), (0, 0)), name=f"convs_{i}", **kw)(x)
            x = constrain(nn.leaky_relu(x, cfg.leaky_relu_slope), _IMAGE)
            feature_maps.append(x)
        kp = cfg.post_kernel_size
        x = DiscriminatorConv(1, (kp, 1), (1, 1), ((kp // 2, kp // 2), (0, 0)), name="conv_post", **kw)(x)
        feature_maps.append(x)
        return x.reshape(b, -1).astype(jnp.float32), feature_maps


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN's ``DiscriminatorS``: ``[B, N, 1]`` -> ``(logits [B, L], feature_maps [B, L_i, C_i] ...)``."""

    config: HifiGanDiscriminatorConfig = HifiGanDiscriminatorConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        cfg = self.config
        kw = dict(weight_norm=cfg.weight_norm, dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        feature_maps = []
        for i, (c, k, s, g) in enumerate(zip(cfg.scale_channels, cfg.scale_kernel_sizes, cfg.scale_strides,
                                             cfg.scale_groups)):
            x = DiscriminatorConv(c, (k,), (s,), ((k // 2, k // 2),), feature_group_count=g, name=f"convs_{i}",
                                  **kw)(x)
            x = constrain(nn.leaky_relu(x, cfg.leaky_relu_slope), _SEQ)
            feature_maps.append(x)
        kp = cfg.post_kernel_size
        x = DiscriminatorConv(1, (kp,), (1,), ((kp // 2, kp // 2),), name="conv_post", **kw)(x)
        feature_maps.append(x)
        return x.reshape(x.shape[0], -1).astype(jnp.float32), feature_maps


class MultiPeriodDiscriminator(nn.Module):
    """One ``PeriodDiscriminator`` per entry of ``config.periods``: ``[B, N]`` (or ``[B, N, 1]``) ->
    ``(logits list, feature-maps list of lists)``, both in period order.

    To score real and generated audio, call it on each (or on their concatenation along the batch and split).
    """

    config: HifiGanDiscriminatorConfig = HifiGanDiscriminatorConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        wave = constrain(_as_waveform(wave), ("act_batch", "act_length"))
        logits, feature_maps = [], []
        for i, p in enumerate(self.config.periods):
            out, fmaps = PeriodDiscriminator(p, self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                             name=f"discriminators_{i}")(wave)
            logits.append(out)
            feature_maps.append(fmaps)
        return logits, feature_maps


def average_pool_waveform(x: jax.Array) -> jax.Array:
    """torch ``AvgPool1d(4, 2, padding=2)`` (zero padding counted): ``[B, N, C] -> [B, N // 2 + 1, C]``."""
    return nn.avg_pool(x, (4,), strides=(2,), padding=((2, 2),), count_include_pad=True)


class MultiScaleDiscriminator(nn.Module):
    """``config.num_scales`` ``ScaleDiscriminator``s on the waveform and its repeated 2x average-pooled versions:
    ``[B, N]`` (or ``[B, N, 1]``) -> ``(logits list, feature-maps list of lists)``, finest scale first."""

    config: HifiGanDiscriminatorConfig = HifiGanDiscriminatorConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, wave: jax.Array) -> tuple[list[jax.Array], list[list[jax.Array]]]:
        x = constrain(_as_waveform(wave)[..., None], _SEQ)
        logits, feature_maps = [], []
        for i in range(self.config.num_scales):
            if i:
                x = average_pool_waveform(x)
            out, fmaps = ScaleDiscriminator(self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                                            name=f"discriminators_{i}")(x)
            logits.append(out)
            feature_maps.append(fmaps)
        return logits, feature_maps


# ----------------------------------------------------------------------------------------------------------------
# Conversion from PyTorch state dicts
# ----------------------------------------------------------------------------------------------------------------

def receptive_field(kernel_sizes, strides) -> int:
    """Receptive field along one axis of a stack of convolutions: ``1 + sum_i (k_i - 1) * prod_{j<i} s_j``."""
    field, jump = 1, 1
    for k, s in zip(kernel_sizes, strides):
        field += (k - 1) * jump
        jump *= s
    return field


def patchgan_receptive_field(config: PatchGANConfig) -> int:
    """Input window of one PatchGAN logit along each axis (70 for 3 layers, as in pix2pix)."""
    strides = [2] * config.num_layers + [1, 1]
    return receptive_field([4] * len(strides), strides)


__all__ = ["PatchGANConfig", "HifiGanDiscriminatorConfig", "DiscriminatorConv", "PatchGANDiscriminator",
           "PeriodDiscriminator", "ScaleDiscriminator", "MultiPeriodDiscriminator", "MultiScaleDiscriminator",
           "average_pool_waveform", "receptive_field", "patchgan_receptive_field"]
