"""AutoencoderKL parity with diffusers (random weights, small config), conversion and config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from audioldm2_jax import components
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig

import torch
import diffusers

# Three blocks like the published VAE (two down/upsamplers, factor 4), mid-block attention, groups that split
# channels (8 groups of 2-4), one resnet per down block (two per up block).
SMALL = dict(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 3,
             up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 32], layers_per_block=1,
             latent_channels=8, norm_num_groups=8, sample_size=32, scaling_factor=0.41)


def _reference(seed=0, **overrides):
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**{**SMALL, **overrides}).eval()
    with torch.no_grad():  # norms start at (1, 0): randomise them so that scale/bias mapping is checked too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    ref = _reference()
    ref.save_pretrained(path)
    return ref, path


def _nchw(x):  # ours [B, H, W, C] -> diffusers [B, C, H, W]
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def test_encode_decode_match_diffusers(saved):
    ref, path = saved
    config, params, _ = components.load("vae", path)
    assert config.scaling_factor == pytest.approx(0.41) and config.downsample_factor == 4
    model = AutoencoderKL(config)
    # T = 30 frames is not a multiple of 4: the asymmetric padding of the downsamplers maps 30 -> 15 -> 7.
    mel = np.random.default_rng(0).normal(size=(2, 30, 16, 1)).astype(np.float32)

    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
    posterior = encode(params, mel)
    decoded = decode(params, posterior.mean)
    with torch.no_grad():
        ref_post = ref.encode(_nchw(mel)).latent_dist
        ref_dec = ref.decode(ref_post.mean).sample
        ref_kl = ref_post.kl()
    assert posterior.mean.shape == (2, 7, 4, 8)
    assert decoded.shape == (2, 28, 16, 1)  # 7 latent frames decode to 28: the round trip drops T mod 4
    errs = dict(mean=assert_close(posterior.mean, _nhwc(ref_post.mean), what="posterior mean"),
                logvar=assert_close(posterior.logvar, _nhwc(ref_post.logvar), what="posterior logvar"),
                std=assert_close(posterior.std, _nhwc(ref_post.std), what="posterior std"),
                decode=assert_close(decoded, _nhwc(ref_dec), what="decode"),
                kl=assert_close(posterior.kl(), ref_kl.numpy(), what="kl"))
    # A reparameterised latent (mean + std * eps, as `sample` draws it) decodes like the reference's.
    z = posterior.mean + posterior.std * np.random.default_rng(1).normal(size=posterior.mean.shape)
    with torch.no_grad():
        ref_recon = ref.decode(_nchw(z)).sample
    errs["sample_decode"] = assert_close(decode(params, z), _nhwc(ref_recon), what="sampled reconstruction")
    print("relative errors:", {k: f"{v:.1e}" for k, v in errs.items()})


def test_forward_odd_latent_length_without_attention(tmp_path):
    """The training call (mode path) against diffusers' forward, on a config without mid-block attention and
    quant_conv, where the latent length (5) is odd: 5 latent frames decode to 20."""
    ref = _reference(seed=1, mid_block_add_attention=False, use_quant_conv=False)
    ref.save_pretrained(tmp_path)
    config, params, _ = components.load("vae", tmp_path)
    assert not config.mid_block_add_attention and not config.use_quant_conv
    mel = np.random.default_rng(1).normal(size=(1, 20, 12, 1)).astype(np.float32)
    recon, posterior = jax.jit(AutoencoderKL(config).apply)({"params": params}, mel)
    with torch.no_grad():
        theirs = ref(_nchw(mel), sample_posterior=False).sample
    assert posterior.mean.shape == (1, 5, 3, 8) and recon.shape == (1, 20, 12, 1)
    assert_close(recon, _nhwc(theirs), what="forward without attention")


def test_legacy_attention_names_load(saved, tmp_path):
    """diffusers' pre-0.14 mid-block names (query/key/value/proj_attn) convert to the same params."""
    from safetensors.numpy import load_file, save_file

    _, path = saved
    state = load_file(str(path / "diffusion_pytorch_model.safetensors"))
    legacy = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value
    assert any(".proj_attn." in k for k in legacy)
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    _, params, _ = components.load("vae", tmp_path)
    _, expected, _ = components.load("vae", path)
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_bad_checkpoints(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="config.json"):
        components.load("vae", tmp_path)
    config = json.loads((path / "config.json").read_text())
    # weights of a different width: every misshaped key is named
    (tmp_path / "config.json").write_text(json.dumps({**config, "latent_channels": 4}))
    (tmp_path / "diffusion_pytorch_model.safetensors").symlink_to(path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"misshaped[\s\S]*quant_conv\.weight"):
        components.load("vae", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "down_block_types": ["AttnDownEncoderBlock2D"] * 3}))
    with pytest.raises(CheckpointError, match="AttnDownEncoderBlock2D"):
        components.load("vae", tmp_path)


def test_config_validation():
    published = {"_class_name": "AutoencoderKL", "in_channels": 1, "out_channels": 1,
                 "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                 "block_out_channels": [128, 256, 512], "layers_per_block": 2, "latent_channels": 8,
                 "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.4110932946205139,
                 "force_upcast": True}
    assert VAEConfig.from_diffusers(published) == VAEConfig()
    base = dict(SMALL)
    assert VAEConfig.from_diffusers(base).block_out_channels == (16, 32, 32)
    with pytest.raises(ValueError, match="SpatialDecoderBlock"):
        VAEConfig.from_diffusers({**base, "up_block_types": ["UpDecoderBlock2D", "SpatialDecoderBlock", "X"]})
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig.from_diffusers({**base, "norm_num_groups": 5})
    with pytest.raises(ValueError, match="act_fn"):
        VAEConfig.from_diffusers({**base, "act_fn": "gelu"})
    with pytest.raises(ValueError, match="mystery_key"):
        VAEConfig.from_diffusers({**base, "mystery_key": 1})


def test_diagonal_gaussian_sample_statistics():
    mean = jnp.full((1024, 2, 1, 2), 3.0)
    logvar = jnp.concatenate([jnp.full((1024, 2, 1, 1), np.log(4.0)), jnp.full((1024, 2, 1, 1), 50.0)], axis=-1)
    post = DiagonalGaussian.from_moments(jnp.concatenate([mean, logvar], axis=-1))
    assert float(post.logvar.max()) == 20.0  # clipped
    s = np.asarray(jax.jit(DiagonalGaussian.sample)(post, jax.random.key(0)))
    assert abs(s[..., 0].mean() - 3.0) < 0.1 and abs(s[..., 0].std() - 2.0) < 0.1
