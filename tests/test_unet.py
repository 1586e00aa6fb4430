"""T-UNet parity with diffusers' AudioLDM2UNet2DConditionModel (random weights, small configs covering every block
type and routing branch, and every config form the reference accepts: ``cross_attention_dim`` as one int, per-block
ints, per-block lists with nulls and empty lists, entries of plain blocks that are never read, the mid block reading
a plain block's entry; head counts that do not divide the width; the optional time-embedding activations, kernel
sizes and linear projections), how the reference's config keys and defaults are read, and the errors for what the
reference accepts but this port does not implement."""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

from audioldm2_jax import components
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, context_dims

BASE = dict(
    in_channels=4, out_channels=4, block_out_channels=[16, 32, 48], layers_per_block=1, norm_num_groups=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=4,
)
# diffusers' own AudioLDM 2 pipeline fast test (tests/pipelines/audioldm2/test_audioldm2.py): per-block integer
# dims, the first for a plain DownBlock2D (never read: only the 16 is), 8 heads by default.
UPSTREAM = dict(
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=(8, 16),
)
# name -> (diffusers config, (LOA-stream width, T5-stream width or None))
CONFIGS = {
    # every stream: self-attention-only, LOA (no mask), T5 (masked); latent height 10 is not divisible by 4
    "text": (dict(BASE, cross_attention_dim=[[None, 16, 24]] * 3), (16, 24)),
    # large-style: two transformer layers per block and a trailing self-attention-only entry
    "large": (dict(BASE, cross_attention_dim=[[None, 16, 24, None]] * 3, transformer_layers_per_block=2,
                   layers_per_block=2), (16, 24)),
    # speech-style: one integer context dim, the single LOA stream
    "speech": (dict(BASE, cross_attention_dim=16), (16, None)),
    "upstream": (UPSTREAM, (16, None)),
    # null for the plain block; an int for down block 1 (and up block 1); a list for down block 2, the mid block
    # and up block 0 (the up blocks read the entries in reverse)
    "per_block_mixed": (dict(BASE, cross_attention_dim=[None, 16, [16, None, 24]]), (16, 24)),
    # five dims for the plain blocks (the reference's limit of 4 holds only where an entry is read); an empty list:
    # a cross-attention block without any Transformer2D
    "unread_and_empty_entries": (dict(BASE, cross_attention_dim=[[8] * 5, [], [None, 16, 24]]), (16, 24)),
    # the last down block is plain, yet the mid block reads its entry (and the plain up block 0 does not)
    "mid_reads_plain_block": (dict(BASE, down_block_types=["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
                                   up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2,
                                   cross_attention_dim=[[None, 16, 24], 16, [16, None]]), (16, 24)),
    # 5 heads of 32 and 48 channels: head width 6 / 9, the transformer runs at 30 / 45 channels inside
    "indivisible_heads": (dict(BASE, cross_attention_dim=16, attention_head_dim=[2, 5, 5]), (16, None)),
    # every other key the reference reads, away from its default
    "options": (dict(BASE, cross_attention_dim=16, use_linear_projection=True, upcast_attention=True,
                     time_embedding_act_fn="mish", timestep_post_act="GELU", conv_in_kernel=5, conv_out_kernel=1,
                     time_cond_proj_dim=6, projection_class_embeddings_input_dim=7, time_embedding_dim=40,
                     only_cross_attention=[True, False, False],  # True only for the plain block: never read
                     down_block_types=["UNetResDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UNetResUpBlock2D"],
                     transformer_layers_per_block=[3, 1, 2], layers_per_block=[1, 2, 1], attention_head_dim=[1, 2, 4],
                     downsample_padding=0, mid_block_scale_factor=1.5, flip_sin_to_cos=False, freq_shift=1,
                     norm_eps=1e-4, act_fn="swish"), (16, None)),
}


def _inputs(name, batch=2, height=10, width=8, seed=0):
    config, (d0, d1) = CONFIGS[name]
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, config["in_channels"], height, width)).astype(np.float32)
    t = np.array([999, 17], np.int64)[:batch]
    ctx0 = rng.standard_normal((batch, 5, d0)).astype(np.float32)
    if d1 is None:
        return sample, t, ctx0, None, None
    ctx1 = rng.standard_normal((batch, 7, d1)).astype(np.float32)
    mask1 = np.ones((batch, 7), np.int64)
    mask1[1, 4:] = 0  # a padded T5 prompt
    return sample, t, ctx0, ctx1, mask1


