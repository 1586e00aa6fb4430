"""CLAP parity against transformers' ``ClapModel`` (random weights, every tensor of the reference perturbed, saved
with ``save_pretrained`` and loaded through our converter).

Configs: a small one with three Swin stages, the ones transformers' own model testers build (``ClapTextModelTester``,
``ClapAudioModelTester``, ``ClapModelTester``), diffusers' AudioLDM 2 test CLAP (4 mel views as input channels),
the fused model (``enable_fusion``), and configs the reference builds but cannot run audio through. The feature
extractor has its own file, ``test_clap_features.py``.
"""

import contextlib
import json
import types

import numpy as np
import pytest
import torch
from conftest import assert_close

import jax
import jax.numpy as jnp

from audioldm2_jax.audio.clap_features import ClapFeatureConfig
from audioldm2_jax import components
from audioldm2_jax.convert import clap
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.models.clap import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig, own_prompt_scores, \
    rank_waveforms

import transformers

PAD = 1
PROMPTS, PER_PROMPT = 2, 3
FRAMES = 101  # shorter than the Swin input (64 * 4 frames): exercises the bicubic time stretch


def perturb(model, seed=0):
    """Seeded noise on EVERY tensor of the reference (transformers zero-initialises biases, sets norms to identity
    and position biases to zero, and draws weights with std 0.02, so small that attention barely departs from
    uniform: a wrong mapping of many tensors would otherwise go unseen). Matrices and kernels get noise of std
    1 / sqrt(fan in) (activations stay of order one through every layer), vectors and scalars (biases, norms, logit
    scales) of std 0.5; BatchNorm statistics a random mean and a positive variance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1 / np.sqrt(np.prod(p.shape[1:])) if p.ndim >= 2 else 0.5
            p.add_(float(scale) * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


def build(tmp_path, config, seed=0):
    """A perturbed reference ``ClapModel`` saved and loaded back: ``(reference, our config, our variables)``."""
    torch.manual_seed(seed)
    model = perturb(transformers.ClapModel(config).eval(), seed)
    model.save_pretrained(tmp_path)
    ours_config, params, _ = components.load("clap", tmp_path)
    return model, ours_config, {"params": params}


def ours_text(config, params, ids, mask):
    """``(last_hidden_state, pooled, embeds)`` of our text tower."""
    model = ClapModel(config)

    def run(p, i, m):
        hidden, pooled = model.apply(p, i, m, method=lambda mod, i, m: mod.text_model(i, m))
        return hidden, pooled, model.apply(p, i, m, method="get_text_features")

    return [np.asarray(x) for x in jax.jit(run)(params, jnp.asarray(ids), None if mask is None else jnp.asarray(mask))]


def reference_token_layout(hidden, config):
    """Our final tokens ``[B, H*W, C]`` (row-major grid) in the order of the reference's ``last_hidden_state``
    ``[B, C, c, (H/c)*W]``: its pooling reshape groups the H grid rows into ``freq_ratio`` bands of c = H / r rows."""
    b, _, ch = hidden.shape
    h, w = config.audio.stage_resolutions[-1]
    c = h // config.audio.freq_ratio
    x = hidden.transpose(0, 2, 1).reshape(b, ch, h // c, c, w)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, ch, c, -1)


def ours_audio(config, params, feats, is_longer=None):
    """``(last_hidden_state, pooled, embeds)`` of our audio tower (tokens in the reference's layout)."""
    model = ClapModel(config)
    longer = None if is_longer is None else jnp.asarray(is_longer)

    def run(p, f, l):
        hidden, pooled = model.apply(p, f, l, method=lambda mod, f, l: mod.audio_model(f, l))
        return hidden, pooled, model.apply(p, f, l, method="get_audio_features")

    hidden, pooled, embeds = (np.asarray(x) for x in jax.jit(run)(params, jnp.asarray(feats), longer))
    return reference_token_layout(hidden, config), pooled, embeds


def ref_text(model, ids, mask):
    i = torch.from_numpy(ids)
    m = None if mask is None else torch.from_numpy(mask)
    with torch.no_grad():
        out = model.text_model(input_ids=i, attention_mask=m)
        embeds = model.get_text_features(input_ids=i, attention_mask=m).pooler_output
    return out.last_hidden_state.numpy(), out.pooler_output.numpy(), embeds.numpy()


def ref_audio(model, feats, is_longer=None):
    f = torch.from_numpy(feats)
    longer = None if is_longer is None else torch.from_numpy(np.asarray(is_longer))[:, None]
    with torch.no_grad():
        out = model.audio_model(input_features=f, is_longer=longer)
        embeds = model.get_audio_features(input_features=f, is_longer=longer).pooler_output
    return out.last_hidden_state.numpy(), out.pooler_output.numpy(), embeds.numpy()


def check_text(model, config, params, ids, mask, what):
    for name, o, r in zip(("last hidden state", "pooled", "embeds"), ours_text(config, params, ids, mask),
                          ref_text(model, ids, mask)):
        err = assert_close(o, r, what=f"{what} text {name}")
        print(f"{what} text {name}: max error {err:.2e} of scale")


def check_audio(model, config, params, feats, what, is_longer=None):
    for name, o, r in zip(("last hidden state", "pooled", "embeds"), ours_audio(config, params, feats, is_longer),
                          ref_audio(model, feats, is_longer)):
        err = assert_close(o, r, what=f"{what} audio {name}")
        print(f"{what} audio {name}: max error {err:.2e} of scale")


def clap_config(text, audio, projection_dim):
    """``ClapConfig.from_text_audio_configs`` of transformers 4 (what the upstream testers call; gone in 5)."""
    return transformers.ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


def random_ids_and_mask(rng, batch, length, vocab):
    """Token ids and a left-aligned attention mask as transformers' ``ClapTextModelTester`` makes them (random ids:
    the padding id 1 may appear inside the text)."""
    ids = rng.randint(0, vocab, size=(batch, length))
    mask = np.zeros((batch, length), np.int64)
    for row, start in enumerate(rng.randint(1, length - 1, size=batch)):
        mask[row, :start] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------------------------
# A small three-stage model: text, audio, joint scores and the own-prompt ranking
# ----------------------------------------------------------------------------------------------------------------


def _small_config(**audio):
    # Swin grid 16x16 -> 8x8 -> 4x4 with window 4: shifted windows and patch merging in the first two stages, a
    # single unshifted window in the last.
    return transformers.ClapConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-5),
        audio_config=dict(dict(num_mel_bins=16, spec_size=64, window_size=4, patch_embeds_hidden_size=8,
                               depths=[2, 2, 1], num_attention_heads=[2, 2, 4], hidden_size=32), **audio),
        projection_dim=16)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clap")
    model, config, params = build(folder, _small_config())
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
    assert ours["text"].shape == (PROMPTS, 16)
    check_text(reference["model"], reference["config"], reference["params"], reference["ids"], reference["mask"],
               "small")
    assert_close(ours["text"], reference["out"].text_embeds.numpy(), what="text embeds")


