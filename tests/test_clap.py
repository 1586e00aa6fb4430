"""CLAP parity against transformers' ``ClapModel`` (random weights, small config) and ``ClapFeatureExtractor``."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax.audio.clap_features import ClapFeatureConfig, clap_input_features, random_crop_starts, \
    resample_for_clap
from audioldm2_jax.convert.clap import abstract_params, convert_clap_state_dict, load_clap
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.clap import ClapConfig, ClapModel, own_prompt_scores, rank_waveforms

import transformers

PAD = 1
PROMPTS, PER_PROMPT = 2, 3
FRAMES = 101  # shorter than the Swin input (64 * 4 frames): exercises the bicubic time stretch


def _tiny_reference():
    # Swin grid 16x16 -> 8x8 -> 4x4 with window 4: shifted windows and patch merging in the first two stages, a
    # single unshifted window in the last.
    config = transformers.ClapConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-5),
        audio_config=dict(num_mel_bins=16, spec_size=64, window_size=4, patch_embeds_hidden_size=8,
                          depths=[2, 2, 1], num_attention_heads=[2, 2, 4], hidden_size=32),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.ClapModel(config).eval()
    # The reference initialises relative position biases to zero and norms to identity; randomise them so that
    # every parameter matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "LayerNorm" in name or ".norm" in name or "layernorm" in name:
                p.copy_(p + 0.3 * torch.randn_like(p))
        bn = model.audio_model.audio_encoder.batch_norm
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
        bn.weight.copy_(1 + 0.3 * torch.randn_like(bn.weight))
        bn.bias.copy_(0.3 * torch.randn_like(bn.bias))
        model.logit_scale_t.fill_(2.5)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _tiny_reference()
    folder = tmp_path_factory.mktemp("clap")
    model.save_pretrained(folder)
    config, params = load_clap(folder)
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 99, size=(PROMPTS, 7))
    ids[:, 0], ids[0, -1] = 0, 2  # <s> ... </s>
    ids[1, 4], ids[1, 5:] = 2, PAD  # the second prompt is shorter: padded
    mask = (ids != PAD).astype(np.int64)
    feats = rng.randn(PROMPTS * PER_PROMPT, 1, FRAMES, 16).astype(np.float32) * 3 - 20
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    input_features=torch.from_numpy(feats))
    return dict(model=model, folder=folder, config=config, params=params, ids=ids, mask=mask, feats=feats, out=out)


@pytest.fixture(scope="module")
def ours(reference):
    model = ClapModel(reference["config"])
    params = reference["params"]
    text = jax.jit(lambda p, i, m: model.apply(p, i, m, method="get_text_features"))(
        params, jnp.asarray(reference["ids"]), jnp.asarray(reference["mask"]))
    audio = jax.jit(lambda p, f: model.apply(p, f, method="get_audio_features"))(
        params, jnp.asarray(reference["feats"]))
    return dict(text=np.asarray(text), audio=np.asarray(audio))


def test_text_features(reference, ours):
    with torch.no_grad():
        ref = reference["model"].get_text_features(torch.from_numpy(reference["ids"]),
                                                   attention_mask=torch.from_numpy(reference["mask"])).pooler_output
    assert ours["text"].shape == (PROMPTS, 16)
    err = assert_close(ours["text"], ref.numpy(), what="text features")
    print(f"text features: max error {err:.2e} of scale")
    assert_close(ours["text"], reference["out"].text_embeds.numpy(), what="text embeds")


def test_audio_features(reference, ours):
    with torch.no_grad():
        ref = reference["model"].get_audio_features(torch.from_numpy(reference["feats"])).pooler_output
    assert ours["audio"].shape == (PROMPTS * PER_PROMPT, 16)
    err = assert_close(ours["audio"], ref.numpy(), what="audio features")
    print(f"audio features: max error {err:.2e} of scale")


def test_scores_and_ranking_use_each_prompts_own_waveforms(reference, ours):
    logit_scale = float(np.exp(reference["params"]["params"]["logit_scale_t"]))
    scores = np.asarray(own_prompt_scores(jnp.asarray(ours["text"]), jnp.asarray(ours["audio"]), logit_scale))
    logits = reference["out"].logits_per_text.numpy()  # [prompts, all waveforms]
    own = np.stack([logits[p, p * PER_PROMPT:(p + 1) * PER_PROMPT] for p in range(PROMPTS)])
    err = assert_close(scores, own, what="scores")
    print(f"scores: max error {err:.2e} of scale")
    order = np.asarray(rank_waveforms(jnp.asarray(scores)))
    expected = np.concatenate([p * PER_PROMPT + np.argsort(-own[p], kind="stable") for p in range(PROMPTS)])
    np.testing.assert_array_equal(order, expected)


def test_feature_extractor_matches_reference(tmp_path):
    extractor = transformers.ClapFeatureExtractor(
        feature_size=64, sampling_rate=48000, hop_length=480, max_length_s=10, fft_window_size=1024,
        frequency_min=50, frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    extractor.save_pretrained(tmp_path)
    config = ClapFeatureConfig.from_preprocessor_config(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    rng = np.random.RandomState(1)
    # What AudioLDM 2 scores: 16 kHz waveforms resampled to 48 kHz with librosa. 10.24 s is longer than CLAP's 10 s
    # (one random crop); 3.5 s is tiled and padded; exactly 10 s passes through.
    long_clip = (rng.randn(2, 163840) * 0.1).astype(np.float32)
    resampled = resample_for_clap(long_clip)
    import librosa

    short = long_clip[:, :1001]
    np.testing.assert_array_equal(resample_for_clap(short), librosa.resample(short, orig_sr=16000, target_sr=48000))
    clips = list(resampled) + [(rng.randn(168000) * 0.2).astype(np.float32), rng.randn(480000).astype(np.float32)]
    np.random.seed(123)
    ref = extractor(clips, return_tensors="pt", sampling_rate=48000)["input_features"].numpy()
    np.random.seed(123)
    starts = random_crop_starts([len(c) for c in clips], config)
    assert starts[0] > 0 or starts[1] > 0
    feats = clap_input_features(clips, config, crop_starts=starts)
    assert feats.shape == (4, 1001, 64) and ref.shape == (4, 1, 1001, 64)
    err = assert_close(feats, ref[:, 0], rel=1e-6, what="log-mel features")
    print(f"feature extractor: max error {err:.2e} of scale")


def test_config_and_checkpoint_errors(reference):
    with pytest.raises(ValueError, match="enable_fusion"):
        ClapConfig.from_transformers({"audio_config": {"enable_fusion": True}})
    with pytest.raises(ValueError, match="truncation"):
        ClapFeatureConfig.from_preprocessor_config({"truncation": "fusion"})
    state = {k: v.numpy() for k, v in reference["model"].state_dict().items()}
    del state["text_model.pooler.dense.weight"]
    state["audio_projection.linear2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"pooler/dense/kernel[\s\S]*audio_projection.linear2.bias"):
        convert_clap_state_dict(state, reference["config"])


def test_published_config_size():
    # laion/clap-htsat-unfused / cvssp/audioldm2 text_encoder: RoBERTa-base + HTSAT (depths 2-2-12-2, 128 -> 1024).
    config = ClapConfig.from_transformers({
        "projection_dim": 512, "text_config": {"layer_norm_eps": 1e-5},
        "audio_config": {"depths": [2, 2, 12, 2], "hidden_size": 1024, "patch_embeds_hidden_size": 128}})
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)))
    assert abs(count / 1e6 - 193.9) < 0.05, count
