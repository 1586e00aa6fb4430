"""Adversarial and reconstruction losses of the VAE and vocoder training stages, as pure functions.

VAE stage (AudioLDM / taming ``LPIPSWithDiscriminator``, PatchGAN logits):
    d_loss = gan_warmup(step, disc_start) * hinge_d_loss(D(x), D(x_hat))
    g_loss = hinge_g_loss(D(x_hat))
    weight = disc_weight * adaptive_gan_weight(*last_layer_grad_norms(...))
    loss   = nll + kl_weight * kl_loss(mean, logvar) + weight * gan_warmup(step, disc_start) * g_loss

Vocoder stage (HiFi-GAN, MPD and MSD outputs):
    d_loss = lsgan_d_loss(mpd(y), mpd(y_hat)) + lsgan_d_loss(msd(y), msd(y_hat))
    g_loss = lsgan_g_loss(...) (both) + feature_matching_loss(...) (both, weight 2) + 45 * mel_l1_loss(mel, mel_hat)
             [+ stft_weight * multi_resolution_stft_loss(y, y_hat)]   (optional, Parallel WaveGAN's auxiliary loss)

All losses are float32 scalars (inputs are upcast), whatever the compute dtype of the networks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from audioldm2_jax.audio import stft
from audioldm2_jax.models.vae import DiagonalGaussian

Logits = jax.Array | Sequence[jax.Array]


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _as_list(logits: Logits) -> list[jax.Array]:
    """One array (one discriminator) or a sequence of them (one per sub-discriminator)."""
    if isinstance(logits, (list, tuple)):
        return [_f32(x) for x in logits]
    return [_f32(logits)]


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN losses (VAE stage)
# ----------------------------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))``.

    ``logits_*``: any shape (e.g. PatchGAN ``[B, T', F', 1]``); means run over all elements.
    """
    real, fake = _f32(logits_real), _f32(logits_fake)
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Non-saturating cross-entropy loss (taming's ``disc_loss="vanilla"``):
    ``0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_hat))))``."""
    real, fake = _f32(logits_real), _f32(logits_fake)
    return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator loss paired with the hinge discriminator loss: ``-mean(D(x_hat))``."""
    return -jnp.mean(_f32(logits_fake))


# ----------------------------------------------------------------------------------------------------------------
# HiFi-GAN losses (vocoder stage)
# ----------------------------------------------------------------------------------------------------------------


def lsgan_d_loss(logits_real: Logits, logits_fake: Logits) -> jax.Array:
    """HiFi-GAN's least-squares discriminator loss, summed over sub-discriminators ``k``:
    ``sum_k mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2)``. ``logits_*``: one array or a list, one per ``k``."""
    real, fake = _as_list(logits_real), _as_list(logits_fake)
    if len(real) != len(fake):
        raise ValueError(f"lsgan_d_loss: {len(real)} real vs {len(fake)} fake discriminator outputs")
    return sum(jnp.mean(jnp.square(1.0 - r)) + jnp.mean(jnp.square(f)) for r, f in zip(real, fake))


def lsgan_g_loss(logits_fake: Logits) -> jax.Array:
    """HiFi-GAN's least-squares generator loss: ``sum_k mean((1 - D_k(y_hat))^2)``."""
    return sum(jnp.mean(jnp.square(1.0 - f)) for f in _as_list(logits_fake))


def feature_matching_loss(fmaps_real: Any, fmaps_fake: Any, weight: float = 2.0) -> jax.Array:
    """HiFi-GAN's feature-matching loss: ``weight * sum_{k, l} mean(|F_kl(y) - F_kl(y_hat)|)`` over every
    sub-discriminator ``k`` and layer ``l`` (``weight = 2`` in HiFi-GAN).

    ``fmaps_*``: the nested lists the discriminators return (any matching pytrees). Gradients flow into both sides;
    the generator step differentiates with respect to the generator only, so the real side contributes none.
    """
    real, fake = jax.tree_util.tree_leaves(fmaps_real), jax.tree_util.tree_leaves(fmaps_fake)
    if len(real) != len(fake):
        raise ValueError(f"feature_matching_loss: {len(real)} real vs {len(fake)} fake feature maps")
    for r, f in zip(real, fake):
        if r.shape != f.shape:
            raise ValueError(f"feature_matching_loss: feature map shapes differ: {r.shape} vs {f.shape}")
    return weight * sum(jnp.mean(jnp.abs(_f32(r) - _f32(f))) for r, f in zip(real, fake))


# ----------------------------------------------------------------------------------------------------------------
# Reconstruction and prior terms
# ----------------------------------------------------------------------------------------------------------------


def mel_l1_loss(mel_real: jax.Array, mel_fake: jax.Array) -> jax.Array:
    """``mean(|mel - mel_hat|)`` over all elements (HiFi-GAN scales it by 45 in the generator loss)."""
    return jnp.mean(jnp.abs(_f32(mel_real) - _f32(mel_fake)))


