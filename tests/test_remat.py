"""Named rematerialisation policies of the UNet, the VAE and GPT-2 (``model.<name>.remat``): the loss and gradients
are those of the plain model (``remat="none"``, the reference), the saving is real (the forward pass leaves less
for the backward pass), the field never reaches an exported diffusers / transformers ``config.json`` nor is lost
when a stage reads a checkpoint's architecture, and a bad name is an error listing the valid ones."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_mae_step import random_params

from audioldm2_jax.convert import gpt2 as gpt2_convert
from audioldm2_jax.convert import unet as unet_convert
from audioldm2_jax.convert import vae as vae_convert
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, generate_loa
from audioldm2_jax.models.layers import REMAT_POLICIES
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig
from audioldm2_jax.train.config import base_config, model_config, set_model_config

POLICIES = [name for name in REMAT_POLICIES if name != "none"]
# The offload policy rides on the same block wrapping; its parity is checked on the cheapest model only.
CASES = [(model, policy) for model in ("unet", "vae", "gpt2") for policy in POLICIES
         if policy != "offload_dots_no_batch" or model == "gpt2"]

# Micro networks: a two-level UNet with one masked cross-attention per ResNet (few blocks: its backward compiles in
# seconds), a two-level VAE, two GPT-2 layers.
UNET = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(16, 16), layers_per_block=(1, 1),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=((16,),) * 2,
                  transformer_layers_per_block=(1, 1), num_heads=(2, 2), norm_num_groups=8)
VAE = VAEConfig(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4)
GPT2 = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2, max_new_tokens=3)

_rng = np.random.default_rng(0)
UNET_INPUTS = (_rng.standard_normal((2, 8, 8, 4)).astype(np.float32), np.array([3, 700], np.int32),
               _rng.standard_normal((2, 4, 16)).astype(np.float32), np.array([[1, 1, 0, 0], [1] * 4], np.int32))
MEL = _rng.standard_normal((2, 16, 16, 1)).astype(np.float32)
EMBEDS = _rng.standard_normal((2, 6, 16)).astype(np.float32)
EMBEDS_MASK = np.array([[0, 1, 1, 1, 1, 1], [1] * 6], np.int32)


def unet_loss(config, params):
    out = AudioLDM2UNet(config).apply({"params": params}, *UNET_INPUTS)
    # Non-uniform gradients, and non-negative terms: a signed mean would cancel to a small value whose rounding,
    # relative to itself, says nothing of the model's.
    return jnp.mean(jnp.square(out - jnp.sin(jnp.arange(out.size).reshape(out.shape))))


def vae_loss(config, params):
    rec, posterior = AutoencoderKL(config).apply({"params": params}, MEL, jax.random.key(1))
    return jnp.mean(jnp.abs(rec - MEL)) + 1e-3 * jnp.mean(posterior.kl())


def gpt2_loss(config, params):
    hidden = GPT2Model(config).apply({"params": params}, EMBEDS, EMBEDS_MASK)
    return jnp.mean(jnp.abs(hidden[:, 1:] - EMBEDS[:, :-1]))  # next-embedding regression, like the GPT-2 stage


MODELS = {
    "unet": (UNET, unet_loss, lambda c: AudioLDM2UNet(c).init(jax.random.key(0), *UNET_INPUTS)),
    "vae": (VAE, vae_loss, lambda c: AutoencoderKL(c).init(jax.random.key(0), MEL)),
    "gpt2": (GPT2, gpt2_loss, lambda c: GPT2Model(c).init(jax.random.key(0), EMBEDS, EMBEDS_MASK)),
}


@pytest.fixture(scope="module")
def plain_runs():
    """Per model: random params and the plain model's (loss, grads), the reference for every policy."""
    out = {}
    for name, (config, loss_fn, init) in MODELS.items():
        params = random_params(nn.unbox(jax.eval_shape(lambda i=init, c=config: i(c)))["params"], seed=1)
        out[name] = params, jax.jit(jax.value_and_grad(lambda p, c=config, f=loss_fn: f(c, p)))(params)
    return out


