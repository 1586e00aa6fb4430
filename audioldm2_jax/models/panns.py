"""PANNs CNN14 (Kong et al., arXiv 1912.10211), the AudioSet tagger whose embedding and logits the field's FD, KL and
IS are computed on (``audioldm_eval``'s ``cnn14`` backbone, ``frechet-audio-distance``'s ``pann``). Inference only:
BatchNorm with its running statistics, no dropout, no SpecAugment, no mixup (the reference in ``eval()`` mode).

``[B, N]`` waveform at the front end's rate -> log-mel ``[B, T, 64]`` (:mod:`audioldm2_jax.audio.panns_features`,
``T = 1 + N // hop``) -> ``bn0`` (a BatchNorm over the 64 mel bins) -> image ``[B, T, 64, 1]`` (time, frequency,
channels) -> six conv blocks (2 x [3x3 conv without bias, BatchNorm, ReLU]; channels 64, 128, 256, 512, 1024, 2048)
with 2x2 average pooling after the first five (floor: odd sizes lose their last row) -> ``[B, T // 32, 2, 2048]``
(for 64 mel bins) -> mean over frequency -> max plus mean over time -> ``fc1`` + ReLU: the 2048-d ``embedding`` ->
``fc_audioset``: the 527 ``logits``; their sigmoid is the reference's ``clipwise_output``.

The time axis must survive five halvings: at least 32 frames (``N >= 31 hop``, 4960 samples at 16 kHz; the
reference fails on an empty max there). ``audioldm_eval`` zero-pads clips shorter than 2 s before this model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.audio.panns_features import PannsFrontEnd, log_mel
from audioldm2_jax.models.clap import FrozenBatchNorm
from audioldm2_jax.models.layers import conv, dense
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
_SPATIAL = ("act_batch", "act_height", "act_width", "act_channels")
_VECTOR = ("act_batch", "act_embed")
# ``Cnn14``'s fixed widths: conv blocks 1-6, then fc1 (as wide as the last block).
CHANNELS = (64, 128, 256, 512, 1024, 2048)
# Every conv block but the last halves time and frequency.
POOLED_BLOCKS = 5
BATCH_NORM_EPS = 1e-5  # torch's BatchNorm2d default


@dataclasses.dataclass(frozen=True)
class PannsConfig:
    """CNN14 hyper-parameters: the front end (default: the 16 kHz model's) and the number of classes (AudioSet's
    527). ``Cnn14``'s ``bn0`` is hard-wired to 64 mel bins, so other ``mel_bins`` cannot be a CNN14."""

    front_end: PannsFrontEnd = PannsFrontEnd()
    classes_num: int = 527

    def __post_init__(self):
        if self.front_end.mel_bins != 64:
            raise ValueError(f"PANNs config: mel_bins={self.front_end.mel_bins}, but CNN14's bn0 normalises exactly "
                             "64 mel bins")
        if self.classes_num < 1:
            raise ValueError(f"PANNs config: classes_num={self.classes_num} must be positive")

    @property
    def embedding_dim(self) -> int:
        """Width of the ``embedding`` output (``fc1``): 2048."""
        return CHANNELS[-1]

    @property
    def min_frames(self) -> int:
        """Log-mel frames that survive the five 2x2 poolings: 32."""
        return 2 ** POOLED_BLOCKS

    def min_samples(self) -> int:
        """Shortest waveform the model takes: ``(min_frames - 1) * hop`` samples (4960 at 16 kHz)."""
        return (self.min_frames - 1) * self.front_end.hop_size


