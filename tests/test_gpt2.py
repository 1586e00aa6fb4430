"""GPT-2 parity with transformers, and LOA generation against diffusers' ``generate_language_model``."""

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
from flax import traverse_util
from transformers import GPT2Config as TorchGPT2Config
from transformers import GPT2LMHeadModel
from transformers import GPT2Model as TorchGPT2Model

from audioldm2_jax.convert.gpt2 import gpt2_state_dict_to_params, load_gpt2
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, generate_loa

REFERENCE = (Path(__file__).resolve().parents[1] / "configs/published/audioldm2-base/language_model.json")
WIDTH = 32


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same random weights saved as GPT2Model and as GPT2LMHeadModel; the LM-head model for the reference."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = TorchGPT2Config(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, vocab_size=50, bos_token_id=0,
                             eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base = TorchGPT2Model(config).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "ln_" in name:  # ones / zeros at init: make the norms matter
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.1)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
    base.save_pretrained(folder / "base")
    lm = GPT2LMHeadModel(config).eval()
    lm.transformer.load_state_dict(base.state_dict())
    lm.save_pretrained(folder / "lm")
    return folder, base, lm


def prompts():
    """[B, L, D] embeddings with three masks: none padded, padded in the middle (as the pipeline's T5 stream
    between SOS/EOS), and padded on the left (no valid key at all for the first queries)."""
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((3, 10, WIDTH)).astype(np.float32)
    mask = np.ones((3, 10), np.int64)
    mask[1, 5:9] = 0
    mask[2, :3] = 0
    return embeds, mask


def test_layouts_load_to_identical_params(checkpoints):
    folder, _, _ = checkpoints
    assert any(k.startswith("transformer.") for k in load_state_dict(folder / "lm"))
    config_base, params_base = load_gpt2(folder / "base")
    config_lm, params_lm = load_gpt2(folder / "lm")
    assert config_base == config_lm
    flat_base, flat_lm = traverse_util.flatten_dict(params_base), traverse_util.flatten_dict(params_lm)
    assert flat_base.keys() == flat_lm.keys()
    for key in flat_base:
        np.testing.assert_array_equal(flat_base[key], flat_lm[key], err_msg="/".join(key))


def test_forward_matches_transformers(checkpoints):
    folder, base, _ = checkpoints
    config, params = load_gpt2(folder / "base")
    embeds, mask = prompts()
    with torch.no_grad():
        expected = base(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask)).last_hidden_state
    ours = np.asarray(jax.jit(GPT2Model(config).apply)({"params": params}, embeds, mask))
    # Queries with no valid key (the left padding) are undefined in both; compare every other position.
    valid = np.ones(mask.shape, bool)
    valid[2, :3] = False
    err = assert_close(ours[valid], expected.numpy()[valid], what="GPT-2 forward")
    print(f"GPT-2 forward: max abs error / scale = {err:.2e}")


@pytest.mark.parametrize("max_new_tokens", [8, 20])
def test_generate_loa_matches_pipeline(checkpoints, max_new_tokens):
    folder, _, lm = checkpoints
    config, params = load_gpt2(folder / "base")
    embeds, mask = prompts()
    # diffusers' method only uses `self.language_model`; it runs on current transformers with the LM-head class.
    pipeline = types.SimpleNamespace(language_model=lm)
    with torch.no_grad():
        expected = AudioLDM2Pipeline.generate_language_model(
            pipeline, torch.tensor(embeds), max_new_tokens=max_new_tokens, attention_mask=torch.tensor(mask)).numpy()
    ours = np.asarray(generate_loa(GPT2Model(config), params, embeds, mask, max_new_tokens))
    assert ours.shape == (3, max_new_tokens, WIDTH)
    err = assert_close(ours, expected, what=f"LOA, {max_new_tokens} steps")
    print(f"LOA {max_new_tokens} steps: max abs error / scale = {err:.2e}")
    if max_new_tokens == 8:
        # The padded rows must differ from the same prompts unpadded: the mask has to reach every step.
        unpadded = np.asarray(generate_loa(GPT2Model(config), params, embeds, np.ones_like(mask), max_new_tokens))
        assert np.abs(unpadded[1:] - expected[1:]).max(axis=(1, 2)).min() > 1e-3


def test_config_and_errors(checkpoints, tmp_path):
    config = GPT2Config.from_transformers(json.loads(REFERENCE.read_text()))
    assert (config.n_embd, config.n_layer, config.n_head, config.inner_dim, config.max_new_tokens) == (
        768, 12, 12, 3072, 8)
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Config.from_transformers({"activation_function": "mish"})
    with pytest.raises(ValueError, match="add_cross_attention"):
        GPT2Config.from_transformers({"add_cross_attention": True})
    small = GPT2Config(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=12, vocab_size=50)
    with pytest.raises(ValueError, match="n_positions"):
        generate_loa(GPT2Model(small), {}, np.zeros((1, 10, WIDTH), np.float32), None, 4)

    folder, _, _ = checkpoints
    config, _ = load_gpt2(folder / "lm")
    state = load_state_dict(folder / "lm")
    state["transformer.h.0.attn.bias"] = np.ones((1, 1, 64, 64), np.float32)  # old causal-mask buffer: ignored
    gpt2_state_dict_to_params(state, config)
    del state["transformer.h.1.mlp.c_fc.weight"]
    state["transformer.h.0.attn.c_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError) as info:
        gpt2_state_dict_to_params(state, config, source="gpt2-test")
    message = str(info.value)
    assert "h_1/mlp/c_fc/kernel" in message and "transformer.h.0.attn.c_proj.weight" in message
    assert "gpt2-test" in message
