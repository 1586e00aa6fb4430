"""Exports in the reference's layout (issue #14), for the transformers-side components (T5, GPT-2, CLAP, VITS text
encoder) and AudioMAE: our random params -> ``to_torch`` + ``config_to_json`` -> a folder -> the reference's
``from_pretrained(..., output_loading_info=True)`` loads it with no missing keys (but the parts we do not keep) and
no unexpected or misshaped ones, and computes what our model computes on the same input (fp32: max abs error within
1e-4 of the output's scale). Also the exact round trips ``to_flax(to_torch(p)) == p`` (bit for bit) and
``config_from_json(config_to_json(c)) == c``.

Every leaf of our params is random (norm scales and biases too), so a wrong key, layout or transpose in ``to_torch``
changes the reference's output or fails the key checks.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import assert_close
from flax import traverse_util
from safetensors.numpy import save_file
from test_audiomae import (BINS, DEC_DEPTH, DEC_DIM, DEC_HEADS, DEPTH, DIM, FRAMES, GRID, HEADS, PATCH, TorchAudioMAE,
                           randomise)
from test_clap import AUDIO_TESTER, TEXT_TESTER, check_audio, check_text, clap_config, random_ids_and_mask
from test_vits_text import UPSTREAM, phonemes, run_reference

from audioldm2_jax import components
from audioldm2_jax.audio.clap_features import ClapFeatureConfig, clap_audio_inputs
from audioldm2_jax.convert import audiomae, clap, gpt2, t5, vits_text
from audioldm2_jax.convert.weights import plain_params
from audioldm2_jax.models.audiomae import AudioMAEConfig, MaskedAutoencoder, extract_features
from audioldm2_jax.models.clap import ClapConfig
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder

# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def random_params(shapes, seed: int) -> dict:
    """A random value for every leaf of a params-shape tree: kernels and tables ``N(0, 1/fan_in)``, norm scales
    ``1 + N(0, 0.3^2)``, other vectors ``N(0, 0.3^2)``, BatchNorm variances and AudioMAE's ``tau`` positive."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(plain_params(shapes)).items():
        shape = tuple(leaf.shape)
        if path[-1] in ("running_var", "tau"):
            value = 0.3 + 0.7 * rng.random(shape)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]))
        else:
            value = (1.0 if path[-1] == "scale" else 0.0) + 0.3 * rng.standard_normal(shape)
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def assert_round_trips(module, params, config) -> dict:
    """``to_torch`` gives float32 arrays, ``to_flax`` of them is ``params`` bit for bit, and the config survives
    JSON. Returns the state dict."""
    state_dict = module.to_torch(params, config)
    assert all(v.dtype in (np.float32, np.int64) for v in state_dict.values())
    back = traverse_util.flatten_dict(module.to_flax(state_dict, config))
    want = traverse_util.flatten_dict(plain_params(params))
    assert back.keys() == want.keys()
    for path, value in want.items():
        np.testing.assert_array_equal(back[path], value, err_msg="/".join(path))
        assert back[path].dtype == np.float32
    assert module.config_from_json(json.loads(json.dumps(module.config_to_json(config)))) == config
    return state_dict