def full_width_features(seed=7):
    """Zero-mean independent values at the Swin input's full width. (Features far from the BatchNorm's statistics,
    like the fixture's -20 dB, give every patch nearly the same direction after the patch LayerNorm, and a time
    stretch smooths neighbouring patches: either way attention hardly depends on its weights.)"""
    return (np.random.RandomState(seed).randn(3, 1, 256, 16) * 2).astype(np.float32)


def test_audio_features(reference, ours):
    assert ours["audio"].shape == (PROMPTS * PER_PROMPT, 16)
    check_audio(reference["model"], reference["config"], reference["params"], reference["feats"], "small")
    check_audio(reference["model"], reference["config"], reference["params"], full_width_features(), "small, 256")
    # [B, T, F] (our front end's layout) is the same as the reference's [B, 1, T, F].
    assert_close(ours["audio"], reference["out"].audio_embeds.numpy(), what="audio embeds")


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


@pytest.mark.parametrize("tower,prefix", [("text", "text_model.encoder.layer.0.attention.self."),
                                          ("audio", "audio_model.audio_encoder.layers.0.blocks.1.attention.self.")])
def test_perturbation_exposes_a_swapped_query_key_bias(reference, tower, prefix):
    """The parity tests above would catch a converter that swapped the query and key biases: with every tensor
    perturbed, loading them swapped moves the outputs they compare well beyond the tolerance. (A key bias alone
    adds the same amount to every logit of a query, which softmax ignores; the swap shows through the query
    bias.)"""
    state = {k: v.numpy() for k, v in reference["model"].state_dict().items()}
    state[prefix + "query.bias"], state[prefix + "key.bias"] = state[prefix + "key.bias"], state[prefix + "query.bias"]
    params = {"params": clap.to_flax(state, reference["config"])}
    if tower == "text":
        ours = ours_text(reference["config"], params, reference["ids"], reference["mask"])
        refs = ref_text(reference["model"], reference["ids"], reference["mask"])
    else:
        ours = ours_audio(reference["config"], params, full_width_features())
        refs = ref_audio(reference["model"], full_width_features())
    err = max(np.abs(o - r).max() / np.abs(r).max() for o, r in zip(ours, refs))
    print(f"{tower}: swapped q/k bias -> error {err:.2e} of scale")
    assert err > 1e-3  # ten times the parity tolerance


