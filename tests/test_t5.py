"""T5 encoder parity with transformers' ``T5EncoderModel`` (small random-weight configs, padded batches)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import assert_close
from transformers import T5Config as TorchT5Config
from transformers import T5EncoderModel as TorchT5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention as TorchT5Attention

from audioldm2_jax.convert.t5 import load_t5, t5_state_dict_to_params
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, relative_position_buckets

REFERENCE = (Path(__file__).resolve().parents[1] / "configs/published/audioldm2-base/text_encoder_2.json")
LENGTH = 20  # longer than max_distance below, so the log-spaced and the clamped buckets are all used


def small_config(feed_forward_proj: str) -> TorchT5Config:
    return TorchT5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16,
                         feed_forward_proj=feed_forward_proj, dropout_rate=0.0, layer_norm_epsilon=1e-6)


def reference_model(feed_forward_proj: str, folder: Path) -> TorchT5EncoderModel:
    torch.manual_seed(0)
    model = TorchT5EncoderModel(small_config(feed_forward_proj)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # ones at init: make the norm scales matter
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return model


def padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 64, size=(3, LENGTH))
    mask = np.ones((3, LENGTH), np.int64)
    mask[1, 13:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0  # the pad token
    return ids, mask


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_encoder_matches_transformers(tmp_path, feed_forward_proj):
    reference = reference_model(feed_forward_proj, tmp_path)
    config, params = load_t5(tmp_path)
    assert config.is_gated_act == (feed_forward_proj == "gated-gelu")
    assert config.dense_act_fn == ("gelu_new" if feed_forward_proj == "gated-gelu" else "relu")
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    encode = jax.jit(T5EncoderModel(config).apply)
    ours = encode({"params": params}, ids, mask)
    err = assert_close(ours, expected, what=f"T5 {feed_forward_proj}")
    print(f"T5 {feed_forward_proj}: max abs error / scale = {err:.2e}")
    # Padding has to change the valid positions of a row: checks that the mask reaches the attention.
    unmasked = encode({"params": params}, ids, np.ones_like(mask))
    assert np.abs(np.asarray(unmasked)[2, :4] - expected[2, :4]).max() > 1e-3


def test_relative_position_buckets_match_transformers():
    # The full-size table (32 buckets, distance 128) over long sequences, where float rounding at the
    # log-bucket edges decides the bucket.
    for num_buckets, max_distance, length in ((32, 128, 300), (8, 16, 40)):
        relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        expected = TorchT5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=num_buckets,
                                                              max_distance=max_distance)
        ours = relative_position_buckets(length, length, num_buckets, max_distance)
        np.testing.assert_array_equal(ours, expected.numpy())


def test_config_from_reference_and_errors():
    config = T5Config.from_transformers(json.loads(REFERENCE.read_text()))
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (1024, 2816, 24, 16, 64)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert T5Config.from_transformers({"feed_forward_proj": "gated-silu"}).dense_act_fn == "silu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.from_transformers({"feed_forward_proj": "gated-unknown"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.from_transformers({"feed_forward_proj": "double-gated-gelu"})


def test_checkpoint_errors_name_keys(tmp_path):
    reference_model("gated-gelu", tmp_path)
    config, _ = load_t5(tmp_path)
    state = load_state_dict(tmp_path)
    # Either copy of the tied token table is enough.
    tied = dict(state)
    tied["encoder.embed_tokens.weight"] = tied.pop("shared.weight")
    t5_state_dict_to_params(tied, config)
    broken = dict(state)
    del broken["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    broken["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((5, 5), np.float32)
    broken["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as info:
        t5_state_dict_to_params(broken, config, source="t5-test")
    message = str(info.value)
    assert "encoder/block_1/layer_1/DenseReluDense/wi_1/kernel" in message
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in message
    assert "encoder.extra.weight" in message and "t5-test" in message