def _save_reference(config, path, seed=0):
    torch.manual_seed(seed)
    ref = AudioLDM2UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # random non-zero norms and biases so that every parameter matters
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(path)
    return ref


def _nhwc(x):
    return None if x is None else jnp.asarray(x.transpose(0, 2, 3, 1))


def _opt(x):
    return None if x is None else torch.from_numpy(x)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name, tmp_path):
    ref = _save_reference(CONFIGS[name][0], tmp_path)
    sample, t, ctx0, ctx1, mask1 = _inputs(name)
    with torch.no_grad():
        expected = ref(torch.from_numpy(sample), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx0),
                       encoder_hidden_states_1=_opt(ctx1), encoder_attention_mask_1=_opt(mask1)).sample.numpy()

    config, params, _ = components.load("unet", tmp_path)
    assert context_dims(config) == CONFIGS[name][1]
    model = AudioLDM2UNet(config)
    optional = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    out = jax.jit(model.apply)({"params": params}, _nhwc(sample), jnp.asarray(t), jnp.asarray(ctx0), None,
                               optional(ctx1), optional(mask1))
    err = assert_close(np.asarray(out).transpose(0, 3, 1, 2), expected, rel=1e-4, what=f"unet[{name}]")
    print(f"unet[{name}]: max abs error / scale {err:.1e} (scale {np.abs(expected).max():.2f})")


def test_one_context_keeps_the_t5_entries_own_mask(tmp_path):
    """Without ``encoder_hidden_states_1`` the reference's T5-stream entries (index 2, 3) attend to the LOA states
    but keep ``encoder_attention_mask_1`` (None here), not the LOA stream's ``encoder_attention_mask``."""
    config = dict(BASE, block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=[16, [16, None, 16]])
    ref = _save_reference(config, tmp_path)
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    t = np.array([5, 600], np.int64)
    ctx = rng.standard_normal((2, 6, 16)).astype(np.float32)
    mask = np.ones((2, 6), np.int64)
    mask[0, 2:] = 0
    with torch.no_grad():
        expected = ref(torch.from_numpy(sample), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx),
                       encoder_attention_mask=torch.from_numpy(mask)).sample.numpy()
    ours_config, params, _ = components.load("unet", tmp_path)
    out = jax.jit(AudioLDM2UNet(ours_config).apply)({"params": params}, _nhwc(sample), jnp.asarray(t),
                                                    jnp.asarray(ctx), jnp.asarray(mask))
    err = assert_close(np.asarray(out).transpose(0, 3, 1, 2), expected, rel=1e-4, what="unet[one context, mask]")
    print(f"one context with mask: max abs error / scale {err:.1e}")


def test_config_reads_published_base():
    published = json.load(open(__file__.rsplit("/tests/", 1)[0]
                               + "/audioldm2_jax/configs/published/audioldm2-base/unet.json"))
    config = UNetConfig.from_diffusers(published)
    assert config.cross_attention_dim == ((None, 768, 1024),) * 4
    assert config.num_heads == (8, 8, 8, 8) and config.layers_per_block == (2, 2, 2, 2)


def test_missing_keys_take_the_reference_defaults():
    """A config.json may leave keys out: each one reads as the reference's ``__init__`` default."""
    signature = inspect.signature(AudioLDM2UNet2DConditionModel.__init__)
    defaults = {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults["block_out_channels"] == (320, 640, 1280, 1280)
    config = UNetConfig.from_diffusers({})
    assert config == UNetConfig.from_diffusers(defaults)
    assert config.block_out_channels == (320, 640, 1280, 1280) and config.in_channels == 4
    assert config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert config.cross_attention_dim == ((1280,),) * 4 and context_dims(config) == (1280, None)


def test_context_dims_count_only_the_entries_that_are_read():
    """The upstream test's ``cross_attention_dim (8, 16)``: the 8 belongs to the plain first block, so only the
    LOA-stream width 16 is required; an entry of any size or a null there is fine, but not where a block reads it."""
    assert context_dims(UNetConfig.from_diffusers(UPSTREAM)) == (16, None)
    mixed = dict(UPSTREAM, cross_attention_dim=[None, [None, 16, 24]])
    assert context_dims(UNetConfig.from_diffusers(mixed)) == (16, 24)
    with pytest.raises(ValueError, match=r"stream 0 several sizes \[8, 16\]"):  # read by the up block 1
        context_dims(UNetConfig.from_diffusers(dict(UPSTREAM, up_block_types=["CrossAttnUpBlock2D"] * 2)))
    with pytest.raises(ValueError, match="cross_attention_dim.*entry 1 is null, and down block 1"):
        UNetConfig.from_diffusers(dict(UPSTREAM, cross_attention_dim=[16, None]))
    # the last down block and the first up block are plain, but the mid block reads the last entry
    flipped = dict(UPSTREAM, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])
    assert context_dims(UNetConfig.from_diffusers(dict(flipped, cross_attention_dim=[16, [None, None, 24]]))) == (
        16, 24)
    with pytest.raises(ValueError, match="cross_attention_dim of the mid block has 5 entries"):
        UNetConfig.from_diffusers(dict(flipped, cross_attention_dim=[16, [16] * 5]))