@pytest.mark.parametrize(("model", "policy"), CASES)
def test_remat_keeps_loss_and_gradients(model, policy, plain_runs):
    config, loss_fn, _ = MODELS[model]
    params, (ref_loss, ref_grads) = plain_runs[model]
    remat = dataclasses.replace(config, remat=policy)
    grad_fn = lambda p: loss_fn(remat, p)  # noqa: E731
    jaxpr = str(jax.make_jaxpr(jax.grad(grad_fn))(params))
    assert "checkpoint[" in jaxpr or "remat" in jaxpr  # the blocks really are rematerialised
    loss, grads = jax.jit(jax.value_and_grad(grad_fn))(params)
    # Every loss is a mean of non-negative terms, so the loss is its own scale; float32 rounding of recomputed
    # blocks, as for the gradients below.
    assert abs(float(loss) - float(ref_loss)) <= 4e-6 * abs(float(ref_loss)), (float(loss), float(ref_loss))
    flat, ref_flat = jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves_with_path(ref_grads)
    assert [p for p, _ in flat] == [p for p, _ in ref_flat]
    scale = max(float(np.abs(np.asarray(g)).max()) for _, g in ref_flat)
    assert scale > 0
    worst = max(float(np.abs(np.asarray(g) - np.asarray(r)).max()) for (_, g), (_, r) in zip(flat, ref_flat))
    # Recomputed blocks fuse differently, so float32 sums round differently: measured worst 2.8e-7 (UNet) and
    # 3.0e-8 (VAE) of the largest gradient, 0 for GPT-2 (1.1e-6 and 1.2e-6 on another CPU with another loss).
    assert worst <= 4e-6 * scale, (worst, scale)


def test_remat_gpt2_generation_unchanged(plain_runs):
    """The cached prefill / decode path runs through the same (rematerialised) blocks."""
    params = plain_runs["gpt2"][0]
    ref = generate_loa(GPT2Model(GPT2), params, EMBEDS, EMBEDS_MASK, max_new_tokens=3)
    out = generate_loa(GPT2Model(dataclasses.replace(GPT2, remat="full")), params, EMBEDS, EMBEDS_MASK,
                       max_new_tokens=3)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6 * float(np.abs(ref).max()))


@pytest.mark.parametrize("model", list(MODELS))
def test_remat_saves_fewer_residuals(model, plain_runs):
    """The point of remat: what the forward pass leaves for the backward pass (the residuals of ``jax.vjp``, sized
    from the traced program) shrinks from everything ("none") to matmul / convolution outputs ("save_dots"), to
    the weights-only products ("save_dots_no_batch"), to the blocks' inputs ("full"). (XLA:CPU's compiled
    temporary memory does not show it: its scheduler runs the recomputation early; measured for the UNet at
    [2, 32, 32, 4], 60115584 bytes "none" and 59984512 "full".)"""
    config, loss_fn, _ = MODELS[model]
    params = plain_runs[model][0]

    def residual_bytes(policy):
        vjp = jax.eval_shape(lambda p: jax.vjp(lambda q: loss_fn(dataclasses.replace(config, remat=policy), q), p)[1],
                             params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp))

    sizes = {policy: residual_bytes(policy) for policy in ("none", "full", "save_dots", "save_dots_no_batch")}
    assert sizes["full"] < sizes["save_dots_no_batch"] <= sizes["save_dots"] < sizes["none"], sizes


def test_remat_stays_out_of_exported_configs():
    unet, vae, gpt2 = (dataclasses.replace(c, remat="full") for c in (UNET, VAE, GPT2))
    for convert, config in ((unet_convert, unet), (vae_convert, vae), (gpt2_convert, gpt2)):
        exported = convert.config_to_json(config)
        assert "remat" not in exported
        # a reference config.json has no remat: it reads back as "none", the rest of the config unchanged
        assert convert.config_from_json(exported) == dataclasses.replace(config, remat="none")


@pytest.mark.parametrize("config", [UNET, VAE, GPT2], ids=["unet", "vae", "gpt2"])
def test_remat_names_are_checked(config):
    names = "none, full, save_dots, save_dots_no_batch, offload_dots_no_batch"
    with pytest.raises(ValueError, match=f"remat='layerwise' is not one of {names}"):
        dataclasses.replace(config, remat="layerwise")


def test_remat_survives_a_checkpoint_architecture():
    """A stage that starts from an exported component writes the checkpoint's architecture into ``config.model``;
    the run's remat policy (which no exported config.json records) must survive that."""
    config = base_config()
    config.model.unet.remat = "full"
    set_model_config(config, "unet", dataclasses.replace(UNET, remat="none"))  # as read from a config.json
    assert model_config(config, "unet") == dataclasses.replace(UNET, remat="full")
