"""A tiny stage that exercises every part of the training system at almost no compile cost: for smoke-testing a
new machine or cluster (mesh, multi-host start, checkpoints, preemption, logging) and for the loop's tests.

Two parameter groups, updated one after the other like a GAN stage's:

- ``denoiser``: an MLP over log-mel frames that predicts the noise added to them (frame-wise, conditioned on the
  noise level), with logically partitioned weights;
- ``probe``: a linear read-out of each clip's mean log-mel energy from the denoiser's (stop-gradient) features,
  so the second group's loss depends on the first group's freshly updated parameters.

A run-level extra (``mel_scale``, 1 / std of the first batch) and a static per-step option (a different program every fifth step)
exercise the same paths as the LDM stage's latent scale and LOA pooling rate. The loop's tests inject faults (a
non-finite loss, slow batches) through a subclass of their own (``tests/toy_faults.py``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from audioldm2_jax.models.layers import dense
from audioldm2_jax.train.stages import Stage
from audioldm2_jax.train.stages import common


class FrameDenoiser(nn.Module):
    """``[B, T, F]`` noisy frames and noise level ``[B]`` -> ``(predicted noise [B, T, F], features [B, T, H])``."""

    hidden: int = 64
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, sigma):
        kw = dict(dtype=self.dtype)
        h = dense(self.hidden, ("embed", "mlp"), name="fc_in", **kw)(x)
        h = h + dense(self.hidden, (None, "mlp"), name="fc_sigma", **kw)(sigma[:, None, None])
        h = nn.silu(h)
        h = nn.silu(dense(self.hidden, ("mlp", "embed"), name="fc_mid", **kw)(h))
        return dense(x.shape[-1], ("embed", "mlp"), name="fc_out", **kw)(h), h


class Probe(nn.Module):
    @nn.compact
    def __call__(self, features):
        return dense(1, ("embed", None), name="linear")(features.mean(axis=1))[:, 0]


class ToyStage(Stage):
    name = "toy"
    group_components = {"denoiser": ("denoiser",), "probe": ("probe",)}
    frozen_components = ()
    passenger_components = ()

    def __init__(self, config, dtype=jnp.float32):
        super().__init__(config, dtype)
        self.denoiser = FrameDenoiser(int(config.toy.hidden), dtype=dtype)
        self.probe = Probe()
        self.bins = 64

    def components(self):
        return ()

    def init_component(self, name, rng):
        x = jnp.zeros((1, 2, self.bins), jnp.float32)
        if name == "denoiser":
            return self.denoiser.init(rng, x, jnp.zeros((1,)))["params"]
        features = jnp.zeros((1, 2, int(self.config.toy.hidden)), jnp.float32)
        return self.probe.init(rng, features)["params"]

    def host_batch(self, batch):
        return {"log_mel": common.log_mel(batch)}

    def step_options(self, step):
        return int(int(step) % 5 == 4)  # a second program every fifth step

    def extras_template(self):
        return {"mel_scale": jnp.ones((), jnp.float32)}

    def initial_extras(self, frozen, batch, rng):
        return {"mel_scale": 1.0 / jnp.maximum(jnp.std(batch["log_mel"]), 1e-6)}

    def _denoise(self, params, batch, extras, key):
        mel = (batch["log_mel"] - jnp.mean(batch["log_mel"])) * extras["mel_scale"]
        k_sigma, k_noise = jax.random.split(key)
        sigma = jax.random.uniform(k_sigma, (mel.shape[0],), minval=0.1, maxval=1.0)
        noise = jax.random.normal(k_noise, mel.shape)
        pred, features = self.denoiser.apply({"params": params}, mel + sigma[:, None, None] * noise, sigma)
        return jnp.mean(jnp.square(pred - noise)), features

    def loss(self, group, params, frozen, extras, batch, rng, step, options):
        if group == "denoiser":
            loss, _ = self._denoise(params["denoiser"]["denoiser"], batch, extras, rng)
            # the option changes the program (a second compiled step) but not the value
            loss = loss + 0.0 * options
            return loss, {}
        _, features = self._denoise(params["denoiser"]["denoiser"], batch, extras, rng)
        target = jnp.mean(batch["log_mel"], axis=(1, 2))
        pred = self.probe.apply({"params": params["probe"]["probe"]}, jax.lax.stop_gradient(features))
        return jnp.mean(jnp.square(pred - target)), {"target_mean": jnp.mean(target)}

    def export_components(self, params, frozen, extras):
        return {}


STAGE = ToyStage
