"""The vocoder stage: HiFi-GAN (V1 recipe) from log-mel spectrograms to 16 kHz waveforms.

Each step crops, per example, a random ``vocoder.segment_frames``-frame window of the clip's log-mel and the
matching ``160 * segment_frames`` samples of its waveform (on the device, from the step's random key), then:

- ``generator`` (the vocoder): ``adv_weight * (LSGAN_g(MPD) + LSGAN_g(MSD)) + feature_weight-scaled feature
  matching (both discriminators) + mel_weight * L1(log-mel(y_hat), log-mel(y))``, plus, when
  ``vocoder.stft_weight > 0``, that weight times the multi-resolution STFT loss (``vocoder.stft_resolutions``);
- ``discriminator`` (multi-period + multi-scale): ``LSGAN_d(MPD) + LSGAN_d(MSD)`` on the real segment and the
  (stop-gradient) generated one.

The log-mel of the loss is the front end of the data pipeline (``audioldm2_jax.audio.mel``) with a magnitude whose
gradient stays finite at zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.audio import mel as mel_lib
from audioldm2_jax.audio import stft
from audioldm2_jax.models.discriminators import (HifiGanDiscriminatorConfig, MultiPeriodDiscriminator,
                                                 MultiScaleDiscriminator)
from audioldm2_jax.models.vocoder import HifiGanVocoder
from audioldm2_jax.train import gan_losses, held_out
from audioldm2_jax.train.config import ConfigError
from audioldm2_jax.train.stages import Stage, common

HOP = mel_lib.HOP_LENGTH


def differentiable_log_mel(wave: jax.Array) -> jax.Array:
    """``[B, N] -> [B, N // 160, 64]``: the pipeline's log-mel, with ``sqrt(re^2 + im^2 + 1e-12)`` as the magnitude
    (``|z|`` has no gradient at 0)."""
    spectrum = stft.stft(wave.astype(jnp.float32), mel_lib.hann_window(), HOP, pad=mel_lib.PAD)
    magnitude = jnp.sqrt(jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2 + 1e-12)
    mel = jnp.matmul(magnitude, jnp.asarray(mel_lib.mel_basis().T), precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, mel_lib.LOG_FLOOR))


def random_segments(key, mel: jax.Array, wave: jax.Array, frames: int):
    """Per example, frames ``[s, s + frames)`` of ``mel [B, T, F]`` and samples ``[160 s, 160 (s + frames))`` of
    ``wave [B, N]``, ``s`` uniform over the valid starts."""
    b, t, f = mel.shape
    starts = jax.random.randint(key, (b,), 0, t - frames + 1)
    mel_seg = jax.vmap(lambda m, s: jax.lax.dynamic_slice(m, (s, 0), (frames, f)))(mel, starts)
    wave_seg = jax.vmap(lambda w, s: jax.lax.dynamic_slice(w, (s * HOP,), (frames * HOP,)))(wave, starts)
    return mel_seg, wave_seg


class VocoderStage(Stage):
    name = "vocoder"
    group_components = {"generator": ("vocoder",), "discriminator": ("mpd", "msd")}
    frozen_components = ()

    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        v = config.vocoder
        self.segment = int(v.segment_frames)
        self.mel_weight = float(v.mel_weight)
        self.feature_weight = float(v.feature_weight)
        self.adv_weight = float(v.adv_weight)
        self.stft_weight = float(v.get("stft_weight", 0.0))
        self.stft_resolutions = tuple((int(n), int(h)) for n, h in v.get("stft_resolutions", ()))
        # Without adversarial and feature-matching terms the discriminators would train for nothing: the run has
        # the generator alone (spectral losses only), and its checkpoints hold no discriminator.
        self.adversarial = self.adv_weight > 0 or self.feature_weight > 0
        if not self.adversarial:
            self.group_components = {"generator": ("vocoder",)}
        self.vocoder = HifiGanVocoder(self.model_configs["vocoder"], dtype=dtype)
        disc = config.model.discriminator.to_dict() if hasattr(config.model.discriminator, "to_dict") \
            else dict(config.model.discriminator)
        self.disc_config = HifiGanDiscriminatorConfig.from_dict(disc)
        self.mpd = MultiPeriodDiscriminator(self.disc_config, dtype=dtype)
        self.msd = MultiScaleDiscriminator(self.disc_config, dtype=dtype)
        cfg = self.model_configs["vocoder"]
        if cfg.hop_length != HOP:
            raise ConfigError(f"config error: model.vocoder upsamples by {cfg.hop_length} (the product of "
                              f"upsample_rates); the mel front end hops {HOP} samples per frame")
        if cfg.output_length(self.segment) < self.segment * HOP:
            raise ConfigError(f"config error: model.vocoder makes {cfg.output_length(self.segment)} samples from "
                              f"{self.segment} frames, fewer than {self.segment * HOP}")
        if self.stft_weight > 0 and max(n for n, _ in self.stft_resolutions) > self.segment * HOP:
            raise ConfigError(f"config error: vocoder.stft_resolutions has n_fft "
                              f"{max(n for n, _ in self.stft_resolutions)} > the {self.segment * HOP} samples of a "
                              f"segment (vocoder.segment_frames={self.segment})")

    def init_component(self, name, rng):
        wave = jnp.zeros((1, self.segment * HOP), jnp.float32)
        if name == "mpd":
            return self.mpd.init(rng, wave)["params"]
        if name == "msd":
            return self.msd.init(rng, wave)["params"]
        return super().init_component(name, rng)

    def host_batch(self, batch):
        mel = common.log_mel(batch)
        if mel.shape[1] < self.segment:
            raise ConfigError(f"config error: vocoder.segment_frames={self.segment} exceeds the clips' "
                              f"{mel.shape[1]} mel frames")
        wave = np.asarray(batch["waveform"], np.float32)[:, :mel.shape[1] * HOP]
        return {"log_mel": mel, "waveform": wave}

    def _generate(self, vocoder_params, mel_seg):
        return self.vocoder.apply({"params": vocoder_params}, mel_seg)[:, :self.segment * HOP]

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        mel_seg, wave_seg = random_segments(rng, batch["log_mel"], batch["waveform"], self.segment)
        if group == "generator":
            fake = self._generate(params["generator"]["vocoder"], mel_seg)
            mel_l1 = gan_losses.mel_l1_loss(differentiable_log_mel(wave_seg), differentiable_log_mel(fake))
            loss, parts = self.mel_weight * mel_l1, {"mel_l1": mel_l1}
            if self.stft_weight > 0:
                parts["stft"] = gan_losses.multi_resolution_stft_loss(wave_seg, fake, self.stft_resolutions)
                loss = loss + self.stft_weight * parts["stft"]
            if not self.adversarial:
                return loss, parts
            disc = params["discriminator"]
            mpd_params, msd_params = (jax.lax.stop_gradient(disc[k]) for k in ("mpd", "msd"))
            mpd_real, mpd_fmaps_real = self.mpd.apply({"params": mpd_params}, wave_seg)
            mpd_fake, mpd_fmaps_fake = self.mpd.apply({"params": mpd_params}, fake)
            msd_real, msd_fmaps_real = self.msd.apply({"params": msd_params}, wave_seg)
            msd_fake, msd_fmaps_fake = self.msd.apply({"params": msd_params}, fake)
            adv = gan_losses.lsgan_g_loss(mpd_fake) + gan_losses.lsgan_g_loss(msd_fake)
            features = (gan_losses.feature_matching_loss(mpd_fmaps_real, mpd_fmaps_fake, self.feature_weight)
                        + gan_losses.feature_matching_loss(msd_fmaps_real, msd_fmaps_fake, self.feature_weight))
            parts.update(adv=adv, feature_matching=features)
            return loss + self.adv_weight * adv + features, parts
        disc = params["discriminator"]
        fake = jax.lax.stop_gradient(self._generate(params["generator"]["vocoder"], mel_seg))
        mpd_real, _ = self.mpd.apply({"params": disc["mpd"]}, wave_seg)
        mpd_fake, _ = self.mpd.apply({"params": disc["mpd"]}, fake)
        msd_real, _ = self.msd.apply({"params": disc["msd"]}, wave_seg)
        msd_fake, _ = self.msd.apply({"params": disc["msd"]}, fake)
        loss = gan_losses.lsgan_d_loss(mpd_real, mpd_fake) + gan_losses.lsgan_d_loss(msd_real, msd_fake)
        return loss, {}

    def held_out_losses(self, params, frozen, extras, batch, key, per_clip):
        """``loss``: the L1 distance of log-mels (the generator's mel term, unweighted) over whole clips."""
        wave = batch["waveform"]
        fake = self.vocoder.apply({"params": params["generator"]["vocoder"]}, batch["log_mel"])
        n = min(fake.shape[1], wave.shape[1])
        mel_l1 = gan_losses.mel_l1_loss(differentiable_log_mel(wave[:, :n]), differentiable_log_mel(fake[:, :n]))
        return {"loss": held_out.batch_mean(mel_l1, wave.shape[0])}

    def export_components(self, params, frozen, extras):
        out = super().export_components(params, frozen, extras)
        for name in ("mpd", "msd"):
            out.pop(name, None)
        return out

    def samples(self, params, frozen, extras, batch, rng):
        mel = batch["log_mel"][:1]
        wave = jax.jit(lambda p, m: self.vocoder.apply({"params": p}, m))(params["generator"]["vocoder"], mel)
        return {"vocoded": {"waveform": jax.device_get(wave[0]), "mel": jax.device_get(mel[0])}}


STAGE = VocoderStage
