"""GAN losses against direct NumPy evaluations of their formulas, the adaptive weight against a closed form, and a
short adversarial run that must teach a PatchGAN to separate real from fake."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_close

from audioldm2_jax.models.discriminators import PatchGANConfig, PatchGANDiscriminator
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig, vae_dummy_input
from audioldm2_jax.train.gan_losses import (DEFAULT_LAST_LAYER, adaptive_gan_weight, feature_matching_loss,
                                            gan_warmup, hinge_d_loss, hinge_g_loss, kl_loss, last_layer_grad_norms,
                                            lsgan_d_loss, lsgan_g_loss, mel_l1_loss, multi_resolution_stft_loss,
                                            vanilla_d_loss)

RNG = np.random.default_rng(0)


def _normal(*shape, scale=1.5):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def test_patchgan_losses():
    real, fake = _normal(3, 10, 4, 1), _normal(3, 10, 4, 1)
    relu = lambda x: np.maximum(x, 0.0)
    softplus = lambda x: np.log1p(np.exp(x))
    assert_close(hinge_d_loss(real, fake), 0.5 * (relu(1 - real).mean() + relu(1 + fake).mean()), rel=1e-6)
    assert_close(vanilla_d_loss(real, fake), 0.5 * (softplus(-real).mean() + softplus(fake).mean()), rel=1e-6)
    assert_close(hinge_g_loss(fake), -fake.mean(), rel=1e-6)
    assert hinge_d_loss(jnp.asarray(real, jnp.bfloat16), fake).dtype == jnp.float32


def test_lsgan_losses():
    shapes = [(2, 30), (2, 12), (2, 7)]  # sub-discriminators produce different lengths
    real, fake = [_normal(*s) for s in shapes], [_normal(*s) for s in shapes]
    want_d = sum(((1 - r) ** 2).mean() + (f ** 2).mean() for r, f in zip(real, fake))
    want_g = sum(((1 - f) ** 2).mean() for f in fake)
    assert_close(lsgan_d_loss(real, fake), want_d, rel=1e-6)
    assert_close(lsgan_g_loss(fake), want_g, rel=1e-6)
    # one discriminator given as a bare array
    assert_close(lsgan_g_loss(fake[0]), ((1 - fake[0]) ** 2).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="2 real vs 3 fake"):
        lsgan_d_loss(real[:2], fake)


def test_feature_matching_loss():
    shapes = [[(2, 20, 3, 4), (2, 7, 3, 8), (2, 7, 3, 1)], [(2, 64, 16), (2, 16, 1)]]
    real = [[_normal(*s) for s in d] for d in shapes]
    fake = [[_normal(*s) for s in d] for d in shapes]
    want = 2.0 * sum(np.abs(r - f).mean() for dr, df in zip(real, fake) for r, f in zip(dr, df))
    assert_close(feature_matching_loss(real, fake), want, rel=1e-6)
    assert_close(feature_matching_loss(real, fake, weight=1.0), want / 2, rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        feature_matching_loss([real[0]], [list(reversed(fake[0]))])


def test_reconstruction_and_kl_losses():
    mel, mel_hat = _normal(2, 40, 64, 1), _normal(2, 40, 64, 1)
    assert_close(mel_l1_loss(mel, mel_hat), np.abs(mel - mel_hat).mean(), rel=1e-6)
    mean, logvar = _normal(4, 10, 16, 8, scale=1.0), _normal(4, 10, 16, 8, scale=0.5)
    per_example = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar).reshape(4, -1).sum(axis=1)
    assert_close(kl_loss(mean, logvar), per_example.mean(), rel=1e-6)


def test_multi_resolution_stft_loss_against_torch_stft():
    """Yamamoto et al.'s spectral convergence + log-magnitude L1, with torch.stft (Hann, no centring) as the
    transform; a pure tone a semitone off must cost more at 2048 points than the mel-scale L1 can tell."""
    import torch

    real, fake = _normal(2, 4096, scale=0.3), _normal(2, 4096, scale=0.3)
    resolutions = ((256, 64), (1024, 256))
    want = 0.0
    for n_fft, hop in resolutions:
        def magnitude(x):
            spec = torch.stft(torch.from_numpy(x).double(), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                              center=False, return_complex=True)
            return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-7).numpy()
        s, s_hat = magnitude(real), magnitude(fake)
        want += np.linalg.norm(s - s_hat) / np.linalg.norm(s) + np.abs(np.log(s) - np.log(s_hat)).mean()
    assert_close(multi_resolution_stft_loss(real, fake, resolutions), want / len(resolutions), rel=1e-5)
    assert float(multi_resolution_stft_loss(real, real, resolutions)) == 0.0

    t = np.arange(4096) / 16000
    tone = lambda hz: np.sin(2 * np.pi * hz * t)[None].astype(np.float32)
    near, far = (float(multi_resolution_stft_loss(tone(261.6), tone(hz), ((2048, 512),))) for hz in (262.6, 277.2))
    assert far > 3 * near
    with pytest.raises(ValueError, match="fewer than n_fft=2048"):
        multi_resolution_stft_loss(real[:, :1000], fake[:, :1000], ((2048, 512),))


def test_gan_warmup():
    steps = jnp.arange(8)
    got = jax.jit(jax.vmap(gan_warmup, in_axes=(0, None)))(steps, 5)
    np.testing.assert_array_equal(np.asarray(got), (np.arange(8) >= 5).astype(np.float32))
    assert float(gan_warmup(0, 0)) == 1.0


def test_adaptive_weight_closed_form():
    """A linear "decoder" x_hat = (z A) W and a linear "discriminator" D(x) = x c:

    nll = 0.5 ||x_hat - x||^2  ->  d nll / dW = h^T (h W - x), with h = z A;
    g = -mean_b D(x_hat_b)     ->  d g / dW = -(1/B) (sum_b h_b) c^T, of norm ||sum_b h_b|| ||c|| / B.
    Only W (the last layer) is differentiated, whatever A does.
    """
    b, d_z, d_h, d_x = 5, 3, 4, 6
    z, x = _normal(b, d_z, scale=1.0), _normal(b, d_x, scale=1.0)
    a, w, c = _normal(d_z, d_h, scale=1.0), _normal(d_h, d_x, scale=1.0), _normal(d_x, scale=1.0)
    h = z @ a
    nll_norm = np.linalg.norm(h.T @ (h @ w - x))
    g_norm = np.linalg.norm(h.sum(axis=0)) * np.linalg.norm(c) / b

    def losses(params, c=c):
        params = nn.unbox(params)
        x_hat = (z @ params["encoder"]["a"]) @ params["decoder"]["conv_out"]["kernel"]
        return 0.5 * jnp.sum(jnp.square(x_hat - x)), -jnp.mean(x_hat @ c)

    # the last layer boxed with logical names, as sharded_init leaves it
    params = {"encoder": {"a": a},
              "decoder": {"conv_out": {"kernel": nn.LogicallyPartitioned(jnp.asarray(w), ("conv_in", "conv_out"))}}}
    both = jax.jit(lambda p: (last_layer_grad_norms(losses, p),
                              last_layer_grad_norms(lambda q: losses(q, c=np.zeros_like(c)), p)))
    (got_nll, got_g), (_, zero_g) = both(params)
    assert_close(got_nll, nll_norm, rel=1e-5, what="nll grad norm")
    assert_close(got_g, g_norm, rel=1e-5, what="g grad norm")
    assert_close(adaptive_gan_weight(got_nll, got_g), nll_norm / (g_norm + 1e-4), rel=1e-5, what="weight")

    # no adversarial gradient at the last layer: the weight saturates at its clip
    assert float(zero_g) == 0.0
    assert float(adaptive_gan_weight(got_nll, zero_g)) == 1e4
    assert float(adaptive_gan_weight(got_nll, zero_g, max_weight=10.0)) == 10.0
    # detached: nothing flows back through the weight
    grads = jax.grad(lambda n, g: adaptive_gan_weight(n, g), argnums=(0, 1))(3.0, 2.0)
    assert grads == (0.0, 0.0)
    with pytest.raises(KeyError, match="conv_out"):
        last_layer_grad_norms(losses, {"decoder": {}})


def test_default_last_layer_is_the_vae_decoders():
    cfg = VAEConfig(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1, latent_channels=2,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    shapes = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), vae_dummy_input(cfg))["params"]
    leaf = nn.unbox(shapes)
    for key in DEFAULT_LAST_LAYER:
        leaf = leaf[key]
    assert leaf.shape == (3, 3, 8, cfg.out_channels)


def test_discriminator_learns_to_separate():
    """A few Adam steps on the hinge loss lower it and push real and fake logits apart."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6 * np.pi, 32, dtype=np.float32)
    real = np.broadcast_to(np.sin(t)[None, :, None, None] * np.cos(t[:16])[None, None, :, None], (4, 32, 16, 1))
    real = (real + 0.05 * rng.standard_normal(real.shape)).astype(np.float32)  # smooth structured "mels"
    fake = rng.standard_normal((4, 32, 16, 1)).astype(np.float32)  # white noise
    model = PatchGANDiscriminator(PatchGANConfig(base_channels=8, num_layers=2, norm_groups=4))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), real)["params"]
    opt = optax.adam(2e-3)
    opt_state = opt.init(params)

    def loss_fn(p):  # one call on both batches: GroupNorm is per example, so this equals two separate calls
        logits = model.apply({"params": p}, np.concatenate([real, fake]))
        return hinge_d_loss(logits[:4], logits[4:]), logits[:4].mean() - logits[4:].mean()

    @jax.jit
    def step(p, s):
        (loss, margin), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss, margin

    losses = []
    for _ in range(16):  # the 16th loss and margin are those after 15 updates
        params, opt_state, loss, margin = step(params, opt_state)
        losses.append(float(loss))
    print(f"hinge d loss: {losses[0]:.3f} -> {losses[-1]:.3f}, logit margin {float(margin):.2f}")
    assert losses[-1] < 0.5 * losses[0]
    assert float(margin) > 1.0  # mean real logit minus mean fake logit
