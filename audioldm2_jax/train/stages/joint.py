"""The joint stage: GPT-2 (with the projection model) and the T-UNet fine-tuned together, AudioLDM 2's last step.

The UNet is conditioned through the probabilistic *switcher*: per example, with probability ``joint.p_gt`` the
ground-truth LOA (frozen AudioMAE), otherwise GPT-2's teacher-forced LOA prediction for the caption, whose
gradient then reaches GPT-2 and the projection through the denoising loss. The loss is

    denoising loss (LDM stage) + joint.gpt2_loss_weight * LOA regression loss (GPT-2 stage)

Condition dropout follows both stages: a dropped example has the empty caption (CLAP and T5; speech models: an
empty phoneme stream), a zero LOA target, and the UNet sees the zero LOA (ground-truth branch) or GPT-2's LOA for
the empty prompt (predicted branch). The latent scale is the LDM stage's (read from its exported VAE).

Speech models (``model.text_encoder_2="vits"``): GPT-2 reads CLAP of the caption and VITS of the transcription,
and the UNet, which has no T5 stream, attends to the LOA only; T5 is not part of the stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from audioldm2_jax.train import held_out
from audioldm2_jax.train.stages import Stage
from audioldm2_jax.train.stages import common
from audioldm2_jax.train.stages.gpt2 import TextToLOA
from audioldm2_jax.train.stages.ldm import ConditionedLDM


def switch_loa(key: jax.Array, ground_truth: jax.Array, predicted: jax.Array, p_gt: float):
    """The switcher: per example ``[B]``, the ground-truth LOA with probability ``p_gt``, else the prediction.

    Returns ``(loa [B, N, D], use_ground_truth bool [B])``."""
    use_gt = jax.random.bernoulli(key, p_gt, (ground_truth.shape[0],))
    return jnp.where(use_gt[:, None, None], ground_truth.astype(predicted.dtype), predicted), use_gt


class JointStage(Stage):
    name = "joint"
    group_components = {"model": ("unet", "projection", "gpt2")}
    frozen_components = ("vae", "audiomae", "t5", "clap")  # "vits" in place of "t5" for speech models (per instance)
    reads_from = {"unet": "ldm", "vae": "ldm", "audiomae": "audiomae", "gpt2": "gpt2", "projection": "gpt2"}
    carries_from = {"vocoder": "vocoder"}  # so that the last export is a complete model

    def __init__(self, config, dtype=jnp.float32):
        self.frozen_components = ("vae", "audiomae", common.text_encoder_2(config), "clap")
        self.passenger_components = common.passenger_components(config, Stage.passenger_components)
        super().__init__(config, dtype)
        self.ldm = ConditionedLDM(self, config, dtype)
        self.text = TextToLOA(self, config, dtype)
        self.p_gt = float(config.joint.p_gt)
        self.gpt2_weight = float(config.joint.gpt2_loss_weight)
        self.cond_dropout = float(config.ldm.cond_dropout)
        vae_extra = self.loaded.get("vae", (None, None, {}))[2]
        self.latent_scale = float(vae_extra.get("latent_scale", config.ldm.latent_scale))

    def host_batch(self, batch):
        out = self.text.host_batch(batch, self.model_configs["audiomae"])
        out["log_mel"] = common.log_mel(batch, self.ldm.vae_factor)
        return out

    def extras_template(self):
        return {"latent_scale": jnp.asarray(self.latent_scale, jnp.float32)}

    def initial_extras(self, frozen, batch, rng):
        return self.extras_template()

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        k_text, k_post, k_switch, k_diff = jax.random.split(rng, 4)
        model = params["model"]
        gpt2_loss, pred, target, dropped, metrics = self.text.loss_and_predictions(
            model, frozen, batch, k_text, self.cond_dropout)
        # T5 stream of the UNet (if it has one): the same (possibly dropped) captions GPT-2 read
        t5_hidden, t5_mask = self.ldm.t5_stream(frozen, batch, dropped)
        loa, use_gt = switch_loa(k_switch, target, pred, self.p_gt)
        latents = self.ldm.latents(frozen, extras, batch, k_post)
        ldm_loss = self.ldm.denoising_loss(model["unet"], latents, loa, t5_hidden, t5_mask, k_diff)
        metrics = {**metrics, "ldm_loss": ldm_loss, "gpt2_loss": gpt2_loss,
                   "switch_gt_fraction": use_gt.astype(jnp.float32).mean()}
        return ldm_loss + self.gpt2_weight * gpt2_loss, metrics

    def held_out_losses(self, params, frozen, extras, batch, key, per_clip):
        """Without condition dropout: GPT-2's LOA loss (``gpt2_loss``, ``loa_cosine``), the denoising loss at fixed draws
        given the ground-truth LOA (``ldm_loss`` and its timestep strata) and given GPT-2's teacher-forced LOA
        (``ldm_loss_predicted_loa``), and ``loss``, the training objective's expectation over the switcher."""
        model = params["model"]
        size = batch[held_out.CLIP_INDEX].shape[0]
        gpt2_loss, predicted, target, _, metrics = self.text.loss_and_predictions(model, frozen, batch, key, 0.0)
        with_target = self.ldm.held_out_errors(model["unet"], frozen, extras, batch, target, key, per_clip)
        with_predicted = self.ldm.held_out_errors(model["unet"], frozen, extras, batch, predicted, key, per_clip)
        per_clip_ldm = self.p_gt * with_target.mean(axis=1) + (1.0 - self.p_gt) * with_predicted.mean(axis=1)
        loss_sum, count = held_out.total(per_clip_ldm)
        return {"loss": (loss_sum + self.gpt2_weight * gpt2_loss * size, count),
                **held_out.timestep_bands(with_target, self.ldm.schedule.num_train_timesteps, "ldm_loss"),
                "ldm_loss_predicted_loa": held_out.total(with_predicted),
                "gpt2_loss": held_out.batch_mean(gpt2_loss, size),
                "loa_cosine": held_out.batch_mean(metrics["loa_cosine"], size)}

    def export_components(self, params, frozen, extras):
        return common.with_latent_scale(super().export_components(params, frozen, extras), extras)


STAGE = JointStage