def export(folder, module, params, config):
    """What the registry will write for one component: ``config.json`` + ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(module.config_to_json(config), indent=2))
    save_file(module.to_torch(params, config), str(folder / "model.safetensors"))
    return folder


def load_reference(model_class, folder, allowed_missing=frozenset()):
    """The reference loaded from an export: no missing key outside ``allowed_missing`` (which must be exactly the
    missing set), nothing unexpected or misshaped. The config keys we wrote are the ones it holds."""
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    assert set(info["missing_keys"]) == set(allowed_missing), sorted(set(info["missing_keys"]) ^ allowed_missing)
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    written = json.loads((folder / "config.json").read_text())
    held = model.config.to_dict()
    for key, value in written.items():
        if isinstance(value, dict):  # sub-configs (CLAP's towers)
            for sub, v in value.items():
                assert json.loads(json.dumps(held[key][sub])) == v, f"{key}.{sub}"
        elif key != "dtype":
            assert json.loads(json.dumps(held[key])) == value, key
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# T5 encoder
# ----------------------------------------------------------------------------------------------------------------

T5_TINY = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
               relative_attention_max_distance=16)
T5_CASES = {
    "gated-gelu (FLAN-T5)": T5Config(**T5_TINY, dense_act_fn="gelu_new", is_gated_act=True),
    "relu, not gated (T5)": T5Config(**T5_TINY, dense_act_fn="relu", is_gated_act=False, layer_norm_epsilon=1e-3),
    "gated exact gelu": T5Config(**T5_TINY, dense_act_fn="gelu", is_gated_act=True),
}


def t5_compare(reference, config, params, what):
    rng = np.random.RandomState(0)
    ids = rng.randint(0, config.vocab_size, (2, 20))
    mask = np.ones((2, 20), np.int64)
    mask[1, 13:] = 0
    with torch.no_grad():
        ref = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    ours = jax.jit(T5EncoderModel(config).apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    err = assert_close(ours, ref.numpy(), what=f"T5 {what}")
    print(f"T5 {what}: max error {err:.2e} of scale")


@pytest.mark.parametrize("case", list(T5_CASES))
def test_t5_export(tmp_path, case):
    config = T5_CASES[case]
    params = random_params(t5.t5_param_shapes(config), seed=1)
    state_dict = assert_round_trips(t5, params, config)
    assert "shared.weight" in state_dict and "encoder.embed_tokens.weight" not in state_dict  # tied, as saved
    assert ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state_dict) == config.is_gated_act
    reference = load_reference(transformers.T5EncoderModel, export(tmp_path, t5, params, config))
    assert (reference.config.dense_act_fn, reference.config.is_gated_act) == (config.dense_act_fn,
                                                                              config.is_gated_act)
    t5_compare(reference, config, params, case)


def test_t5_untied_checkpoint_exports_the_encoders_table(tmp_path):
    """A reference built with ``tie_word_embeddings=false`` has two tables; the encoder's own is what we keep and
    what the export writes (as the tied one)."""
    ref_config = transformers.T5Config(**T5_TINY, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    ref_config.tie_word_embeddings = False
    torch.manual_seed(0)
    original = transformers.T5EncoderModel(ref_config).eval()
    with torch.no_grad():
        original.shared.weight.normal_()
        original.encoder.embed_tokens.weight.normal_()
    original.save_pretrained(tmp_path / "original")
    config = t5.config_from_json(json.loads((tmp_path / "original/config.json").read_text()))
    sd = {k: v.numpy() for k, v in original.state_dict().items()}
    params = t5.to_flax(sd, config)
    np.testing.assert_array_equal(params["shared"]["embedding"], sd["encoder.embed_tokens.weight"])
    assert_round_trips(t5, params, config)
    reference = load_reference(transformers.T5EncoderModel, export(tmp_path / "export", t5, params, config))
    t5_compare(reference, config, params, "untied")
    ids = torch.arange(12)[None]
    with torch.no_grad():
        err = assert_close(reference(input_ids=ids).last_hidden_state.numpy(),
                           original(input_ids=ids).last_hidden_state.numpy(), what="untied original vs export")
    print(f"T5 untied: original vs exported reference {err:.2e} of scale")


# ----------------------------------------------------------------------------------------------------------------
# GPT-2 (diffusers' AudioLDM2Pipeline loads GPT2LMHeadModel)
# ----------------------------------------------------------------------------------------------------------------

GPT2_TINY = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
GPT2_CASES = {
    "tester (n_inner 37, gelu), max_new_tokens 5": GPT2Config(**GPT2_TINY, n_inner=37, activation_function="gelu",
                                                               max_new_tokens=5),
    "n_inner null, inverse-layer scaling, eps 1e-3": GPT2Config(**GPT2_TINY, scale_attn_by_inverse_layer_idx=True,
                                                                layer_norm_epsilon=1e-3, max_new_tokens=512),
    "add_cross_attention, unscaled, relu": GPT2Config(**GPT2_TINY, add_cross_attention=True, scale_attn_weights=False,
                                                      activation_function="relu"),
}


@pytest.mark.parametrize("case", list(GPT2_CASES))
def test_gpt2_export(tmp_path, case):
    config = GPT2_CASES[case]
    params = random_params(gpt2.gpt2_param_shapes(config), seed=2)
    state_dict = assert_round_trips(gpt2, params, config)
    # Conv1D weights are stored (in, out), as our kernels: c_fc maps n_embd -> inner.
    assert state_dict["transformer.h.0.mlp.c_fc.weight"].shape == (config.n_embd, config.inner_dim)
    assert not any(k.startswith("lm_head.") for k in state_dict)  # tied to wte, not stored
    reference = load_reference(transformers.GPT2LMHeadModel, export(tmp_path, gpt2, params, config))
    assert reference.config.max_new_tokens == config.max_new_tokens  # diffusers reads it from here
    assert reference.lm_head.weight.data_ptr() == reference.transformer.wte.weight.data_ptr()
    x = np.random.RandomState(3).randn(2, 10, config.n_embd).astype(np.float32)
    mask = np.ones((2, 10), np.int64)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = reference.transformer(inputs_embeds=torch.from_numpy(x),
                                    attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    ours = jax.jit(GPT2Model(config).apply)({"params": params}, jnp.asarray(x), jnp.asarray(mask))
    valid = mask.astype(bool)  # padded query rows are not compared (they attend nowhere in the reference)
    err = assert_close(np.asarray(ours)[valid], ref[valid], what=f"GPT-2 {case}")
    print(f"GPT-2 {case}: max error {err:.2e} of scale")


# ----------------------------------------------------------------------------------------------------------------
# CLAP: the full model (fusion on) and the text tower the trainer keeps
# ----------------------------------------------------------------------------------------------------------------

CLAP_AUDIO_ONLY_KEYS = ("audio_model.", "audio_projection.", "logit_scale_a", "logit_scale_t")


@pytest.fixture(scope="module")
def clap_case():
    ref_config = clap_config(transformers.ClapTextConfig(**TEXT_TESTER),
                             transformers.ClapAudioConfig(**AUDIO_TESTER, enable_fusion=True), projection_dim=64)
    config = clap.config_from_json(json.loads(ref_config.to_json_string()))
    assert config.audio.enable_fusion
    return config, random_params(clap.abstract_params(config), seed=3)


def test_clap_full_export(tmp_path, clap_case):
    config, params = clap_case
    state_dict = assert_round_trips(clap, params, config)
    reference = load_reference(transformers.ClapModel, export(tmp_path, clap, params, config))
    # Every tensor and buffer the reference holds is the one we wrote (position ids, relative position index,
    # BatchNorm step counters included).
    held = reference.state_dict()
    assert set(held) == set(state_dict)
    for key, value in held.items():
        np.testing.assert_array_equal(value.numpy(), state_dict[key], err_msg=key)
    rng = np.random.RandomState(4)
    ids, mask = random_ids_and_mask(rng, 4, 9, config.text.vocab_size)
    check_text(reference, config, {"params": params}, ids, mask, "export")
    feats = (rng.randn(4, 4, 256, 16) * 2).astype(np.float32)
    check_audio(reference, config, {"params": params}, feats, "export (fused)", np.array([True, False, True, False]))


def test_clap_text_only_export(tmp_path, clap_case):
    config, full = clap_case
    params = {name: full[name] for name in clap.TEXT_TOWER}
    state_dict = assert_round_trips(clap, params, config)
    assert all(k.startswith(("text_model.", "text_projection.")) for k in state_dict)
    folder = export(tmp_path, clap, params, config)
    fresh = transformers.ClapModel(transformers.ClapConfig.from_pretrained(folder))
    audio_side = {k for k in fresh.state_dict() if k.startswith(CLAP_AUDIO_ONLY_KEYS)}
    assert audio_side and all(k.startswith(CLAP_AUDIO_ONLY_KEYS) for k in audio_side)
    reference = load_reference(transformers.ClapModel, folder, allowed_missing=audio_side)
    ids, mask = random_ids_and_mask(np.random.RandomState(5), 4, 9, config.text.vocab_size)
    check_text(reference, config, {"params": full}, ids, mask, "text-only export")
    # A full state dict still reads as both towers.
    assert set(clap.to_flax(clap.to_torch(full, config), config)) == set(full)


def test_clap_config_without_a_transformers_spelling():
    config = ClapConfig()
    bad = dataclasses.replace(config, text=dataclasses.replace(config.text, projection_dim=7))
    with pytest.raises(ValueError, match="projection_dim"):
        clap.config_to_json(bad)


FEATURE_CASES = {
    "rand_trunc, repeat, 16 kHz": ClapFeatureConfig(sampling_rate=16000, feature_size=32, hop_length=160,
                                                    fft_window_size=512, max_length_s=1, frequency_min=20.0,
                                                    frequency_max=7000.0, padding="repeat", truncation="rand_trunc",
                                                    top_db=80.0),
    "fusion, repeatpad": ClapFeatureConfig(sampling_rate=16000, feature_size=32, hop_length=160, fft_window_size=400,
                                           max_length_s=1, frequency_min=0.0, frequency_max=8000.0,
                                           padding="repeatpad", truncation="fusion"),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_clap_feature_extractor_export(tmp_path, case):
    config = FEATURE_CASES[case]
    written = config.to_preprocessor_config()
    assert ClapFeatureConfig.from_preprocessor_config(json.loads(json.dumps(written))) == config
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(written))
    extractor = transformers.ClapFeatureExtractor.from_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path / "resaved")  # what transformers itself writes for these settings
    assert json.loads((tmp_path / "resaved/preprocessor_config.json").read_text()) == written
    rng = np.random.RandomState(6)
    clips = [(rng.randn(n) * 0.3).astype(np.float32) for n in (16000, 5000, 11111)]  # none needs a random crop
    ref = extractor(clips, sampling_rate=16000, return_tensors="np")
    feats, is_longer = clap_audio_inputs(clips, config)
    if config.fusion:  # no clip is longer than the window: both flag one clip at random (their own draws)
        assert is_longer.sum() == ref["is_longer"].sum() == 1
    else:
        np.testing.assert_array_equal(is_longer, ref["is_longer"][:, 0])
    err = assert_close(feats, ref["input_features"], rel=1e-6, what=f"features {case}")
    print(f"CLAP features {case}: max error {err:.2e} of scale")


# ----------------------------------------------------------------------------------------------------------------
# VITS text encoder (inside a full VitsModel)
# ----------------------------------------------------------------------------------------------------------------

VITS_CASES = {
    "vocab 183, window 3, no biases, gelu": dict(vocab_size=183, window_size=3, use_bias=False, hidden_act="gelu",
                                                  ffn_kernel_size=4),
}


@pytest.mark.parametrize("case", list(VITS_CASES))
def test_vits_text_export(tmp_path, case):
    fields = {k: UPSTREAM[k] for k in VitsTextConfig.__dataclass_fields__ if k in UPSTREAM}
    config = VitsTextConfig(**{**fields, **VITS_CASES[case]})
    params = random_params(vits_text.abstract_params(config), seed=7)
    state_dict = assert_round_trips(vits_text, params, config)
    assert all(k.startswith("text_encoder.") for k in state_dict)
    folder = export(tmp_path, vits_text, params, config)
    fresh = transformers.VitsModel(transformers.VitsConfig.from_pretrained(folder))
    rest = {k for k in fresh.state_dict() if not k.startswith("text_encoder.")}
    reference = load_reference(transformers.VitsModel, folder, allowed_missing=rest)
    tokens, mask = phonemes(config.vocab_size, 11, 11)
    ref = run_reference(reference, tokens, mask)
    ours = jax.jit(VitsTextEncoder(config).apply)({"params": params}, jnp.asarray(tokens), jnp.asarray(mask))
    for name, a, b in zip(("last_hidden_state", "prior_means", "prior_log_variances"), ours, ref):
        err = assert_close(a, b, what=f"VITS {case} {name}")
        print(f"VITS {case} {name}: max error {err:.2e} of scale")


# ----------------------------------------------------------------------------------------------------------------
# AudioMAE (the release's key layout; the torch reference of test_audiomae.py)
# ----------------------------------------------------------------------------------------------------------------


def audiomae_config(decoder_type: str) -> AudioMAEConfig:
    return AudioMAEConfig(input_frames=FRAMES, mel_bins=BINS, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                          num_heads=HEADS, decoder_embed_dim=DEC_DIM, decoder_depth=DEC_DEPTH,
                          decoder_num_heads=DEC_HEADS, decoder_type=decoder_type, mask_ratio=0.75)


def torch_layout(state_dict: dict) -> dict:
    """The release's ``tau`` back to timm's ``logit_scale`` (``tau = exp(-logit_scale)``), as torch tensors."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".tau"):
            out[key[: -len("tau")] + "logit_scale"] = -torch.log(torch.from_numpy(value))
        else:
            out[key] = torch.from_numpy(value)
    return out


