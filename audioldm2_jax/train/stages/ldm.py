"""The LDM stage: the T-UNet learns to denoise VAE latents of log-mel spectrograms, conditioned on the ground-truth
Language of Audio (LOA) of the same clip from a frozen AudioMAE (AudioLDM 2's self-supervised training) and, when
the UNet has a second context stream, on the frozen T5 encoding of its caption. A UNet without one (the speech
models: ``cross_attention_dim`` names only the GPT-2 / LOA stream) is conditioned on the LOA alone, and the stage
then neither builds nor runs T5 (no ``t5`` frozen component, no tokenised captions in the batch).

Per step:

- latents ``z = scale * VAE.encode(log_mel)`` (a posterior sample), ``scale`` found from data on a fresh run
  (``ldm.scale_by_std``: 1 / std of the first batch's latents) or fixed (``ldm.latent_scale``);
- LOA: AudioMAE features of the clip's fbank pooled at rate lambda (``ldm.loa_lambdas``: one value is fixed, several are
  drawn uniformly per step; each rate gives the UNet a different number of LOA tokens, so the step is compiled
  once per rate);
- condition dropout (``ldm.cond_dropout``): per example, the conditions are replaced by the unconditional ones
  used with classifier-free guidance: a zero LOA and (T5 stream) the T5 encoding of the empty caption;
- the denoising loss of :func:`audioldm2_jax.diffusion.diffusion_loss` (epsilon or v target, the configured
  scaled-linear schedule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.diffusion import NoiseSchedule, diffusion_loss, fixed_draw_errors, make_sampler, sample_loop
from audioldm2_jax.models.t5 import T5EncoderModel
from audioldm2_jax.models.unet import AudioLDM2UNet, context_dims
from audioldm2_jax.models.vae import AutoencoderKL
from audioldm2_jax.train import held_out
from audioldm2_jax.train.config import ConfigError
from audioldm2_jax.train.export import scheduler_config
from audioldm2_jax.train.stages import Stage, common


def schedule_from_config(config) -> NoiseSchedule:
    d = config.diffusion
    return NoiseSchedule.from_diffusers(dict(
        num_train_timesteps=int(d.num_train_timesteps), beta_start=float(d.beta_start), beta_end=float(d.beta_end),
        beta_schedule=str(d.beta_schedule), prediction_type=str(d.prediction_type)))


def uses_t5_stream(unet_config) -> bool:
    """Whether a UNet cross-attends to a second (T5) context stream besides the LOA."""
    return context_dims(unet_config)[1] is not None


class ConditionedLDM:
    """The UNet with its frozen conditioning (VAE, AudioMAE, and T5 when the UNet has a T5 stream), shared by the
    LDM and joint stages."""

    def __init__(self, stage: Stage, config, dtype):
        cfgs = stage.model_configs
        self.unet = AudioLDM2UNet(cfgs["unet"], dtype=dtype)
        self.vae = AutoencoderKL(cfgs["vae"], dtype=dtype)
        self.loa = common.LOAExtractor(cfgs["audiomae"], dtype)
        self.schedule = schedule_from_config(config)
        self.prediction_type = str(config.diffusion.prediction_type)
        self.scheduler_config = scheduler_config(config)  # the sampler settings of the export
        self.cond_dropout = float(config.ldm.cond_dropout)
        self.sample_posterior = bool(config.ldm.sample_posterior)
        self.vae_factor = cfgs["vae"].downsample_factor
        self.default_caption = str(config.text.get("default_caption", ""))

        d0, d1 = context_dims(cfgs["unet"])
        self.uses_t5 = d1 is not None
        if self.uses_t5 and common.text_encoder_2(config) == "vits":
            raise ConfigError(f"config error: model.text_encoder_2='vits' (a speech model), but "
                              f"model.unet.cross_attention_dim={cfgs['unet'].cross_attention_dim} has a T5 stream "
                              f"(width {d1}); the speech UNets attend to the GPT-2 / LOA stream only, e.g. "
                              "cross_attention_dim=((None, 768),) * 4")
        if self.uses_t5:
            self.t5 = T5EncoderModel(cfgs["t5"], dtype=dtype)
            self.t5_tokens = common.CaptionTokenizer(common.find_tokenizer(config, "t5"), config.text.t5_max_length)
        common.check_dims("model.unet LOA context width vs model.audiomae.embed_dim", d0, cfgs["audiomae"].embed_dim,
                          "the UNet cross-attends to AudioMAE / GPT-2 features")
        if d1 is not None:
            common.check_dims("model.unet T5 context width vs model.t5.d_model", d1, cfgs["t5"].d_model,
                              "the UNet cross-attends to T5 features")
        common.check_dims("model.unet.in_channels vs model.vae.latent_channels", cfgs["unet"].in_channels,
                          cfgs["vae"].latent_channels, "the UNet denoises VAE latents")

    def host_batch(self, batch, mae_config) -> dict:
        out = {"log_mel": common.log_mel(batch, self.vae_factor), "fbank": common.audiomae_fbank(batch, mae_config)}
        if self.uses_t5:
            out["t5_ids"], out["t5_mask"] = self.t5_tokens(common.captions_of(batch, self.default_caption))
        return out

    def latents(self, frozen, extras, batch, key):
        z = common.vae_latents(self.vae, frozen["vae"], batch["log_mel"], key if self.sample_posterior else None)
        return z * extras["latent_scale"]

    def t5_stream(self, frozen, batch, dropped):
        """The UNet's T5 context ``([B, L, D1], mask [B, L])`` of the (possibly dropped) captions, or
        ``(None, None)`` for a UNet without a T5 stream."""
        if not self.uses_t5:
            return None, None
        ids, mask = self.t5_tokens.drop(batch["t5_ids"], batch["t5_mask"], dropped)
        hidden = self.t5.apply({"params": frozen["t5"]}, ids, mask)
        return jax.lax.stop_gradient(hidden), mask

    def denoiser(self, unet_params, loa, t5_hidden, t5_mask):
        """``model_fn(x_t, t)``: the UNet's prediction for latents ``x_t`` at timesteps ``t`` under the conditions."""
        def model_fn(x, t):
            return self.unet.apply({"params": unet_params}, x, t, loa.astype(x.dtype), None, t5_hidden, t5_mask)

        return model_fn

    def denoising_loss(self, unet_params, latents, loa, t5_hidden, t5_mask, key):
        model_fn = self.denoiser(unet_params, loa, t5_hidden, t5_mask)
        return diffusion_loss(self.schedule, model_fn, latents, key, self.prediction_type)

    def held_out_errors(self, unet_params, frozen, extras, batch, loa, key, per_clip: int) -> jax.Array:
        """Denoising errors ``[B, K]`` at the fixed draws of :func:`~audioldm2_jax.diffusion.fixed_draw_errors` for the
        held-out clips ``batch["eval_index"]``: the posterior's mode as latents, no condition dropout."""
        latents = common.vae_latents(self.vae, frozen["vae"], batch["log_mel"], None) * extras["latent_scale"]
        t5_hidden, t5_mask = self.t5_stream(frozen, batch, jnp.zeros((latents.shape[0],), bool))
        errors, _ = fixed_draw_errors(self.schedule, self.denoiser(unet_params, loa, t5_hidden, t5_mask), latents,
                                      batch[held_out.CLIP_INDEX], key, per_clip, self.prediction_type)
        return errors

    def sample_mels(self, unet_params, vae_params, latent_scale, loa, t5_hidden, t5_mask, shape, key, steps: int):
        """Log-mel spectrograms ``[B, T, F]`` generated by DDIM (``steps`` steps, no guidance) from the given
        conditions, decoded by the VAE: what the training logs show of the UNet's progress."""
        sampler = make_sampler("ddim", self.scheduler_config, int(steps))
        denoise = self.denoiser(unet_params, loa, t5_hidden, t5_mask)
        z = sample_loop(sampler, denoise, jax.random.normal(key, shape, jnp.float32) * sampler.init_noise_sigma)
        mel = self.vae.apply({"params": vae_params}, z / latent_scale, method=AutoencoderKL.decode)
        return mel[..., 0]