def test_config_and_checkpoint_errors(reference):
    with pytest.raises(ValueError, match="num_attention_heads"):  # transformers refuses it when building too
        ClapConfig.from_transformers({"audio_config": {"num_attention_heads": [5, 8, 16, 32]}})
    with pytest.raises(ValueError, match="patch_stride"):
        ClapConfig.from_transformers({"audio_config": {"patch_stride": [4, 4, 4]}})
    state = {k: v.numpy() for k, v in reference["model"].state_dict().items()}
    del state["text_model.pooler.dense.weight"]
    state["audio_projection.linear2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"pooler/dense/kernel[\s\S]*audio_projection.linear2.bias"):
        clap.to_flax(state, reference["config"])
    with pytest.raises(ValueError, match="log-mel features"):
        ClapModel(reference["config"]).apply(reference["params"], jnp.zeros((2, 8)), method="get_audio_features")
    with pytest.raises(ValueError, match="mel bins"):
        ClapModel(reference["config"]).apply(reference["params"], jnp.zeros((1, 1, 10, 8)),
                                             method="get_audio_features")
    with pytest.raises(ValueError, match="frames exceed"):
        ClapModel(reference["config"]).apply(reference["params"], jnp.zeros((1, 1, 300, 16)),
                                             method="get_audio_features")
    with pytest.raises(ValueError, match="patch_embed_input_channels=1"):  # 4 views into a 1-channel convolution
        ClapModel(reference["config"]).apply(reference["params"], jnp.zeros((1, 4, 100, 16)),
                                             method="get_audio_features")


def test_published_config_size():
    # laion/clap-htsat-unfused / cvssp/audioldm2 text_encoder: RoBERTa-base + HTSAT (depths 2-2-12-2, 128 -> 1024).
    config = ClapConfig.from_transformers({
        "projection_dim": 512, "text_config": {"layer_norm_eps": 1e-5},
        "audio_config": {"depths": [2, 2, 12, 2], "hidden_size": 1024, "patch_embeds_hidden_size": 128}})
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(clap.abstract_params(config)))
    assert abs(count / 1e6 - 193.9) < 0.05, count


def test_config_defaults_are_transformers_defaults():
    """Keys a config.json omits mean what they mean to transformers: an empty dict, transformers' default
    ``ClapConfig`` saved to JSON, and our dataclass defaults are the same config."""
    from_reference = ClapConfig.from_transformers(json.loads(transformers.ClapConfig().to_json_string()))
    assert ClapConfig.from_transformers({}) == from_reference == ClapConfig()
    audio, text = transformers.ClapAudioConfig(), transformers.ClapTextConfig()
    for ours, ref in ((ClapAudioConfig(), audio), (ClapTextConfig(), text)):
        for field in ours.__dataclass_fields__:
            want = getattr(ref, field)
            want = tuple(want) if isinstance(want, list) else want
            if field in ("patch_size", "patch_stride") and isinstance(want, int):
                want = (want, want)
            assert getattr(ours, field) == want, field
    top = transformers.ClapConfig()
    assert (ClapConfig().projection_dim, ClapConfig().logit_scale_init_value) == (top.projection_dim,
                                                                                 top.logit_scale_init_value)
    # patch_size / patch_stride as an int or a pair, projection settings from the top level (as transformers does).
    c = ClapConfig.from_transformers({"projection_dim": 8, "projection_hidden_act": "gelu",
                                      "audio_config": {"patch_stride": 2, "patch_size": [4, 4], "projection_dim": 3}})
    assert c.audio.patch_stride == (2, 2) and c.audio.patch_size == (4, 4)
    assert c.audio.projection_dim == c.text.projection_dim == 8 and c.text.projection_hidden_act == "gelu"


# ----------------------------------------------------------------------------------------------------------------
# transformers' own model testers (tests/models/clap/test_modeling_clap.py), as parity tests
# ----------------------------------------------------------------------------------------------------------------