def _stft_magnitude(wave: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """``[B, N] -> [B, frames, n_fft // 2 + 1]``: Hann-windowed magnitudes of the frames ``[k hop, k hop + n_fft)``
    (no padding), with ``sqrt(. + 1e-7)`` so that the gradient stays finite at 0."""
    spectrum = stft.stft(_f32(wave), stft.hann_window(n_fft), hop)
    return jnp.sqrt(jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2 + 1e-7)


def multi_resolution_stft_loss(real: jax.Array, fake: jax.Array,
                               resolutions: Sequence[tuple[int, int]] = ((512, 128), (1024, 256), (2048, 512))
                               ) -> jax.Array:
    """Mean over ``(n_fft, hop)`` resolutions of spectral convergence ``||S - S_hat||_F / ||S||_F`` plus the mean
    ``|log S - log S_hat|`` (Yamamoto et al. 2020, eqs. 1-3) between the waveforms ``real`` and ``fake`` ``[B, N]``.

    Fine resolutions (2048 points: 7.8 Hz bins at 16 kHz) see a harmonic a semitone off, which a 64-bin mel
    cannot: the loss teaches a vocoder its pitch in far fewer steps than the adversarial terms."""
    total = jnp.zeros((), jnp.float32)
    for n_fft, hop in resolutions:
        if real.shape[-1] < n_fft:
            raise ValueError(f"multi_resolution_stft_loss: {real.shape[-1]} samples are fewer than n_fft={n_fft}")
        s, s_hat = _stft_magnitude(real, n_fft, hop), _stft_magnitude(fake, n_fft, hop)
        convergence = jnp.linalg.norm((s - s_hat).ravel()) / jnp.linalg.norm(s.ravel())
        total = total + convergence + jnp.mean(jnp.abs(jnp.log(s) - jnp.log(s_hat)))
    return total / len(resolutions)


def kl_loss(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed per example, averaged over the batch:
    ``mean_b 0.5 * sum_i (mu_i^2 + exp(lv_i) - 1 - lv_i)`` (taming's ``sum(posterior.kl()) / B``).

    ``mean``, ``logvar``: ``[B, ...]`` (the VAE posterior's ``[B, h, w, latent]``), used as given (the posterior's
    own clipping of ``logvar`` happens in ``DiagonalGaussian.from_moments``).
    """
    return jnp.mean(DiagonalGaussian(mean=_f32(mean), logvar=_f32(logvar)).kl())


# ----------------------------------------------------------------------------------------------------------------
# Adaptive adversarial weight (taming's calculate_adaptive_weight) and warm-up
# ----------------------------------------------------------------------------------------------------------------


def adaptive_gan_weight(nll_grad_norm: jax.Array, g_grad_norm: jax.Array, max_weight: float = 1e4) -> jax.Array:
    """``clip(||grad_W nll|| / (||grad_W g|| + 1e-4), 0, max_weight)``, with no gradient flowing through it.

    ``W`` is the decoder's last layer (``last_layer_grad_norms``). The trainer multiplies the result by its
    ``disc_weight`` (0.5 in AudioLDM's VAE configs) and ``gan_warmup``.
    """
    weight = _f32(nll_grad_norm) / (_f32(g_grad_norm) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


DEFAULT_LAST_LAYER = ("decoder", "conv_out", "kernel")


def last_layer_grad_norms(losses_fn: Callable[[Any], tuple[jax.Array, jax.Array]], params: Any,
                          path: Sequence[str] = DEFAULT_LAST_LAYER) -> tuple[jax.Array, jax.Array]:
    """``(||d nll / d W||, ||d g_loss / d W||)`` for the single parameter leaf ``W = params[path]``.

    ``losses_fn(params) -> (nll_loss, g_loss)`` (scalars) runs the autoencoder and the discriminator; the default
    path is ``AutoencoderKL``'s ``decoder/conv_out/kernel``, the layer taming takes the gradients at. Only ``W``
    is differentiated (``jax.vjp`` over that leaf: one forward pass, one backward pass per loss, each stopping at
    ``W``). ``params`` may hold Flax partitioning boxes. To avoid re-running the network, pass a ``losses_fn``
    closing over features already computed (it still receives the full tree, with ``W`` substituted).
    """
    path = tuple(path)
    flat = traverse_util.flatten_dict(params)
    if path not in flat:
        raise KeyError(f"last layer path {'/'.join(path)} is not a parameter leaf; some of the tree's: "
                       f"{sorted('/'.join(k) for k in flat)[:6]}")
    leaf = flat[path]
    if isinstance(leaf, nn.meta.AxisMetadata):
        leaf = leaf.unbox()

    def losses_of_leaf(w):
        nll, g = losses_fn(traverse_util.path_aware_map(lambda p, x: w if p == path else x, params))
        return _f32(nll), _f32(g)

    (nll, g), pullback = jax.vjp(losses_of_leaf, leaf)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    (nll_grad,) = pullback((one, zero))
    (g_grad,) = pullback((zero, one))
    norm = lambda t: jnp.sqrt(jnp.sum(jnp.square(t.astype(jnp.float32))))
    return norm(nll_grad), norm(g_grad)


def gan_warmup(step: jax.Array | int, start_step: jax.Array | int) -> jax.Array:
    """Adversarial factor: ``0.0`` while ``step < start_step``, ``1.0`` from ``start_step`` on (taming's
    ``adopt_weight``); a float32 scalar, traceable under ``jit`` with a traced ``step``."""
    return jnp.where(jnp.asarray(step) >= jnp.asarray(start_step), 1.0, 0.0).astype(jnp.float32)


__all__ = ["hinge_d_loss", "vanilla_d_loss", "hinge_g_loss", "lsgan_d_loss", "lsgan_g_loss", "feature_matching_loss",
           "mel_l1_loss", "kl_loss", "adaptive_gan_weight", "last_layer_grad_norms", "gan_warmup",
           "DEFAULT_LAST_LAYER"]
