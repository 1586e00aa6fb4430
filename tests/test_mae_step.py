"""The sharded AudioMAE pretraining step on 8 simulated CPU devices against the same step on one device."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from audioldm2_jax.models.audiomae import AudioMAEConfig, MaskedAutoencoder
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, make_mesh, place
from audioldm2_jax.train.mae_step import build_mae_step, mae_loss_and_grads

# Small, but every sharded dimension divides the 2-way axes, and the local decoder shifts windows in time.
CONFIG = AudioMAEConfig(input_frames=128, mel_bins=64, embed_dim=32, depth=1, num_heads=2, feature_layers=1,
                        decoder_type="local", decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2,
                        decoder_bias_hidden=16, mask_ratio=0.75)
BATCH = 4


def random_params(shapes, seed: int = 0):
    """Random weights for a parameter-shape tree (no init to compile): unit-ish norm scales and tau, small rest."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        base = 1.0 if name.endswith(("['scale']", "['tau']")) else 0.0
        return (base + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def assert_grads_close(ours, ref, rel=1e-4):
    """Leaf by leaf within ``rel`` of the leaf's scale, floored at 1e-3 of the largest gradient: some gradients are
    zero up to rounding (a per-head bias shift cancels in softmax) and have no scale of their own."""
    ours, ref = jax.device_get(ours), jax.device_get(ref)
    floor = 1e-3 * max(float(np.abs(g).max()) for g in jax.tree.leaves(ref))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref)):
        scale = max(float(np.abs(b).max()), floor)
        err = float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
        assert err <= rel * scale, f"grad {jax.tree_util.keystr(path)}: {err:.3e} > {rel:g} x {scale:.3e}"


@pytest.fixture(scope="module")
def sharded():
    if jax.device_count() < 8:
        raise AssertionError("needs 8 (simulated) devices: run under tests/conftest.py")
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    built = build_mae_step(CONFIG, mesh, DEFAULT_RULES)
    shapes = nn.unbox(jax.eval_shape(built.init, jax.random.key(0)))
    return built, place(random_params(shapes), built.param_shardings)


def test_init_is_born_sharded_as_the_logical_axes_say(sharded):
    built, _ = sharded
    abstract = jax.eval_shape(built.init, jax.random.key(0))  # traced through the sharded init, not compiled
    qkv = abstract["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == PartitionSpec("fsdp", "tensor")  # (embed, heads)
    fc2 = abstract["decoder"]["decoder_blocks_1"]["mlp"]["fc2"]["kernel"]
    assert fc2.sharding.spec == PartitionSpec("tensor", "fsdp")  # (mlp, embed)
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} != {s}"),
                 abstract, built.param_shardings)


def test_sharded_step_matches_one_device(sharded):
    built, params = sharded
    fbank = np.random.default_rng(0).standard_normal((BATCH, CONFIG.input_frames, CONFIG.mel_bins)).astype(np.float32)
    batch = {"fbank": jax.device_put(fbank, built.batch_sharding)}
    assert batch["fbank"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert len(params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"].addressable_shards) == 8
    rng = jax.random.key(7)
    loss, grads = built.step(params, batch, rng)
    jax.tree.map(lambda g, s: g.sharding.is_equivalent_to(s, g.ndim) or pytest.fail(f"{g.sharding} != {s}"),
                 grads, built.param_shardings)

    one = jax.devices()[0]
    host = jax.device_put((jax.device_get(params), {"fbank": fbank}, rng), one)
    single = jax.jit(lambda p, b, r: mae_loss_and_grads(p, b, r, model=MaskedAutoencoder(CONFIG)))
    ref_loss, ref_grads = single(*host)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert_grads_close(grads, ref_grads)
    # The loss reaches every part: encoder, decoder, the local decoder's temperatures and bias network.
    for g in (ref_grads["encoder"]["patch_embed"]["proj"]["kernel"], ref_grads["decoder"]["mask_token"],
              ref_grads["decoder"]["decoder_blocks_1"]["attn"]["tau"],
              ref_grads["decoder"]["decoder_blocks_1"]["attn"]["meta_mlp"]["fc1"]["kernel"]):
        assert float(np.abs(np.asarray(g)).max()) > 1e-6

    # Silent clips (constant patches, zero-variance targets): same compiled step, finite loss and gradients.
    silent = {"fbank": jax.device_put(np.zeros_like(fbank), built.batch_sharding)}
    loss, grads = built.step(params, silent, jax.random.key(1))
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_dots_no_batch"])
def test_remat_policies_change_memory_not_numbers(policy):
    """A named remat policy wraps every transformer block (encoder ViT, local-decoder Swin) in ``jax.checkpoint`` with
    that policy, and the loss and gradients stay those of the plain model (reference: ``remat="none"``)."""
    import dataclasses

    from audioldm2_jax.models.layers import REMAT_POLICIES

    fbank = np.random.default_rng(1).standard_normal((2, CONFIG.input_frames, CONFIG.mel_bins)).astype(np.float32)
    plain, remat = MaskedAutoencoder(CONFIG), MaskedAutoencoder(dataclasses.replace(CONFIG, remat=policy))
    params = random_params(nn.unbox(jax.eval_shape(
        lambda r: plain.init(r, fbank, np.zeros((2, CONFIG.num_patches), np.float32)), jax.random.key(0)))["params"])
    run = lambda model: jax.jit(lambda p, b, r: mae_loss_and_grads(p, b, r, model=model))  # noqa: E731
    ref_loss, ref_grads = run(plain)(params, {"fbank": fbank}, jax.random.key(3))
    loss, grads = run(remat)(params, {"fbank": fbank}, jax.random.key(3))
    assert abs(float(loss) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
    assert_grads_close(grads, ref_grads, rel=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda p: mae_loss_and_grads(p, {"fbank": fbank}, jax.random.key(3), model=remat))(
        params))
    assert jaxpr.count("checkpoint[") + jaxpr.count("remat") >= CONFIG.depth + CONFIG.decoder_depth
    jax_policy = REMAT_POLICIES[policy]  # a function or a DotsSaveable object; the jaxpr prints either
    name = getattr(jax_policy, "__name__", None)
    assert (f"policy=<function {name} " if name else f"policy={jax_policy!r}") in jaxpr
    assert "checkpoint[" not in str(jax.make_jaxpr(
        lambda p: mae_loss_and_grads(p, {"fbank": fbank}, jax.random.key(3), model=plain))(params))


def test_remat_names_are_checked():
    assert AudioMAEConfig(remat=True).remat == "full" and AudioMAEConfig(remat=False).remat == "none"
    with pytest.raises(ValueError, match="remat='layerwise' is not one of none, full, save_dots"):
        AudioMAEConfig(remat="layerwise")
