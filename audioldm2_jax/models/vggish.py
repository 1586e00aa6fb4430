"""VGGish (Hershey et al. 2017, AudioSet's audio embedding), the network behind the Frechet Audio Distance: log-mel
examples ``[B, 96, 64]`` (:mod:`audioldm2_jax.audio.vggish_features`) -> 128-d embeddings ``[B, 128]``.

torchvggish's ``VGG``: six 3x3 convolutions (padding 1) with ReLU, channels 64, 128, 256, 256, 512, 512, and a 2x2
max-pool (stride 2) after the 1st, 2nd, 4th and 6th, taking ``96 x 64`` (time x mel) to ``6 x 4 x 512``; flattened in
(time, mel, channel) order (torchvggish transposes its NCHW output to NHWC before flattening, for the TensorFlow
original's layout: channels-last here, so no transpose); then Linear 12288 -> 4096, ReLU, Linear 4096 -> 4096, ReLU,
Linear 4096 -> 128, ReLU.

The FAD tools (``audioldm_eval``, ``fadtk``, ``frechet_audio_distance``) drop that last ReLU
(``embeddings = Sequential(*children[:-1])``) and the PCA / 8-bit quantisation postprocessor
(``postprocess = False``): :class:`VGGish` returns those raw embeddings unless ``config.final_relu``.

Submodule names are the reference's state-dict keys (``features.3`` -> ``features_3``, ``embeddings.4`` ->
``embeddings_4``), so conversion is the shared renaming (:mod:`audioldm2_jax.convert.vggish`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.audio.vggish_features import EXAMPLE_FRAMES, NUM_BANDS, log_mel_examples
from audioldm2_jax.models.layers import conv, dense
from audioldm2_jax.parallel.partitioning import constrain

Dtype = Any
_IMAGE = ("act_batch", "act_height", "act_width", "act_channels")

# torchvggish's ``make_layers``: an int is a 3x3 convolution with that many channels (+ ReLU), "M" a 2x2 max-pool.
# Each entry is one index of its ``features`` Sequential (a convolution and its ReLU take two).
LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
# ``embeddings``: Linear indices 0, 2, 4 (ReLUs at 1, 3, 5).
HIDDEN = 4096
EMBEDDING_SIZE = 128


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
    """The published VGGish has no hyper-parameters to choose; only the output does.

    final_relu: keep the ReLU after the 128-d layer (torchvggish's ``VGG`` as built). False (the default) is the
      embedding the FAD tools compute, with that ReLU removed.
    """

    final_relu: bool = False


def feature_index_names() -> tuple[tuple[str | int, int], ...]:
    """``(entry of LAYERS, index in the reference's features Sequential)`` for every entry."""
    out, index = [], 0
    for entry in LAYERS:
        out.append((entry, index))
        index += 1 if entry == "M" else 2  # a convolution is followed by its ReLU
    return tuple(out)


class VGGish(nn.Module):
    """``[B, 96, 64]`` (or ``[B, 96, 64, 1]``) log-mel examples -> ``[B, 128]`` embeddings."""

    config: VGGishConfig = VGGishConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, examples: jax.Array) -> jax.Array:
        if examples.ndim == 3:
            examples = examples[..., None]  # one input channel
        if examples.ndim != 4 or examples.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS, 1):
            raise ValueError(f"VGGish: expected log-mel examples [B, {EXAMPLE_FRAMES}, {NUM_BANDS}] (or with a "
                             f"trailing channel of 1), got shape {examples.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = constrain(examples.astype(self.dtype), _IMAGE)
        for entry, index in feature_index_names():
            if entry == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(conv(entry, 3, padding=1, name=f"features_{index}", **kw)(x))
        x = constrain(x, _IMAGE)  # [B, 6, 4, 512]
        x = x.reshape(x.shape[0], -1)  # (time, mel, channel) order, as the reference's NHWC flatten
        x = nn.relu(dense(HIDDEN, ("embed", "mlp"), name="embeddings_0", **kw)(x))
        x = nn.relu(dense(HIDDEN, ("mlp", "embed"), name="embeddings_2", **kw)(x))
        x = dense(EMBEDDING_SIZE, ("embed", None), name="embeddings_4", **kw)(x)
        return nn.relu(x) if self.config.final_relu else x


def vggish_dummy_inputs(config: VGGishConfig | None = None) -> tuple[jax.Array]:
    """One example ``[1, 96, 64]`` of zeros: the input ``init`` / ``eval_shape`` trace with."""
    return (jnp.zeros((1, EXAMPLE_FRAMES, NUM_BANDS), jnp.float32),)


def vggish_embeddings(params, waves: jax.Array, config: VGGishConfig = VGGishConfig(), *,
                      dtype: Dtype = jnp.float32) -> jax.Array:
    """Front end and network in one jit-able function: ``[..., N]`` equal-length 16 kHz clips (``N`` static, at
    least ``MIN_SAMPLES``) -> ``[..., E, 128]`` embeddings of their ``E = num_examples(N)`` 0.96 s examples.
    ``params`` is the bare tree of :func:`audioldm2_jax.convert.vggish.to_flax`. FAD pools the ``E`` rows of every
    clip (reshape to ``[-1, 128]``)."""
    examples = log_mel_examples(waves)  # [..., E, 96, 64]
    lead = examples.shape[:-2]
    out = VGGish(config, dtype=dtype).apply({"params": params}, examples.reshape((-1,) + examples.shape[-2:]))
    return out.reshape(lead + (EMBEDDING_SIZE,)).astype(jnp.float32)
