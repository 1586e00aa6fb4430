"""GPT-2 parity with transformers: every configuration transformers' own GPT-2 tests build (``GPT2ModelTester`` and
the variants its tests derive), saved from each GPT-2 class, loaded through our converter; and LOA generation
against diffusers' ``generate_language_model``.

Every tensor of each reference model is perturbed (seeded noise at the fan-in scale; transformers starts biases at
zero and norms at one) so that a wrong mapping of any one of them changes the output.
"""

import functools
import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import assert_close, perturb_every_tensor
from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
from flax import traverse_util

from audioldm2_jax import components
from audioldm2_jax.convert import gpt2
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, generate_loa

REFERENCE = (Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/language_model.json")
WIDTH = 32
LENGTH = 10


def upstream_config(**overrides) -> transformers.GPT2Config:
    """``GPT2ModelTester.get_config()`` of transformers' tests (n_inner 37, exact GELU, special tokens 98), with
    ``overrides``."""
    kw = dict(vocab_size=99, n_embd=WIDTH, n_layer=2, n_head=4, n_inner=37, activation_function="gelu",
              resid_pdrop=0.1, attn_pdrop=0.1, n_positions=512, type_vocab_size=16, initializer_range=0.02,
              use_cache=True, bos_token_id=98, eos_token_id=98, pad_token_id=98, gradient_checkpointing=False,
              scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    return transformers.GPT2Config(**{**kw, **overrides})


CASES = {
    # name: (model class, config overrides)
    "tester/GPT2Model": (transformers.GPT2Model, {}),
    "tester/GPT2LMHeadModel": (transformers.GPT2LMHeadModel, {}),
    "tester/GPT2DoubleHeadsModel": (transformers.GPT2DoubleHeadsModel, {}),
    "tester/GPT2ForSequenceClassification": (transformers.GPT2ForSequenceClassification, {}),
    "tester/GPT2ForTokenClassification": (transformers.GPT2ForTokenClassification, {}),
    "tester/GPT2ForQuestionAnswering": (transformers.GPT2ForQuestionAnswering, {}),
    "scale_attn_by_inverse_layer_idx": (transformers.GPT2LMHeadModel, dict(scale_attn_by_inverse_layer_idx=True)),
    "reorder_and_upcast_attn": (transformers.GPT2LMHeadModel, dict(reorder_and_upcast_attn=True)),
    "add_cross_attention": (transformers.GPT2Model, dict(add_cross_attention=True)),
    "pipeline config (vocab 300)": (transformers.GPT2Model, dict(vocab_size=300)),
    "defaults: n_inner None, gelu_new": (transformers.GPT2Model, dict(n_inner=None, activation_function="gelu_new")),
    "unscaled attention, relu": (transformers.GPT2Model, dict(scale_attn_weights=False, activation_function="relu")),
    "quick_gelu, eps 1e-3": (transformers.GPT2Model, dict(activation_function="quick_gelu", layer_norm_epsilon=1e-3)),
}




def save_reference(model_class, config, folder: Path, seed: int = 0):
    """The model saved to ``folder``, and its ``GPT2Model`` part (what our model computes)."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    perturb_every_tensor(model, seed)
    model.save_pretrained(folder)
    return model, getattr(model, "transformer", model)


def prompts(vocab: int = 99):
    """Token ids, token types, ``[B, L, D]`` embeddings and a mask with: no padding; padding in the middle (as the
    pipeline's T5 stream between SOS / EOS); left padding (the first queries have no key at all: the reference's
    attention output is zero there); random holes ending on a token (transformers' ``random_attention_mask``)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(4, LENGTH))
    types_ = rng.integers(0, 16, size=(4, LENGTH))
    embeds = rng.standard_normal((4, LENGTH, WIDTH)).astype(np.float32)
    mask = np.ones((4, LENGTH), np.int64)
    mask[1, 5:9] = 0
    mask[2, :3] = 0
    mask[3] = rng.integers(0, 2, LENGTH)
    mask[3, -1] = 1
    return ids, types_, embeds, mask


@functools.lru_cache(maxsize=None)
def forward(config: GPT2Config):
    """The jitted forward, shared by the cases that read the same config (compiling dominates these tests)."""
    return jax.jit(GPT2Model(config).apply)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_transformers(tmp_path, case):
    model_class, overrides = CASES[case]
    _, reference = save_reference(model_class, upstream_config(**overrides), tmp_path)
    config, params, _ = components.load("gpt2", tmp_path)
    ids, types_, embeds, mask = prompts(config.vocab_size)
    model = forward(config)
    with torch.no_grad():
        expected_embeds = reference(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask))
        expected_ids = reference(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types_),
                                 attention_mask=torch.tensor(mask))
    ours = model({"params": params}, embeds, mask)
    err = assert_close(ours, expected_embeds.last_hidden_state.numpy(), what=f"GPT-2 {case}, inputs_embeds")
    ours_ids = model({"params": params}, None, mask, ids, types_)
    err_ids = assert_close(ours_ids, expected_ids.last_hidden_state.numpy(), what=f"GPT-2 {case}, input_ids")
    print(f"GPT-2 {case}: max abs error / scale = {err:.2e} (embeds), {err_ids:.2e} (ids + types)")


def test_reordered_upcast_eager_attention(tmp_path):
    """transformers runs reorder_and_upcast_attn only in its eager attention: compare with that path too (on the
    queries that have a key; the eager path's additive mask spreads a keyless query over every key)."""
    save_reference(transformers.GPT2Model, upstream_config(reorder_and_upcast_attn=True), tmp_path)
    reference = transformers.GPT2Model.from_pretrained(tmp_path, attn_implementation="eager").eval()
    config, params, _ = components.load("gpt2", tmp_path)
    assert config.reorder_and_upcast_attn
    _, _, embeds, mask = prompts()
    with torch.no_grad():
        expected = reference(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask)).last_hidden_state
    has_key = np.cumsum(mask, axis=1) > 0
    ours = np.asarray(GPT2Model(config).apply({"params": params}, embeds, mask))
    assert_close(ours[has_key], expected.numpy()[has_key], what="GPT-2 eager reordered attention")