# ClapTextModelTester: note the default layer_norm_eps (1e-12) and max_position_embeddings 512.
TEXT_TESTER = dict(vocab_size=99, hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, dropout=0.1, attention_dropout=0.1, max_position_embeddings=512,
                   initializer_range=0.02, projection_hidden_act="relu")
# ClapAudioModelTester (extra keys such as image_size, num_channels, freq_ratio are stored but unused by the model).
AUDIO_TESTER = dict(image_size=60, patch_size=2, num_mel_bins=16, window_size=4, num_channels=3, hidden_size=32,
                    patch_stride=2, projection_dim=32, depths=[2, 2], num_hidden_layers=2, num_attention_heads=[2, 2],
                    intermediate_size=37, dropout=0.1, attention_dropout=0.1, initializer_range=0.02, spec_size=64,
                    freq_ratio=2, patch_embeds_hidden_size=16)
TESTER_BATCH = 12


@pytest.fixture(scope="module")
def tester_model(tmp_path_factory):
    """ClapModelTester: both testers' configs joined by ``from_text_audio_configs(projection_dim=64)``."""
    config = clap_config(
        transformers.ClapTextConfig(**TEXT_TESTER), transformers.ClapAudioConfig(**AUDIO_TESTER), projection_dim=64)
    return build(tmp_path_factory.mktemp("clap-tester"), config, seed=1)


def test_text_tester_config(tester_model):
    model, config, params = tester_model
    assert config.text.layer_norm_eps == 1e-12 and config.text.projection_dim == 64
    ids, mask = random_ids_and_mask(np.random.RandomState(1), TESTER_BATCH, 7, 99)
    check_text(model, config, params, ids, mask, "tester")
    check_text(model, config, params, ids, None, "tester, no mask")  # the tester's second call


def test_audio_tester_config(tester_model):
    model, config, params = tester_model
    # floats_tensor([batch, 1, hidden_size, num_mel_bins]): 32 frames, stretched to the 256-frame Swin input.
    feats = np.random.RandomState(2).rand(TESTER_BATCH, 1, 32, 16).astype(np.float32)
    check_audio(model, config, params, feats, "tester")


def test_clap_model_tester_logits(tester_model):
    model, config, params = tester_model
    rng = np.random.RandomState(3)
    ids, mask = random_ids_and_mask(rng, TESTER_BATCH, 7, 99)
    feats = rng.rand(TESTER_BATCH, 1, 32, 16).astype(np.float32)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), input_features=torch.from_numpy(feats),
                    attention_mask=torch.from_numpy(mask)).logits_per_text.numpy()
    ours = jax.jit(ClapModel(config).apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(feats))
    err = assert_close(np.asarray(ours), ref, what="logits_per_text")
    print(f"tester logits: max error {err:.2e} of scale")


# ----------------------------------------------------------------------------------------------------------------
# Mel views as channels (diffusers' AudioLDM 2 test CLAP) and the fused model
# ----------------------------------------------------------------------------------------------------------------


def test_diffusers_audioldm2_clap(tmp_path):
    """diffusers' AudioLDM 2 fast-test CLAP: an unfused model whose patch convolution takes 4 input channels, fed
    the 4 mel views of a ``fusion`` feature extractor (hop 7900: 61 frames of 64 bins, stretched to 64)."""
    text = dict(bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, layer_norm_eps=1e-05,
                num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, projection_dim=16)
    audio = dict(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, layer_norm_eps=1e-05,
                 depths=[2, 2], num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=192, projection_dim=16,
                 patch_size=2, patch_stride=2, patch_embed_input_channels=4)
    config = clap_config(
        transformers.ClapTextConfig(**text), transformers.ClapAudioConfig(**audio), projection_dim=16)
    model, ours_config, params = build(tmp_path, config, seed=2)
    assert ours_config.audio.patch_embed_input_channels == 4 and not ours_config.audio.enable_fusion
    rng = np.random.RandomState(4)
    feats = (rng.randn(3, 4, 61, 64) * 2).astype(np.float32)
    check_audio(model, ours_config, params, feats, "diffusers")
    ids, mask = random_ids_and_mask(rng, 3, 9, 1000)
    check_text(model, ours_config, params, ids, mask, "diffusers")


@pytest.fixture(scope="module")
def fused_model(tmp_path_factory):
    """The tester's audio config with feature fusion (laion/clap-htsat-fused's architecture, tiny)."""
    config = clap_config(
        transformers.ClapTextConfig(**TEXT_TESTER), transformers.ClapAudioConfig(**AUDIO_TESTER, enable_fusion=True),
        projection_dim=64)
    return build(tmp_path_factory.mktemp("clap-fused"), config, seed=3)


