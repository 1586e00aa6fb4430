"""Projection model parity with diffusers' ``AudioLDM2ProjectionModel`` (text and speech variants)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import assert_close
from diffusers.pipelines.audioldm2.modeling_audioldm2 import AudioLDM2ProjectionModel as TorchProjection

from audioldm2_jax import components
from audioldm2_jax.convert import projection
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig

REFERENCE = (Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/projection_model.json")
DIMS = dict(text_encoder_dim=16, text_encoder_1_dim=24, langauge_model_dim=32)
LENGTH_1 = 7


def reference_model(folder: Path, **extra) -> TorchProjection:
    torch.manual_seed(0)
    model = TorchProjection(**DIMS, **extra).eval()
    with torch.no_grad():
        for p in model.parameters():  # SOS/EOS start as ones and the position table as zeros: randomise all
            p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    return model


def inputs():
    rng = np.random.default_rng(0)
    clap = rng.standard_normal((3, 1, DIMS["text_encoder_dim"])).astype(np.float32)
    t5 = rng.standard_normal((3, LENGTH_1, DIMS["text_encoder_1_dim"])).astype(np.float32)
    clap_mask = np.ones((3, 1), np.int64)
    t5_mask = np.ones((3, LENGTH_1), np.int64)
    t5_mask[1, 4:] = 0
    t5_mask[2, 2:] = 0
    return clap, t5, clap_mask, t5_mask


@pytest.mark.parametrize("speech", [False, True], ids=["text", "speech"])
def test_projection_matches_diffusers(tmp_path, speech):
    extra = dict(use_learned_position_embedding=True, max_seq_length=LENGTH_1) if speech else {}
    reference = reference_model(tmp_path, **extra)
    config, params, _ = components.load("projection", tmp_path)
    assert config.use_learned_position_embedding == speech
    clap, t5, clap_mask, t5_mask = inputs()
    with torch.no_grad():
        expected = reference(hidden_states=torch.tensor(clap), hidden_states_1=torch.tensor(t5),
                             attention_mask=torch.tensor(clap_mask), attention_mask_1=torch.tensor(t5_mask))
    model = AudioLDM2ProjectionModel(config)
    hidden, mask = jax.jit(model.apply)({"params": params}, clap, t5, clap_mask, t5_mask)
    assert hidden.shape == (3, 1 + LENGTH_1 + 4, DIMS["langauge_model_dim"])
    err = assert_close(hidden, expected.hidden_states.numpy(), what="projection hidden states")
    print(f"projection ({'speech' if speech else 'text'}): max abs error / scale = {err:.2e}")
    np.testing.assert_array_equal(np.asarray(mask), expected.attention_mask.numpy())

    # Without masks: the reference returns no mask, and neither do we.
    hidden, mask = model.apply({"params": params}, clap, t5)
    with torch.no_grad():
        expected = reference(hidden_states=torch.tensor(clap), hidden_states_1=torch.tensor(t5))
    assert mask is None and expected.attention_mask is None
    assert_close(hidden, expected.hidden_states.numpy(), what="projection without masks")

    # One mask only (the reference's code for this case fails): the other stream counts as unpadded.
    _, mask = model.apply({"params": params}, clap, t5, None, t5_mask)
    ones = np.ones((3, 1), np.int64)
    np.testing.assert_array_equal(np.asarray(mask), np.concatenate([ones, ones, ones, ones, t5_mask, ones], 1))


def test_config_and_errors(tmp_path):
    config = ProjectionConfig.from_diffusers(json.loads(REFERENCE.read_text()))
    assert (config.text_encoder_dim, config.text_encoder_1_dim, config.language_model_dim) == (512, 1024, 768)
    assert not config.use_learned_position_embedding
    with pytest.raises(ValueError, match="langauge_model_dim"):
        ProjectionConfig.from_diffusers({"text_encoder_dim": 4, "text_encoder_1_dim": 4})
    with pytest.raises(ValueError, match="max_seq_length"):
        ProjectionConfig.from_diffusers({**DIMS, "use_learned_position_embedding": True})

    reference_model(tmp_path, use_learned_position_embedding=True, max_seq_length=LENGTH_1)
    config, params, _ = components.load("projection", tmp_path)
    with pytest.raises(ValueError, match="max_seq_length"):
        clap, t5, _, _ = inputs()
        AudioLDM2ProjectionModel(config).apply({"params": params}, clap, t5[:, :5])
    state = load_state_dict(tmp_path)
    del state["eos_embed_1"]
    state["learnable_positional_embedding"] = np.zeros((1, 24, 9), np.float32)
    with pytest.raises(CheckpointError) as info:
        projection.to_flax(state, config, source="projection-test")
    message = str(info.value)
    assert "eos_embed_1" in message and "learnable_positional_embedding" in message
    assert "projection-test" in message