def _diffusers_runs(config) -> bool:
    """Whether the reference builds the UNet and runs one forward pass without class labels."""
    try:
        model = AudioLDM2UNet2DConditionModel(**config).eval()
        with torch.no_grad():
            model(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 3, 16))
        return True
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError):
        return False


# (override of UPSTREAM, key named in our error, whether the reference runs it): the reference runs the first group
# (not implemented here), and cannot run the second either.
UNSUPPORTED = [
    (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift", True),
    (dict(act_fn="gelu"), "act_fn", True),
    (dict(only_cross_attention=[False, True]), "only_cross_attention", True),
    (dict(only_cross_attention=True), "only_cross_attention", True),
    (dict(transformer_layers_per_block=[1, 1, 2]), "transformer_layers_per_block", True),
    (dict(num_class_embeds=3), "num_class_embeds", False),
    (dict(class_embed_type="timestep"), "class_embed_type", False),
    (dict(class_embeddings_concat=True), "class_embeddings_concat", False),
    (dict(num_attention_heads=2), "num_attention_heads", False),
    (dict(time_embedding_type="fourier"), "time_embedding_type", False),
    (dict(norm_num_groups=None), "norm_num_groups", False),
    (dict(cross_attention_dim=None), "cross_attention_dim", False),
    (dict(cross_attention_dim=[16, 16, 16]), "cross_attention_dim", False),
    (dict(attention_head_dim=32), "attention_head_dim", False),
    (dict(conv_in_kernel=4), "conv_in_kernel", False),
    (dict(layers_per_block=[1]), "layers_per_block", False),
    (dict(mid_block_type="UNetMidBlock2D"), "mid_block_type", False),
    (dict(timestep_post_act="tanh"), "timestep_post_act", False),
]


@pytest.mark.parametrize("override,key,reference_runs", UNSUPPORTED, ids=[u[1] + f"-{i}" for i, u in
                                                                          enumerate(UNSUPPORTED)])
def test_unsupported_values_are_named(override, key, reference_runs):
    config = dict(UPSTREAM, **override)
    assert _diffusers_runs(config) == reference_runs
    with pytest.raises(ValueError, match=key):
        UNetConfig.from_diffusers(config)


def test_bad_configs_and_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match="down_block_types.*FancyBlock2D"):
        UNetConfig.from_diffusers(dict(CONFIGS["text"][0], down_block_types=["FancyBlock2D"] * 3))
    with pytest.raises(ValueError, match="resnet_time_scale_shift"):
        UNetConfig.from_diffusers(dict(CONFIGS["text"][0], resnet_time_scale_shift="scale_shift"))
    with pytest.raises(CheckpointError, match="config.json"):
        components.load("unet", tmp_path)
    _save_reference(CONFIGS["speech"][0], tmp_path)
    # a config that disagrees with the weights: every misshaped key is named with both shapes
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, block_out_channels=[16, 32, 64])))
    with pytest.raises(CheckpointError) as info:
        components.load("unet", tmp_path)
    message = str(info.value)
    assert "misshaped" in message and "conv_out" not in message.split("misshaped")[0]
    assert "up_blocks.0.resnets.0.conv1.weight: checkpoint (48, 96, 3, 3)" in message
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        components.load("unet", tmp_path)
