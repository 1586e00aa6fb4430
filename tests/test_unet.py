"""T-UNet parity with diffusers' AudioLDM2UNet2DConditionModel (random weights, small configs covering every block
type and routing branch), conversion errors, and sharded initialisation on 8 simulated devices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel

from audioldm2_jax.convert.unet import load_unet
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig

BASE = dict(
    in_channels=4, out_channels=4, block_out_channels=[16, 32, 48], layers_per_block=1, norm_num_groups=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=4,
)
CONFIGS = {
    # every stream: self-attention-only, LOA (no mask), T5 (masked); latent height 10 is not divisible by 4
    "text": dict(BASE, cross_attention_dim=[[None, 16, 24]] * 3),
    # large-style: two transformer layers per block and a trailing self-attention-only entry
    "large": dict(BASE, cross_attention_dim=[[None, 16, 24, None]] * 3, transformer_layers_per_block=2,
                  layers_per_block=2),
    # speech-style: one integer context dim, the single LOA stream
    "speech": dict(BASE, cross_attention_dim=16),
}


def _reference_inputs(name, batch=2, height=10, width=8, seed=0):
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, 4, height, width)).astype(np.float32)
    t = np.array([999, 17], np.int64)[:batch]
    ctx0 = rng.standard_normal((batch, 5, 16)).astype(np.float32)
    if name == "speech":
        return sample, t, ctx0, None, None
    ctx1 = rng.standard_normal((batch, 7, 24)).astype(np.float32)
    mask1 = np.ones((batch, 7), np.int64)
    mask1[1, 4:] = 0  # a padded T5 prompt
    return sample, t, ctx0, ctx1, mask1


def _save_reference(name, path, seed=0):
    torch.manual_seed(seed)
    ref = AudioLDM2UNet2DConditionModel(**CONFIGS[name]).eval()
    with torch.no_grad():  # random non-zero norms and biases so that every parameter matters
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(path)
    return ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name, tmp_path):
    ref = _save_reference(name, tmp_path)
    sample, t, ctx0, ctx1, mask1 = _reference_inputs(name)
    with torch.no_grad():
        expected = ref(torch.from_numpy(sample), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx0),
                       encoder_hidden_states_1=None if ctx1 is None else torch.from_numpy(ctx1),
                       encoder_attention_mask_1=None if mask1 is None else torch.from_numpy(mask1)).sample.numpy()

    config, params = load_unet(tmp_path)
    model = AudioLDM2UNet(config)
    nhwc = lambda x: jnp.asarray(x.transpose(0, 2, 3, 1))
    out = jax.jit(model.apply)({"params": params}, nhwc(sample), jnp.asarray(t), jnp.asarray(ctx0), None,
                               None if ctx1 is None else jnp.asarray(ctx1), None if mask1 is None else jnp.asarray(mask1))
    assert_close(np.asarray(out).transpose(0, 3, 1, 2), expected, rel=1e-4, what=f"unet[{name}]")


def test_config_reads_published_base():
    published = json.load(open(__file__.rsplit("/tests/", 1)[0] + "/configs/published/audioldm2-base/unet.json"))
    config = UNetConfig.from_diffusers(published)
    assert config.cross_attention_dim == ((None, 768, 1024),) * 4
    assert config.num_heads == (8, 8, 8, 8) and config.layers_per_block == (2, 2, 2, 2)


def test_bad_configs_and_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match="down_block_types.*FancyBlock2D"):
        UNetConfig.from_diffusers(dict(CONFIGS["text"], down_block_types=["FancyBlock2D"] * 3))
    with pytest.raises(ValueError, match="use_linear_projection"):
        UNetConfig.from_diffusers(dict(CONFIGS["text"], use_linear_projection=True))
    with pytest.raises(CheckpointError, match="config.json"):
        load_unet(tmp_path)
    _save_reference("speech", tmp_path)
    # a config that disagrees with the weights: every misshaped key is named with both shapes
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, block_out_channels=[16, 32, 64])))
    with pytest.raises(CheckpointError) as info:
        load_unet(tmp_path)
    message = str(info.value)
    assert "misshaped" in message and "conv_out" not in message.split("misshaped")[0]
    assert "up_blocks.0.resnets.0.conv1.weight: checkpoint (48, 96, 3, 3)" in message
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        load_unet(tmp_path)