@pytest.mark.parametrize("decoder_type", ["global", "local"])
def test_audiomae_export(tmp_path, decoder_type):
    config = audiomae_config(decoder_type)
    params = random_params(audiomae.audiomae_param_shapes(config, with_decoder=True), seed=8)
    state_dict = assert_round_trips(audiomae, params, config)
    # The reference's own structure takes the state dict with nothing missing or left over.
    torch.manual_seed(0)
    model = randomise(TorchAudioMAE(local_decoder=decoder_type == "local"), 1)
    model.load_state_dict(torch_layout(state_dict), strict=True)
    fbanks = np.random.default_rng(9).standard_normal((2, FRAMES, BINS)).astype(np.float32)
    with torch.no_grad():
        ref_features = model.features(torch.from_numpy(fbanks), contextual_depth=DEPTH - 4).numpy()
    err = assert_close(extract_features(params, fbanks, config=config), ref_features, what="AudioMAE features")
    print(f"AudioMAE {decoder_type} features: max error {err:.2e} of scale")
    noise = np.random.default_rng(10).random((2, GRID[0] * GRID[1])).astype(np.float32)
    with torch.no_grad():
        _, ref_pred, _ = model(torch.from_numpy(fbanks), torch.from_numpy(noise), 0.75)
    out = jax.jit(lambda p, x, n: MaskedAutoencoder(config).apply({"params": p}, x, n))(params, fbanks, noise)
    err = assert_close(out["pred"], ref_pred.numpy(), what="AudioMAE decoder prediction")
    print(f"AudioMAE {decoder_type} decoder: max error {err:.2e} of scale")
    # The folder the registry writes reads back through the registry: same config, same params.
    loaded_config, loaded, _ = components.load("audiomae", export(tmp_path, audiomae, params, config))
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_audiomae_config_json_errors():
    with pytest.raises(ValueError, match="unknown AudioMAE config keys"):
        audiomae.config_from_json({"architectures": ["AudioMAE"], "embed_dims": 4})
    with pytest.raises(ValueError, match="architectures"):
        audiomae.config_from_json({"architectures": ["ViTModel"]})