@pytest.mark.parametrize("frames,views", [(256, 4), (32, 4), (256, 1)], ids=["full-width", "stretched", "one-view"])
def test_fused_audio_tower(fused_model, frames, views):
    """Global view through ``proj``; for clips flagged is_longer, 3 local views through ``mel_conv2d`` merged by the
    attentional fusion block; others keep the global patches. One view only: the local patches are all zero."""
    model, config, params = fused_model
    assert config.audio.enable_fusion
    feats = (np.random.RandomState(frames).randn(4, views, frames, 16) * 2).astype(np.float32)
    is_longer = np.array([True, False, True, False])
    check_audio(model, config, params, feats, f"fused {frames}x{views}", is_longer)
    # The fusion matters: the same clips unflagged give other embeddings, and flags only change flagged rows.
    unflagged = ours_audio(config, params, feats, np.zeros(4, bool))[2]
    flagged = ours_audio(config, params, feats, is_longer)[2]
    assert np.abs(unflagged[~is_longer] - flagged[~is_longer]).max() < 1e-6
    assert np.abs(unflagged[is_longer] - flagged[is_longer]).max() > 1e-3
    with pytest.raises(ValueError, match="is_longer"):
        ClapModel(config).apply(params, jnp.asarray(feats), method="get_audio_features")


# ----------------------------------------------------------------------------------------------------------------
# Configs the reference builds but cannot run audio through: they load (the text tower works) and say why
# ----------------------------------------------------------------------------------------------------------------

CANNOT_RUN = {
    # A Swin window larger than a stage's token grid (a 2x2 last stage, window 4): the reference shrinks the window
    # but keeps the 4x4 window's relative position bias.
    "window": (dict(spec_size=8, window_size=4, num_mel_bins=8, depths=[1, 1], num_attention_heads=[1, 1],
                    hidden_size=192, patch_size=2, patch_stride=2, patch_embed_input_channels=4),
               (4, 8), "window_size=4 exceeds stage 1's 2x2 token grid"),
    "channel_map": (dict(AUDIO_TESTER, enable_fusion=True, fusion_type="channel_map"), (4, 256),
                    "fusion_type='channel_map'"),
    "odd-padding": (dict(AUDIO_TESTER, patch_size=3), (1, 256), "size - stride must be even"),
    "frequency-groups": (dict(AUDIO_TESTER, depths=[1, 1, 1, 1, 1], num_attention_heads=[1] * 5, window_size=2),
                         (1, 256), "frequency groups"),
    "unflattened": (dict(AUDIO_TESTER, flatten_patch_embeds=False), (1, 256), "flatten_patch_embeds"),
    # The audio model runs, but its projection expects hidden_size inputs.
    "hidden-size": (dict(AUDIO_TESTER, hidden_size=24), (1, 256), "hidden_size=24 differs from the last stage width"),
}


@pytest.mark.parametrize("case", sorted(CANNOT_RUN))
def test_configs_whose_audio_tower_cannot_run(tmp_path, case):
    audio, (views, frames), message = CANNOT_RUN[case]
    text = dict(TEXT_TESTER, hidden_size=8, num_attention_heads=1, num_hidden_layers=1)
    config = clap_config(
        transformers.ClapTextConfig(**text), transformers.ClapAudioConfig(**audio), projection_dim=8)
    model, ours_config, params = build(tmp_path, config)
    feats = np.zeros((2, views, frames, audio["num_mel_bins"]), np.float32)
    with pytest.raises(Exception), torch.no_grad():  # the reference fails too (each in its own way)
        model.get_audio_features(input_features=torch.from_numpy(feats), is_longer=torch.ones(2, 1, dtype=bool))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ClapModel(ours_config).apply(params, jnp.asarray(feats), jnp.ones(2, bool), method="get_audio_features")
    ids, mask = random_ids_and_mask(np.random.RandomState(5), 2, 6, 99)
    check_text(model, ours_config, params, ids, mask, case)


