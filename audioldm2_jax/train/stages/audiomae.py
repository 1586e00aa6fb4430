"""The AudioMAE stage: masked-patch pretraining of the audio encoder whose features become the Language of Audio.

A wrapper around :func:`audioldm2_jax.train.mae_step.mae_loss`: the fbank of each clip (``[B, input_frames,
128]``) is cut into 16x16 patches, ``audiomae.mask_ratio`` (0.8) of them are hidden, and the decoder reconstructs
the hidden ones (MSE on per-patch normalised targets). The export holds encoder and decoder; later stages keep the
encoder frozen.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from audioldm2_jax.models.audiomae import MaskedAutoencoder
from audioldm2_jax.train.mae_step import mae_loss
from audioldm2_jax.train.stages import Stage
from audioldm2_jax.train.stages import common


class AudioMAEStage(Stage):
    name = "audiomae"
    group_components = {"audiomae": ("audiomae",)}
    frozen_components = ()

    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        ratio = float(config.audiomae.mask_ratio)
        self.model_configs["audiomae"] = dataclasses.replace(self.model_configs["audiomae"], mask_ratio=ratio)
        self.model = MaskedAutoencoder(self.model_configs["audiomae"], dtype=dtype)

    def host_batch(self, batch):
        return {"fbank": common.audiomae_fbank(batch, self.model_configs["audiomae"])}

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        loss, aux = mae_loss(params["audiomae"]["audiomae"], batch, rng, model=self.model)
        return loss, {"masked_fraction": jnp.mean(aux["mask"])}


STAGE = AudioMAEStage
