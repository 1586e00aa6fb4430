"""Exports in the reference's layout for the UNet, VAE, HiFi-GAN vocoder and projection model (``convert/<x>.py``:
``config_to_json`` / ``to_torch``, and their inverses ``config_from_json`` / ``to_flax``).

1. Seeded random parameters in our tree -> ``to_torch`` + ``config_to_json`` -> a component folder (config.json +
   safetensors) -> the reference class's ``from_pretrained`` reports no missing, unexpected or misshaped key,
   re-saves the same config.json, and computes our outputs (fp32 parity: max abs error <= 1e-4 of the output scale).
2. ``to_flax(to_torch(p, c), c) == p`` bit for bit and ``config_from_json(config_to_json(c)) == c``, also for the
   configs of diffusers' own tests, every config form the UNet reader accepts (the reference built from the
   written config has exactly the tensors of the reference built from the original one, and of ours) and the
   published configs (the same on torch's meta device: no weights are allocated).
"""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers import AutoencoderKL as TorchVAE
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2ProjectionModel as TorchProjection
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2UNet2DConditionModel as TorchUNet
from flax import traverse_util
from safetensors.numpy import save_file
from test_unet import CONFIGS as UNET_READER_FORMS
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

import audioldm2_jax
from audioldm2_jax.convert import projection as projection_convert
from audioldm2_jax.convert import unet as unet_convert
from audioldm2_jax.convert import vae as vae_convert
from audioldm2_jax.convert import vocoder as vocoder_convert
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, projection_dummy_inputs
from audioldm2_jax.models.unet import AudioLDM2UNet, unet_dummy_inputs
from audioldm2_jax.models.vae import AutoencoderKL, vae_dummy_input
from audioldm2_jax.models.vocoder import HifiGanVocoder

PUBLISHED = Path(audioldm2_jax.__file__).parent / "configs" / "published" / "audioldm2-base"
DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS = "diffusion_pytorch_model.safetensors", "model.safetensors"
REL = 1e-4  # the project's fp32 parity criterion: max abs error <= 1e-4 x max |reference|

# ---- configs (the reference's config.json dicts) -------------------------------------------------------------

_UNET_2 = dict(in_channels=4, out_channels=4, block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
               attention_head_dim=4, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
               up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"])
# diffusers' AudioLDM 2 pipeline fast test (get_dummy_components), as in pipeline_fixtures.build_upstream_pipeline.
UPSTREAM_UNET = dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
                     out_channels=4, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                     up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=[8, 16])
UPSTREAM_VAE = dict(block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=8,
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                    latent_channels=4)
UPSTREAM_VOCODER = dict(model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
                        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7],
                        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)
UPSTREAM_PROJECTION = dict(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16)

UNETS = {
    # every stream (self-attention only, LOA, masked T5), proj_in / proj_out stored as Linear, a sample_size
    "text_linear_projection": dict(_UNET_2, cross_attention_dim=[[None, 16, 24]] * 2, use_linear_projection=True,
                                   sample_size=16),
    # the LOA stream only, per-block ints (the plain block's is never read) and per-block lists of every other
    # per-block key, every other option away from its default
    "loa_only_per_block": dict(_UNET_2, cross_attention_dim=[12, 16], attention_head_dim=[2, 4],
                               transformer_layers_per_block=[1, 2], layers_per_block=[1, 2], time_embedding_dim=40,
                               time_embedding_act_fn="silu", timestep_post_act="gelu", conv_in_kernel=5,
                               conv_out_kernel=1, freq_shift=1, flip_sin_to_cos=False, mid_block_scale_factor=1.5,
                               downsample_padding=0, norm_eps=1e-4, sample_size=24),
}
VAES = {
    "upstream": UPSTREAM_VAE,
    # three levels, a learnt latent scale and shift, no mid-block attention, no post-quant convolution
    "options": dict(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 3,
                    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 16], layers_per_block=1,
                    latent_channels=8, norm_num_groups=4, scaling_factor=0.3712, shift_factor=0.125,
                    mid_block_add_attention=False, use_post_quant_conv=False),
}
VOCODERS = {
    "upstream_no_normalize": UPSTREAM_VOCODER,
    "normalize_before": dict(model_in_dim=12, upsample_initial_channel=24, upsample_rates=[3, 2],
                             upsample_kernel_sizes=[7, 4], resblock_kernel_sizes=[3, 5],
                             resblock_dilation_sizes=[[1, 2], [1, 3]], leaky_relu_slope=0.2, normalize_before=True),
}
PROJECTIONS = {
    "upstream": UPSTREAM_PROJECTION,
    "speech": dict(text_encoder_dim=16, text_encoder_1_dim=24, langauge_model_dim=32,
                   use_learned_position_embedding=True, max_seq_length=7),
}