class LDMStage(Stage):
    name = "ldm"
    group_components = {"unet": ("unet",)}
    frozen_components = ("vae", "audiomae", "t5")  # without "t5" for a UNet with no T5 stream (per instance)
    reads_from = {"vae": "vae", "audiomae": "audiomae"}

    def __init__(self, config, dtype=jnp.float32):
        # Decided before the base class loads weights, so that a speech UNet never loads (or exports) a T5.
        self.frozen_components = ("vae", "audiomae") + (("t5",) if uses_t5_stream(common.unet_config(config)) else ())
        self.passenger_components = common.passenger_components(config, Stage.passenger_components)
        super().__init__(config, dtype)
        self.ldm = ConditionedLDM(self, config, dtype)
        self.lambdas = tuple(int(v) for v in config.ldm.loa_lambdas)
        for lam in self.lambdas:
            self.ldm.loa.check_lambda(lam)
        self.scale_by_std = bool(config.ldm.scale_by_std)
        self.fixed_scale = float(config.ldm.latent_scale)
        self.seed = int(config.seed)

    def host_batch(self, batch):
        return self.ldm.host_batch(batch, self.model_configs["audiomae"])

    def step_options(self, step: int):
        if len(self.lambdas) == 1:
            return self.lambdas[0]
        # A host-side draw, reproducible from (seed, step) so that a resumed run picks the same rates.
        return self.lambdas[int(np.random.default_rng([self.seed, 17, int(step)]).integers(len(self.lambdas)))]

    def extras_template(self):
        return {"latent_scale": jnp.asarray(self.fixed_scale, jnp.float32)}

    def initial_extras(self, frozen, batch, rng):
        if not self.scale_by_std:
            return self.extras_template()
        z = common.vae_latents(self.ldm.vae, frozen["vae"], batch["log_mel"],
                               rng if self.ldm.sample_posterior else None)
        return {"latent_scale": (1.0 / jnp.maximum(jnp.std(z.astype(jnp.float32)), 1e-6)).astype(jnp.float32)}

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        lam = options
        k_post, k_drop, k_diff = jax.random.split(rng, 3)
        latents = self.ldm.latents(frozen, extras, batch, k_post)
        loa = self.ldm.loa(frozen["audiomae"], batch["fbank"], lam)
        dropped = jax.random.bernoulli(k_drop, self.ldm.cond_dropout, (latents.shape[0],))
        t5_hidden, t5_mask = self.ldm.t5_stream(frozen, batch, dropped)
        loa = jnp.where(dropped[:, None, None], 0.0, loa)
        loss = self.ldm.denoising_loss(params["unet"]["unet"], latents, loa, t5_hidden, t5_mask, k_diff)
        return loss, {"latent_std": jnp.std(latents.astype(jnp.float32)), "cond_dropped": dropped.mean()}

    def held_out_losses(self, params, frozen, extras, batch, key, per_clip):
        """The denoising loss at fixed draws, conditioned on the clip's LOA at the largest pooling rate trained and
        its caption: ``loss`` over every draw and ``loss_t<lo>-<hi>`` per timestep stratum."""
        loa = self.ldm.loa(frozen["audiomae"], batch["fbank"], max(self.lambdas))
        errors = self.ldm.held_out_errors(params["unet"]["unet"], frozen, extras, batch, loa, key, per_clip)
        return held_out.timestep_bands(errors, self.ldm.schedule.num_train_timesteps)

    def samples(self, params, frozen, extras, batch, rng):
        """For the first ``log.num_samples`` clips of the logged batch: the input log-mel and one generated from
        the clip's own LOA (at the largest pooling rate trained) and caption."""
        n = min(int(self.config.log.num_samples), batch["log_mel"].shape[0])
        part = {k: v[:n] for k, v in batch.items()}
        lam = max(self.lambdas)
        shape = jax.eval_shape(lambda: self.ldm.latents(frozen, extras, part, None)).shape

        @jax.jit
        def generate(unet_params, frozen, extras, part, key):
            loa = self.ldm.loa(frozen["audiomae"], part["fbank"], lam)
            t5_hidden, t5_mask = self.ldm.t5_stream(frozen, part, jnp.zeros((n,), bool))
            return self.ldm.sample_mels(unet_params, frozen["vae"], extras["latent_scale"], loa, t5_hidden, t5_mask,
                                        shape, key, int(self.config.log.sample_steps))

        generated = jax.device_get(generate(params["unet"]["unet"], frozen, extras, part, rng))
        inputs = jax.device_get(part["log_mel"])
        out = {}
        for i in range(n):
            out[f"input_{i}"] = {"mel": inputs[i]}
            out[f"generated_{i}"] = {"mel": generated[i]}
        return out

    def export_components(self, params, frozen, extras):
        return common.with_latent_scale(super().export_components(params, frozen, extras), extras)


STAGE = LDMStage