class ConvBlock(nn.Module):
    """``ConvBlock``: 2 x (3x3 conv without bias, padding 1 -> BatchNorm -> ReLU), then ``pool`` x ``pool`` average
    pooling (``F.avg_pool2d``: stride = kernel, no padding). ``[B, T, F, C_in] -> [B, T // p, F // p, features]``."""

    features: int
    pool: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in (1, 2):
            x = conv(self.features, 3, padding=1, use_bias=False, name=f"conv{i}", **kw)(x)
            x = nn.relu(FrozenBatchNorm(BATCH_NORM_EPS, name=f"bn{i}", **kw)(x))
        if self.pool > 1:
            x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool), padding="VALID")
        return constrain(x, _SPATIAL)


class Cnn14(nn.Module):
    """``Cnn14`` in eval mode: waveform ``[B, N]`` -> ``{"embedding": [B, 2048], "logits": [B, classes_num],
    "clipwise_output": [B, classes_num]}`` (``clipwise_output = sigmoid(logits)``). The front end runs in float32
    whatever ``dtype`` (the dB of low-energy bins needs it); the network computes in ``dtype``."""

    config: PannsConfig = PannsConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.bn0 = FrozenBatchNorm(BATCH_NORM_EPS, **kw)  # over the mel bins
        self.conv_blocks = [ConvBlock(features, 2 if i < POOLED_BLOCKS else 1, name=f"conv_block{i + 1}", **kw)
                            for i, features in enumerate(CHANNELS)]
        self.fc1 = dense(self.config.embedding_dim, ("embed", "mlp"), **kw)
        self.fc_audioset = dense(self.config.classes_num, ("mlp", "vocab"), **kw)

    def __call__(self, waveform: jax.Array) -> dict[str, jax.Array]:
        if waveform.ndim != 2:
            raise ValueError(f"Cnn14: expected a batch of waveforms [B, N], got shape {waveform.shape}")
        if waveform.shape[-1] < self.config.min_samples():
            raise ValueError(f"Cnn14: waveforms of {waveform.shape[-1]} samples give fewer than "
                             f"{self.config.min_frames} frames, too few for five 2x2 poolings; pad them to at least "
                             f"{self.config.min_samples()} samples")
        mel = log_mel(jnp.asarray(waveform, jnp.float32), self.config.front_end)  # [B, T, 64]
        return self.from_log_mel(mel)

    def from_log_mel(self, mel: jax.Array) -> dict[str, jax.Array]:
        """The network after the front end: log-mel ``[B, T, 64]`` (T >= 32) -> the outputs of ``__call__``."""
        x = constrain(self.bn0(mel)[..., None], _SPATIAL)  # [B, T, F, 1]
        for block in self.conv_blocks:
            x = block(x)
        x = jnp.mean(x, axis=2)  # over frequency: [B, T', C]
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)  # over time: [B, C]
        embedding = constrain(nn.relu(self.fc1(x)), _VECTOR)
        logits = self.fc_audioset(embedding)
        return {"embedding": embedding, "logits": logits, "clipwise_output": jax.nn.sigmoid(logits)}


def dummy_waveform(config: PannsConfig = PannsConfig()) -> jax.Array:
    """The shortest input ``[1, config.min_samples()]`` (zeros): what initialises ``Cnn14(config)`` (the parameter
    shapes do not depend on the length)."""
    return jnp.zeros((1, config.min_samples()), jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def panns_outputs(params, waveforms: jax.Array, config: PannsConfig = PannsConfig(),
                  dtype: Dtype = jnp.float32) -> dict[str, jax.Array]:
    """Jitted CNN14 on a batch: ``waveforms [B, N]`` at ``config.front_end.sample_rate`` (16 kHz by default, ``N >=
    config.min_samples()``) -> ``{"embedding": [B, 2048], "logits": [B, 527], "clipwise_output": [B, 527]}`` in
    ``dtype``. ``params`` as :mod:`audioldm2_jax.convert.panns` returns them (boxed or plain). One compile per
    ``(B, N)``: callers that batch clips of varying length should pad or bucket them (padding changes the features:
    ``audioldm_eval`` feeds each clip alone at its own length)."""
    return Cnn14(config, dtype=dtype).apply({"params": params}, waveforms)