def test_a_wrong_mapping_is_caught(tmp_path):
    """The perturbed reference is not blind to a wrong mapping: swapping the query and key thirds of c_attn's bias
    fails the comparison."""
    _, reference = save_reference(transformers.GPT2Model, upstream_config(), tmp_path)
    config, params, _ = components.load("gpt2", tmp_path)
    bias = params["h_1"]["attn"]["c_attn"]["bias"]
    params["h_1"]["attn"]["c_attn"]["bias"] = np.concatenate([bias[WIDTH:2 * WIDTH], bias[:WIDTH], bias[2 * WIDTH:]])
    _, _, embeds, mask = prompts()
    with torch.no_grad():
        expected = reference(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask)).last_hidden_state
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(GPT2Model(config).apply({"params": params}, embeds, mask), expected.numpy())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same perturbed weights saved as GPT2Model and as GPT2LMHeadModel; the LM-head model for the reference."""
    folder = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, vocab_size=50,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base, _ = save_reference(transformers.GPT2Model, config, folder / "base")
    lm = transformers.GPT2LMHeadModel(config).eval()
    lm.transformer.load_state_dict(base.state_dict())
    lm.save_pretrained(folder / "lm")
    return folder, base, lm


def test_layouts_load_to_identical_params(checkpoints):
    folder, _, _ = checkpoints
    assert any(k.startswith("transformer.") for k in load_state_dict(folder / "lm"))
    config_base, params_base, _ = components.load("gpt2", folder / "base")
    config_lm, params_lm, _ = components.load("gpt2", folder / "lm")
    assert config_base == config_lm
    flat_base, flat_lm = traverse_util.flatten_dict(params_base), traverse_util.flatten_dict(params_lm)
    assert flat_base.keys() == flat_lm.keys()
    for key in flat_base:
        np.testing.assert_array_equal(flat_base[key], flat_lm[key], err_msg="/".join(key))


@pytest.mark.parametrize("max_new_tokens", [8, 20])
def test_generate_loa_matches_pipeline(checkpoints, max_new_tokens):
    folder, _, lm = checkpoints
    config, params, _ = components.load("gpt2", folder / "base")
    _, _, embeds, mask = prompts()
    # diffusers' method only uses `self.language_model`; it runs on current transformers with the LM-head class.
    pipeline = types.SimpleNamespace(language_model=lm)
    with torch.no_grad():
        expected = AudioLDM2Pipeline.generate_language_model(
            pipeline, torch.tensor(embeds), max_new_tokens=max_new_tokens, attention_mask=torch.tensor(mask)).numpy()
    ours = np.asarray(generate_loa(GPT2Model(config), params, embeds, mask, max_new_tokens))
    assert ours.shape == (4, max_new_tokens, WIDTH)
    err = assert_close(ours, expected, what=f"LOA, {max_new_tokens} steps")
    print(f"LOA {max_new_tokens} steps: max abs error / scale = {err:.2e}")
    if max_new_tokens == 8:
        # The padded rows must differ from the same prompts unpadded: the mask has to reach every step.
        unpadded = np.asarray(generate_loa(GPT2Model(config), params, embeds, np.ones_like(mask), max_new_tokens))
        assert np.abs(unpadded[1:] - expected[1:]).max(axis=(1, 2)).min() > 1e-3


# GPT2Config fields transformers' GPT2Config does not have: the pipeline's generation length, the remat policy.
NOT_TRANSFORMERS = ("max_new_tokens", "remat")


def dataclass_dict(config) -> dict:
    return {key: getattr(config, key) for key in type(config).__dataclass_fields__ if key not in NOT_TRANSFORMERS}


def reference_fields(reference: transformers.GPT2Config) -> dict:
    return {key: getattr(reference, key) for key in GPT2Config.__dataclass_fields__ if key not in NOT_TRANSFORMERS}


def test_config_reads_like_transformers(tmp_path):
    """Every key a saved config.json holds, dropped one at a time, reads as transformers reads the same dict; an
    empty dict gives transformers' defaults; the generic attribute names stand for GPT-2's own."""
    # n_embd 48: dropping n_head leaves transformers' 12 heads, which must divide it.
    save_reference(transformers.GPT2Model, upstream_config(n_embd=48, scale_attn_by_inverse_layer_idx=True,
                                                           add_cross_attention=True), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in [None, *saved]:
        d = {k: v for k, v in saved.items() if k != key}
        ours = GPT2Config.from_transformers(d)
        assert dataclass_dict(ours) == reference_fields(transformers.GPT2Config.from_dict(d)), f"without {key!r}"
    assert dataclass_dict(GPT2Config.from_transformers({})) == reference_fields(transformers.GPT2Config())
    assert dataclass_dict(GPT2Config()) == reference_fields(transformers.GPT2Config())
    generic = {"hidden_size": 40, "num_attention_heads": 5, "num_hidden_layers": 3, "max_position_embeddings": 77}
    assert dataclass_dict(GPT2Config.from_transformers(generic)) == reference_fields(
        transformers.GPT2Config(**generic))


def test_config_and_errors(checkpoints):
    config = GPT2Config.from_transformers(json.loads(REFERENCE.read_text()))
    assert (config.n_embd, config.n_layer, config.n_head, config.inner_dim, config.max_new_tokens) == (
        768, 12, 12, 3072, 8)
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Config.from_transformers({"activation_function": "xielu"})  # an activation with learned weights
    with pytest.raises(ValueError, match="n_inner"):
        GPT2Config.from_transformers({"n_inner": 0})
    small = GPT2Config(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=12, vocab_size=50)
    with pytest.raises(ValueError, match="n_positions"):
        generate_loa(GPT2Model(small), {}, np.zeros((1, 10, WIDTH), np.float32), None, 4)

    folder, _, _ = checkpoints
    config, _, _ = components.load("gpt2", folder / "lm")
    state = load_state_dict(folder / "lm")
    state["transformer.h.0.attn.bias"] = np.ones((1, 1, 64, 64), np.float32)  # old causal-mask buffer: ignored
    gpt2.to_flax(state, config)
    del state["transformer.h.1.mlp.c_fc.weight"]
    state["transformer.h.0.attn.c_proj.weight"] = np.zeros((3, 3), np.float32)
    state["transformer.h.0.crossattention.c_attn.weight"] = np.zeros((3, 3), np.float32)  # not a cross-attn config
    with pytest.raises(CheckpointError) as info:
        gpt2.to_flax(state, config, source="gpt2-test")
    message = str(info.value)
    assert "h_1/mlp/c_fc/kernel" in message and "transformer.h.0.attn.c_proj.weight" in message
    assert "transformer.h.0.crossattention.c_attn.weight" in message and "gpt2-test" in message