# ---- helpers -------------------------------------------------------------------------------------------------


def _random_params(module: nn.Module, inputs, seed: int) -> dict:
    """Random parameters in our model's tree (shapes from ``jax.eval_shape`` of ``init``: no compilation), drawn so
    that every leaf matters and activations keep their scale: kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2),
    every other vector (biases, SOS / EOS, position tables, the vocoder's mean) N(0, 0.1^2)."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *inputs)["params"]))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(traverse_util.flatten_dict(shapes).items()):
        noise = rng.standard_normal(leaf.shape)
        if path[-1] == "kernel":
            value = noise / math.sqrt(math.prod(leaf.shape[:-1]))
        else:
            value = (1.0 if path[-1] == "scale" else 0.0) + 0.1 * noise
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def _export(folder: Path, converter, config, params, weights: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(converter.config_to_json(config), indent=2))
    state = converter.to_torch(params, config)
    assert all(v.dtype == np.float32 for v in state.values())
    save_file(state, str(folder / weights), metadata={"format": "pt"})
    return folder


def _load_reference(cls, folder: Path, tmp_path: Path):
    """``cls.from_pretrained(folder)``, asserting that it reports nothing missing, unexpected or misshaped and that
    its own ``save_pretrained`` writes back the config.json we wrote."""
    kw = dict(low_cpu_mem_usage=False) if cls is not SpeechT5HifiGan else {}
    model, info = cls.from_pretrained(folder, output_loading_info=True, **kw)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{cls.__name__} loading {folder}: {problems}"
    if cls is SpeechT5HifiGan:
        model.config.save_pretrained(tmp_path / "resaved")
    else:
        model.save_config(tmp_path / "resaved")
    # the writer's version stamp is whichever release is installed: not part of the architecture
    versions = ("_name_or_path", "transformers_version", "_diffusers_version")
    ours = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in versions}
    theirs = {k: v for k, v in json.loads((tmp_path / "resaved" / "config.json").read_text()).items()
              if k not in versions}
    assert ours == theirs, f"{cls.__name__} re-saves another config: ours {ours} vs theirs {theirs}"
    return model.eval()


def _assert_round_trip(converter, config, params):
    """``to_flax(to_torch(p, c), c)`` is ``p`` bit for bit; ``config_from_json(config_to_json(c)) == c``."""
    back = traverse_util.flatten_dict(converter.to_flax(converter.to_torch(params, config), config))
    want = traverse_util.flatten_dict(params)
    assert set(back) == set(want)
    for path, value in want.items():
        assert back[path].dtype == value.dtype and np.array_equal(back[path], value), "/".join(path)
    assert converter.config_from_json(json.loads(json.dumps(converter.config_to_json(config)))) == config


def _encode_decode(vae: AutoencoderKL, mel):
    posterior = vae.encode(mel)
    return posterior, vae.decode(posterior.mean)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


# ---- 1. our parameters exported and loaded by the reference ----------------------------------------------------


@pytest.mark.parametrize("name", list(UNETS))
def test_unet_export_loads_in_diffusers(name, tmp_path):
    config = unet_convert.config_from_json(UNETS[name])
    model = AudioLDM2UNet(config)
    params = _random_params(model, unet_dummy_inputs(config, latent_hw=(8, 8)), seed=1)
    ref = _load_reference(TorchUNet, _export(tmp_path / "unet", unet_convert, config, params, DIFFUSERS_WEIGHTS),
                          tmp_path)
    assert ref.config.sample_size == UNETS[name]["sample_size"]  # the pipeline's default duration comes from it
    _assert_round_trip(unet_convert, config, params)

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 10, 8, config.in_channels)).astype(np.float32)  # 10: not a multiple of 4
    t = np.array([999, 17], np.int64)
    d0, d1 = (16, 24) if name == "text_linear_projection" else (16, None)
    ctx0 = rng.standard_normal((2, 5, d0)).astype(np.float32)
    ctx1 = None if d1 is None else rng.standard_normal((2, 7, d1)).astype(np.float32)
    mask1 = None if d1 is None else np.array([[1] * 7, [1] * 4 + [0] * 3], np.int64)
    with torch.no_grad():
        expected = ref(_nchw(sample), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx0),
                       encoder_hidden_states_1=None if ctx1 is None else torch.from_numpy(ctx1),
                       encoder_attention_mask_1=None if mask1 is None else torch.from_numpy(mask1)).sample
    out = jax.jit(model.apply)({"params": params}, sample, t, ctx0, None, ctx1, mask1)
    err = assert_close(out, _nhwc(expected), rel=REL, what=f"unet[{name}]")
    print(f"unet[{name}]: max abs error / scale {err:.1e} (scale {np.abs(expected.numpy()).max():.2f})")


def test_upstream_unet_exports_without_loss(tmp_path):
    """diffusers' own test UNet (no output comparison: test_unet covers its numbers): loads with nothing missing,
    the same config re-saved, and the round trip is exact."""
    config = unet_convert.config_from_json(UPSTREAM_UNET)
    params = _random_params(AudioLDM2UNet(config), unet_dummy_inputs(config), seed=5)
    _load_reference(TorchUNet, _export(tmp_path / "unet", unet_convert, config, params, DIFFUSERS_WEIGHTS), tmp_path)
    _assert_round_trip(unet_convert, config, params)


@pytest.mark.parametrize("name", list(VAES))
def test_vae_export_loads_in_diffusers(name, tmp_path):
    config = vae_convert.config_from_json(VAES[name])
    model = AutoencoderKL(config)
    params = _random_params(model, (vae_dummy_input(config),), seed=2)
    ref = _load_reference(TorchVAE, _export(tmp_path / "vae", vae_convert, config, params, DIFFUSERS_WEIGHTS), tmp_path)
    assert ref.config.scaling_factor == VAES[name].get("scaling_factor", 0.18215)  # the pipeline divides by it
    _assert_round_trip(vae_convert, config, params)

    mel = np.random.default_rng(0).standard_normal((2, 16, 12, 1)).astype(np.float32)
    posterior, decoded = jax.jit(lambda p, x: model.apply({"params": p}, x, method=_encode_decode))(params, mel)
    with torch.no_grad():
        ref_posterior = ref.encode(_nchw(mel)).latent_dist
        ref_decoded = ref.decode(ref_posterior.mean).sample
    errs = [assert_close(posterior.mean, _nhwc(ref_posterior.mean), rel=REL, what=f"vae[{name}] mean"),
            assert_close(posterior.logvar, _nhwc(ref_posterior.logvar), rel=REL, what=f"vae[{name}] logvar"),
            assert_close(decoded, _nhwc(ref_decoded), rel=REL, what=f"vae[{name}] decode")]
    print(f"vae[{name}]: max abs error / scale (mean, logvar, decode) {[f'{e:.1e}' for e in errs]}")


@pytest.mark.parametrize("name", list(VOCODERS))
def test_vocoder_export_loads_in_transformers(name, tmp_path):
    config = vocoder_convert.config_from_json(VOCODERS[name])
    model = HifiGanVocoder(config)
    params = _random_params(model, (jnp.zeros((1, 4, config.model_in_dim)),), seed=3)
    folder = _export(tmp_path / "vocoder", vocoder_convert, config, params, TRANSFORMERS_WEIGHTS)
    ref = _load_reference(SpeechT5HifiGan, folder, tmp_path)
    if not config.normalize_before:  # written for the loader's sake, at the reference's own initial values
        assert "mean" not in params and np.array_equal(ref.mean.numpy(), np.zeros(config.model_in_dim))
        assert np.array_equal(ref.scale.numpy(), np.ones(config.model_in_dim))
    else:
        np.testing.assert_array_equal(ref.scale.numpy(), params["scale"])
    _assert_round_trip(vocoder_convert, config, params)

    mel = np.random.default_rng(0).standard_normal((2, 9, config.model_in_dim)).astype(np.float32)
    wave = jax.jit(model.apply)({"params": params}, jnp.asarray(mel))
    with torch.no_grad():
        expected = ref(torch.from_numpy(mel)).numpy()
    assert expected.std() > 0.05  # a signal, not rounding noise
    err = assert_close(wave, expected, rel=REL, what=f"vocoder[{name}]")
    print(f"vocoder[{name}]: max abs error / scale {err:.1e} (scale {np.abs(expected).max():.2f})")


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_projection_export_loads_in_diffusers(name, tmp_path):
    config = projection_convert.config_from_json(PROJECTIONS[name])
    model = AudioLDM2ProjectionModel(config)
    params = _random_params(model, projection_dummy_inputs(config), seed=4)
    ref = _load_reference(TorchProjection, _export(tmp_path / "projection_model", projection_convert, config, params,
                                                   DIFFUSERS_WEIGHTS), tmp_path)
    _assert_round_trip(projection_convert, config, params)

    rng = np.random.default_rng(0)
    length_1 = config.max_seq_length if config.use_learned_position_embedding else 5
    clap = rng.standard_normal((2, 1, config.text_encoder_dim)).astype(np.float32)
    t5 = rng.standard_normal((2, length_1, config.text_encoder_1_dim)).astype(np.float32)
    masks = np.ones((2, 1), np.int64), np.array([[1] * length_1, [1] * 3 + [0] * (length_1 - 3)], np.int64)
    hidden, mask = jax.jit(model.apply)({"params": params}, clap, t5, *masks)
    with torch.no_grad():
        expected = ref(hidden_states=torch.from_numpy(clap), hidden_states_1=torch.from_numpy(t5),
                       attention_mask=torch.from_numpy(masks[0]), attention_mask_1=torch.from_numpy(masks[1]))
    err = assert_close(hidden, expected.hidden_states.numpy(), rel=REL, what=f"projection[{name}]")
    np.testing.assert_array_equal(np.asarray(mask), expected.attention_mask.numpy())
    print(f"projection[{name}]: max abs error / scale {err:.1e}")


# ---- 2. round trips over every config form and the published configs -------------------------------------------


def _shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# test_unet's large variant costs more to trace than all the others: its form (four entries per block, two layers
# per Transformer2D) is checked against the reference at full size below (published large), torch side only.
_TRACED_FORMS = [name for name in UNET_READER_FORMS if name != "large"]


@pytest.mark.parametrize("name", list(UNET_READER_FORMS))
def test_unet_config_forms_round_trip(name):
    """Every config form the reader accepts (test_unet's variants): the config survives the round trip, and the
    reference built from the written config.json has exactly the parameters of the reference built from the
    original config (less the ``timestep_cond`` projection, which the pipeline never feeds) and of ours."""
    original = UNET_READER_FORMS[name][0]
    config = unet_convert.config_from_json(original)
    written = json.loads(json.dumps(unet_convert.config_to_json(config)))
    assert unet_convert.config_from_json(written) == config
    with torch.device("meta"):
        from_written = _shapes(TorchUNet.from_config(written).state_dict())
        from_original = _shapes(TorchUNet(**original).state_dict())
    from_original.pop("time_embedding.cond_proj.weight", None)
    assert from_written == from_original
    if name in _TRACED_FORMS:
        ours = unet_convert.to_torch(_random_params(AudioLDM2UNet(config), unet_dummy_inputs(config), 0), config)
        assert _shapes(ours) == from_written


def _sizes(shapes) -> list[int]:
    return sorted(math.prod(shape) for shape in shapes)


def _published(name: str, **overrides) -> dict:
    return {**json.loads((PUBLISHED / f"{name}.json").read_text()), **overrides}


REFERENCE_CLASSES = {unet_convert: TorchUNet, vae_convert: TorchVAE, projection_convert: TorchProjection}
PUBLISHED_CASES = {
    "unet_base": (unet_convert, "unet", {}),
    # the variants of published/README.md, as differences from base
    "unet_large": (unet_convert, "unet", dict(transformer_layers_per_block=2,
                                              cross_attention_dim=[[None, 768, 1024, None]] * 4)),
    "unet_speech": (unet_convert, "unet", dict(cross_attention_dim=768)),
    "vae": (vae_convert, "vae", {}),
    "vocoder": (vocoder_convert, "vocoder", {}),
    "projection": (projection_convert, "projection_model", {}),
}
# Our own parameters are counted for all but the UNet, whose full-size trace alone takes ~13 s on a shared core (the
# tiny exports above compare our UNet with the reference tensor by tensor).
OUR_MODULES = {
    vae_convert: lambda c: (AutoencoderKL(c), (vae_dummy_input(c),)),
    vocoder_convert: lambda c: (HifiGanVocoder(c), (jnp.zeros((1, 4, c.model_in_dim)),)),
    projection_convert: lambda c: (AudioLDM2ProjectionModel(c), projection_dummy_inputs(c)),
}


def _reference_shapes(converter, config_json: dict) -> dict:
    """Parameter and buffer shapes of the reference built from ``config_json`` on torch's meta device (no memory)."""
    with torch.device("meta"):
        if converter is vocoder_convert:
            model = SpeechT5HifiGan(SpeechT5HifiGanConfig(**config_json))
        else:
            model = REFERENCE_CLASSES[converter].from_config(config_json)
    return _shapes(model.state_dict())


@pytest.mark.parametrize("case", list(PUBLISHED_CASES))
def test_published_configs_round_trip(case):
    """Full-size published configs: the config survives the round trip and keeps what the pipeline reads from it;
    the reference built from the written config has exactly the tensors of the reference built from the published
    one and, but for the UNet, as many parameters of each size as ours."""
    converter, file, overrides = PUBLISHED_CASES[case]
    original = _published(file, **overrides)
    config = converter.config_from_json(original)
    written = json.loads(json.dumps(converter.config_to_json(config)))
    assert converter.config_from_json(written) == config
    for key in ("sample_size", "scaling_factor", "normalize_before"):
        if key in original and not (converter is vae_convert and key == "sample_size"):  # VAE: a tiling size only
            assert written[key] == original[key], key
    reference = _reference_shapes(converter, written)
    original = {k: v for k, v in original.items() if k != "_class"}  # a note of where the vocoder's values came from
    assert reference == _reference_shapes(converter, original)
    if converter in OUR_MODULES:
        module, inputs = OUR_MODULES[converter](config)
        shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *inputs)["params"]))
        # the vocoder's mean / scale: buffers the reference always holds, ours only with normalize_before
        extra = [config.model_in_dim] * 2 if converter is vocoder_convert and not config.normalize_before else []
        assert _sizes(reference.values()) == sorted(_sizes(leaf.shape for leaf in jax.tree.leaves(shapes)) + extra)
