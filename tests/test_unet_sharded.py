"""The UNet initialised directly sharded over 8 simulated devices (fsdp x tensor) and run under the mesh gives the
unsharded parameters and output."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_close

from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs
from audioldm2_jax.parallel.partitioning import DEFAULT_RULES, make_mesh, sharded_init, training_rules

CONFIG = UNetConfig(in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=(1, 1),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                    cross_attention_dim=((None, 32, 64),) * 2, transformer_layers_per_block=(1, 1),
                    num_heads=(4, 4), norm_num_groups=8)


def test_sharded_init_and_forward_match_single_device():
    assert jax.device_count() == 8
    model = AudioLDM2UNet(CONFIG)
    key = jax.random.key(3)
    dummy = unet_dummy_inputs(CONFIG, batch=2, latent_hw=(12, 8), context_len=6)
    init_fn = functools.partial(model.init, key)

    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    sharded, shardings = sharded_init(init_fn, mesh, DEFAULT_RULES, *dummy)

    # Never whole on one device: device 0 holds a fraction of the bytes; the big kernels are split both ways.
    leaves = jax.tree.leaves(sharded)
    total = sum(x.nbytes for x in leaves)
    on_device0 = sum(s.data.nbytes for x in leaves for s in x.addressable_shards if s.device == jax.devices()[0])
    assert on_device0 < total / 4, (on_device0, total)
    ff_kernel = sharded["params"]["down_blocks_1"]["attentions_1"]["transformer_blocks_0"]["ff"]["net_2"]["kernel"]
    assert ff_kernel.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # (mlp, embed)

    single = nn.unbox(jax.jit(model.init)(key, *dummy))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, single)

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 12, 8, 4)).astype(np.float32)
    ctx0 = rng.standard_normal((2, 6, 32)).astype(np.float32)
    ctx1 = rng.standard_normal((2, 6, 64)).astype(np.float32)
    mask1 = np.array([[1] * 6, [1] * 3 + [0] * 3], np.int32)
    args = (jnp.asarray(sample), jnp.array([10, 500]), jnp.asarray(ctx0), None, jnp.asarray(ctx1), jnp.asarray(mask1))
    expected = jax.jit(model.apply)(single, *args)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(model.apply)(sharded, *args)
    assert_close(out, expected, rel=1e-5, what="sharded unet")


def test_training_rules_unshard_conv_inputs_only_on_three_axis_meshes():
    # The workaround of XLA's wrong convolution gradients (bench/sharded_conv_grad.py): conv_in -> None when data,
    # fsdp and tensor are all > 1; every other rule, and every other mesh, unchanged.
    three = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = dict(training_rules(DEFAULT_RULES, three))
    assert rules["conv_in"] is None
    assert {k: v for k, v in rules.items() if k != "conv_in"} == {k: v for k, v in DEFAULT_RULES if k != "conv_in"}
    for shape in ({"data": 1, "fsdp": 4, "tensor": 2}, {"data": 4, "fsdp": 1, "tensor": 2},
                  {"data": 2, "fsdp": 4, "tensor": 1}):
        assert training_rules(DEFAULT_RULES, make_mesh(shape)) == tuple(DEFAULT_RULES)