def test_configs_the_reference_runs_that_used_to_be_refused(tmp_path):
    """A stage of depth 0, a spec_size that is not a multiple of num_mel_bins (frequency stretched), a window equal to
    the last grid (not shifted), more head counts than stages."""
    cases = [dict(AUDIO_TESTER, depths=[2, 0], num_attention_heads=[2, 3, 5]),
             dict(AUDIO_TESTER, num_mel_bins=24, window_size=16)]
    for i, audio in enumerate(cases):
        config = clap_config(
            transformers.ClapTextConfig(**dict(TEXT_TESTER, num_hidden_layers=1)),
            transformers.ClapAudioConfig(**audio), projection_dim=8)
        model, ours_config, params = build(tmp_path / str(i), config, seed=i)
        frames = ours_config.audio.spec_width if i else 40
        feats = (np.random.RandomState(i).randn(2, 1, frames, audio["num_mel_bins"]) * 4).astype(np.float32)
        check_audio(model, ours_config, params, feats, f"case {i}")


# ----------------------------------------------------------------------------------------------------------------
# The pipeline's CLAP audio embeddings with a fusion feature extractor
# ----------------------------------------------------------------------------------------------------------------


def _embedder(config, params, features):
    """The state ``AudioLDM2Pipeline.clap_audio_embeddings`` reads, without the rest of a pipeline."""
    from audioldm2_jax.pipeline import AudioLDM2Pipeline

    stub = types.SimpleNamespace(has_clap_audio=True, clap_features=features, sampling_rate=16000,
                                 clap_config=config, clap=ClapModel(config), params={"clap": params}, mesh=None,
                                 _compiled={}, attention="auto")

    @contextlib.contextmanager
    def mesh_context(batch):  # no mesh: inputs on the default device
        yield lambda x, batched=True: None if x is None else jnp.asarray(x)

    stub._mesh_context = mesh_context
    stub._compile = lambda key, fn, args, timings=None: AudioLDM2Pipeline._compile(stub, key, fn, args, timings)
    return lambda waves, seed: AudioLDM2Pipeline.clap_audio_embeddings(stub, waves, seed)


@pytest.mark.parametrize("fused", [False, True], ids=["4-channel", "fused"])
def test_pipeline_embeddings_with_a_fusion_extractor(tmp_path, tester_model, fused_model, fused):
    """16 kHz waveforms -> resampled -> ``fusion`` features (4 views) -> embeddings, against the reference extractor
    (NumPy's global generator seeded as the pipeline seeds its own: it picks the clip flagged is_longer) and
    ``ClapModel``. The unfused 4-channel model ignores is_longer (diffusers does not pass it); the fused one
    needs it."""
    import librosa

    if fused:
        model, config, params = fused_model
    else:
        audio = dict(AUDIO_TESTER, patch_embed_input_channels=4)
        reference_config = clap_config(
            transformers.ClapTextConfig(**TEXT_TESTER), transformers.ClapAudioConfig(**audio), projection_dim=64)
        model, config, params = build(tmp_path, reference_config, seed=4)
    # 16 mel bins (the tester model's), a 2 s window (201 frames, hop 480 at 48 kHz). Clips longer than the window
    # only fuse with 64 bins (test_clap_features.py); these are shorter, and one of them is flagged at random.
    extractor = transformers.ClapFeatureExtractor(feature_size=16, max_length_s=2, truncation="fusion")
    extractor.save_pretrained(tmp_path / "fe")
    features = ClapFeatureConfig.from_preprocessor_config(
        json.loads((tmp_path / "fe" / "preprocessor_config.json").read_text()))
    waves = (np.random.RandomState(6).randn(3, 9000) * 0.3).astype(np.float32)
    seed = 11
    np.random.seed(seed)
    inputs = extractor(list(librosa.resample(waves, orig_sr=16000, target_sr=48000)), sampling_rate=48000,
                       return_tensors="pt")
    with torch.no_grad():
        ref = model.get_audio_features(input_features=inputs["input_features"],
                                       is_longer=inputs["is_longer"] if fused else None).pooler_output.numpy()
    ours = _embedder(config, params, features)(waves, seed)
    err = assert_close(ours, ref, what="pipeline CLAP audio embeddings")
    print(f"pipeline embeddings ({'fused' if fused else '4-channel'}): max error {err:.2e} of scale")


def test_activations_match_transformers():
    """Every ``hidden_act`` / ``projection_hidden_act`` name we accept computes what transformers' ACT2FN does."""
    from transformers.activations import ACT2FN

    from audioldm2_jax.models.clap import ACTIVATIONS

    x = np.linspace(-12, 12, 2001, dtype=np.float32)
    for name, fn in ACTIVATIONS.items():
        with torch.no_grad():
            ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), ref, rtol=1e-5, atol=2e-6, err_msg=name)
