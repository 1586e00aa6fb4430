"""The VAE stage: the mel-spectrogram autoencoder (AudioLDM's ``AutoencoderKL`` with taming's
``LPIPSWithDiscriminator`` loss, without the perceptual term, which has no counterpart for spectrograms).

Groups, updated in this order every step:

- ``vae`` (generator): ``nll + kl_weight * KL + d_weight * warmup * disc_factor * g_loss`` where ``nll`` is the L1
  reconstruction error of the log-mel ``[B, T, 64]`` summed per example (taming's normalisation, against which
  ``vae.kl_weight`` = 1e-6 is set), ``KL`` the posterior's KL to N(0, I) summed per example, ``g_loss`` the hinge
  generator loss of the PatchGAN, and ``d_weight = vae.disc_weight * ||grad_W nll|| / ||grad_W g_loss||`` the
  adaptive weight at the decoder's last layer ``W`` (``vae.adaptive_weight``);
- ``discriminator``: ``warmup * disc_factor * hinge(D(x), D(x_hat))``.

``warmup`` switches the adversarial terms on at ``vae.disc_start``. With ``vae.disc_start`` beyond ``num_steps``
the discriminator is neither built nor compiled (reconstruction + KL only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from audioldm2_jax.models.discriminators import PatchGANConfig, PatchGANDiscriminator
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.train import gan_losses, held_out
from audioldm2_jax.train.stages import Stage
from audioldm2_jax.train.stages import common


def reconstruction_l1(mel: jax.Array, recon: jax.Array) -> jax.Array:
    """``sum |x - x_hat|`` per example, averaged over the batch (taming's ``sum(nll) / B`` with logvar 0)."""
    error = jnp.abs(mel.astype(jnp.float32) - recon.astype(jnp.float32))
    return jnp.sum(error) / mel.shape[0]


class VAEStage(Stage):
    name = "vae"
    group_components = {"vae": ("vae",), "discriminator": ("discriminator",)}
    frozen_components = ()

    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        v = config.vae
        self.adversarial = int(v.disc_start) < int(config.num_steps) and float(v.disc_weight) > 0
        if not self.adversarial:
            self.group_components = {"vae": ("vae",)}
        self.vae = AutoencoderKL(self.model_configs["vae"], dtype=dtype)
        disc_config = dict(config.model.discriminator.to_dict()) if hasattr(config.model.discriminator, "to_dict") \
            else dict(config.model.discriminator)
        self.disc_config = PatchGANConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in disc_config.items()})
        self.disc = PatchGANDiscriminator(self.disc_config, dtype=dtype)
        self.kl_weight = float(v.kl_weight)
        self.disc_start = int(v.disc_start)
        self.disc_weight = float(v.disc_weight)
        self.disc_factor = float(v.disc_factor)
        self.adaptive = bool(v.adaptive_weight)
        self.sample_posterior = bool(v.sample_posterior)
        self.factor = self.model_configs["vae"].downsample_factor

    def init_component(self, name, rng):
        if name == "discriminator":
            return self.disc.init(rng, jnp.zeros((1, 32, 32, 1), jnp.float32))["params"]
        return super().init_component(name, rng)

    def host_batch(self, batch):
        return {"log_mel": common.log_mel(batch, self.factor)}

    def _reconstruct(self, vae_params, mel, key):
        recon, posterior = self.vae.apply({"params": vae_params}, mel[..., None],
                                          key if self.sample_posterior else None)
        return recon, posterior

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        mel = batch["log_mel"]
        vae_params = params["vae"]["vae"]
        if group == "vae":
            recon, posterior = self._reconstruct(vae_params, mel, rng)
            nll = reconstruction_l1(mel[..., None], recon)
            kl = jnp.mean(posterior.kl())
            loss = nll + self.kl_weight * kl
            metrics = {"rec_l1": jnp.mean(jnp.abs(mel[..., None] - recon.astype(jnp.float32))), "kl": kl}
            if self.adversarial:
                disc_params = jax.lax.stop_gradient(params["discriminator"]["discriminator"])
                warmup = gan_losses.gan_warmup(step, self.disc_start) * self.disc_factor

                def losses_fn(p):
                    r, _ = self._reconstruct(p, mel, rng)
                    return reconstruction_l1(mel[..., None], r), gan_losses.hinge_g_loss(
                        self.disc.apply({"params": disc_params}, r))

                g_loss = gan_losses.hinge_g_loss(self.disc.apply({"params": disc_params}, recon))
                if self.adaptive:
                    nll_norm, g_norm = gan_losses.last_layer_grad_norms(losses_fn, vae_params)
                    d_weight = gan_losses.adaptive_gan_weight(nll_norm, g_norm) * self.disc_weight
                else:
                    d_weight = jnp.asarray(self.disc_weight, jnp.float32)
                loss = loss + d_weight * warmup * g_loss
                metrics.update({"g_loss": g_loss, "d_weight": d_weight})
            return loss, metrics
        # discriminator
        recon, _ = self._reconstruct(vae_params, mel, rng)
        recon = jax.lax.stop_gradient(recon)
        disc_params = params["discriminator"]["discriminator"]
        real = self.disc.apply({"params": disc_params}, mel[..., None])
        fake = self.disc.apply({"params": disc_params}, recon)
        warmup = gan_losses.gan_warmup(step, self.disc_start) * self.disc_factor
        d_loss = gan_losses.hinge_d_loss(real, fake)
        return warmup * d_loss, {"d_loss_raw": d_loss, "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}

    def held_out_losses(self, params, frozen, extras, batch, key, per_clip):
        """Reconstruction from the posterior's mode: ``loss`` (``nll + kl_weight * KL``, the generator's objective
        without the adversarial term), ``rec_l1`` (per element) and ``kl``."""
        mel = batch["log_mel"][..., None]
        recon, posterior = self._reconstruct(params["vae"]["vae"], mel[..., 0], None)
        kl = jnp.mean(posterior.kl())
        size = mel.shape[0]
        return {"loss": held_out.batch_mean(reconstruction_l1(mel, recon) + self.kl_weight * kl, size),
                "rec_l1": held_out.total(jnp.abs(mel - recon.astype(jnp.float32))),
                "kl": held_out.batch_mean(kl, size)}

    def export_components(self, params, frozen, extras):
        out = super().export_components(params, frozen, extras)
        out.pop("discriminator", None)
        return out

    def samples(self, params, frozen, extras, batch, rng):
        mel = batch["log_mel"][:1]
        recon, _ = jax.jit(lambda p, m: self._reconstruct(p, m, None))(params["vae"]["vae"], mel)
        return {"input": {"mel": jax.device_get(mel[0])}, "reconstruction": {"mel": jax.device_get(recon[0, ..., 0])}}


STAGE = VAEStage
