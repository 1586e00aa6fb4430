"""T5 encoder parity with transformers: every configuration transformers' own T5 tests build (``T5ModelTester``,
``T5EncoderOnlyModelTester`` and the variants their tests derive), saved with ``save_pretrained`` from the model
classes that hold a T5 encoder, loaded through our converter and run on padded batches.

Every tensor of each reference model is perturbed (seeded noise at the fan-in scale) so that no parameter keeps a
constant initial value (norm scales of one) and a wrong mapping of any one of them changes the output.
"""

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import assert_close, perturb_every_tensor
from transformers.models.t5.modeling_t5 import T5Attention as TorchT5Attention

from audioldm2_jax import components
from audioldm2_jax.convert import t5
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, relative_position_buckets

REFERENCE = (Path(__file__).resolve().parents[1] / "audioldm2_jax/configs/published/audioldm2-base/text_encoder_2.json")
LENGTH = 20  # longer than the smallest max_distance below, so log-spaced and clamped buckets are all used


def upstream_config(**overrides) -> transformers.T5Config:
    """``T5ModelTester.get_config()`` of transformers' tests (vocab 99, d_ff 37, 8 buckets, tiny init factor), with
    ``overrides`` passed to the constructor."""
    kw = dict(vocab_size=99, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_decoder_layers=None, num_heads=4,
              relative_attention_num_buckets=8, dropout_rate=0.1, initializer_factor=0.002, eos_token_id=1,
              bos_token_id=0, pad_token_id=0, decoder_start_token_id=0)
    return transformers.T5Config(**{**kw, **overrides})


def v1_1_config():
    # test_model_v1_1: the feed-forward and the embedding tying changed after the config was built. The model keeps
    # the derived dense_act_fn / is_gated_act (relu, not gated) and gets two different token tables.
    config = upstream_config()
    config.tie_word_embeddings = False
    config.feed_forward_proj = "gated-gelu"
    return config


def silu_gated_config():
    # test_config_and_model_silu_gated, the same pattern.
    config = upstream_config()
    config.feed_forward_proj = "gated-silu"
    return config


CASES = {
    # name: (model class, config factory)
    "tester/T5Model": (transformers.T5Model, upstream_config),
    "tester/T5ForConditionalGeneration": (transformers.T5ForConditionalGeneration, upstream_config),
    "tester/T5ForQuestionAnswering": (transformers.T5ForQuestionAnswering, upstream_config),
    "tester/T5ForSequenceClassification": (transformers.T5ForSequenceClassification, upstream_config),
    "v1_1 (untied, proj changed after build)": (transformers.T5ForConditionalGeneration, v1_1_config),
    "silu_gated (proj changed after build)": (transformers.T5Model, silu_gated_config),
    "encoder-only tester/T5EncoderModel": (transformers.T5EncoderModel,
                                           lambda: upstream_config(is_encoder_decoder=False)),
    "encoder-only tester/T5ForTokenClassification": (transformers.T5ForTokenClassification,
                                                     lambda: upstream_config(is_encoder_decoder=False)),
    # FLAN-T5's feed-forward, a head width that is not d_model / num_heads, a short max_distance.
    "gated-gelu, d_kv 6, max_distance 16": (transformers.T5EncoderModel, lambda: upstream_config(
        feed_forward_proj="gated-gelu", d_kv=6, relative_attention_max_distance=16, layer_norm_epsilon=1e-3)),
    "gated-silu": (transformers.T5EncoderModel, lambda: upstream_config(feed_forward_proj="gated-silu")),
    "gelu_fast (plain)": (transformers.T5EncoderModel, lambda: upstream_config(feed_forward_proj="gelu_fast")),
}




def save_reference(model_class, config, folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    perturb_every_tensor(model, seed)
    model.save_pretrained(folder)
    # The part that computes the encoder's output: a T5EncoderModel, or the encoder stack of the other classes
    # (the classification ones nest the model under `transformer`).
    inner = getattr(model, "transformer", model)
    return model, inner if isinstance(inner, transformers.T5EncoderModel) else inner.encoder


def run_reference(encoder, ids, mask):
    with torch.no_grad():
        return encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def padded_batch(vocab: int = 99):
    """Rows: no padding; right padding; a row of random holes (transformers' tests draw masks this way); all
    padding (every key masked: the reference's softmax is then uniform over all keys)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab, size=(4, LENGTH))
    mask = np.ones((4, LENGTH), np.int64)
    mask[1, 13:] = 0
    mask[2] = rng.integers(0, 2, LENGTH)
    mask[3] = 0
    return ids, mask


@functools.lru_cache(maxsize=None)
def encode_fn(config: T5Config):
    """The jitted encoder, shared by the cases that read the same config (compiling dominates these tests)."""
    return jax.jit(T5EncoderModel(config).apply)


@pytest.mark.parametrize("case", list(CASES))
def test_encoder_matches_transformers(tmp_path, case):
    model_class, make_config = CASES[case]
    model, encoder = save_reference(model_class, make_config(), tmp_path)
    config, params, _ = components.load("t5", tmp_path)
    assert (config.dense_act_fn, config.is_gated_act) == (model.config.dense_act_fn, model.config.is_gated_act)
    ids, mask = padded_batch(config.vocab_size)
    expected = run_reference(encoder, ids, mask)
    encode = encode_fn(config)
    ours = np.asarray(encode({"params": params}, ids, mask))
    err = assert_close(ours, expected, what=f"T5 {case}")
    print(f"T5 {case}: max abs error / scale = {err:.2e}")
    # Padding has to change the valid positions of a row: checks that the mask reaches the attention.
    unmasked = np.asarray(encode({"params": params}, ids, np.ones_like(mask)))
    assert np.abs(unmasked[1, :13] - expected[1, :13]).max() > 1e-3


def test_untied_embeddings_use_the_encoders_table(tmp_path):
    """With tie_word_embeddings=false the checkpoint holds two different tables; the encoder reads its own."""
    _, encoder = save_reference(transformers.T5ForConditionalGeneration, v1_1_config(), tmp_path)
    state = load_state_dict(tmp_path)
    assert np.abs(state["shared.weight"] - state["encoder.embed_tokens.weight"]).max() > 0.1
    config, params, _ = components.load("t5", tmp_path)
    np.testing.assert_array_equal(params["shared"]["embedding"], state["encoder.embed_tokens.weight"])


def test_a_wrong_mapping_is_caught(tmp_path):
    """The perturbed reference is not blind to a swapped pair of parameters (here the q and k projections)."""
    model, encoder = save_reference(transformers.T5EncoderModel, upstream_config(), tmp_path)
    config, params, _ = components.load("t5", tmp_path)
    attn = params["encoder"]["block_1"]["layer_0"]["SelfAttention"]
    attn["q"], attn["k"] = attn["k"], attn["q"]
    ids, mask = padded_batch()
    ours = T5EncoderModel(config).apply({"params": params}, ids, mask)
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(ours, run_reference(encoder, ids, mask))


def test_relative_position_buckets_match_transformers():
    # The full-size table (32 buckets, distance 128) over long sequences, where float rounding at the
    # log-bucket edges decides the bucket.
    for num_buckets, max_distance, length in ((32, 128, 300), (8, 16, 40), (8, 128, 40), (4, 8, 20)):
        relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        expected = TorchT5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=num_buckets,
                                                              max_distance=max_distance)
        ours = relative_position_buckets(length, length, num_buckets, max_distance)
        np.testing.assert_array_equal(ours, expected.numpy())


def _fields_of(reference: transformers.T5Config) -> dict:
    return {key: getattr(reference, key) for key in T5Config.__dataclass_fields__}


def test_config_reads_like_transformers(tmp_path):
    """Every key a saved config.json holds, dropped one at a time, reads as transformers reads the same dict; an
    empty dict gives transformers' defaults; the generic attribute names stand for T5's own."""
    _, _ = save_reference(transformers.T5EncoderModel, upstream_config(feed_forward_proj="gated-silu", d_kv=6,
                                                                      relative_attention_max_distance=16), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in [None, *saved]:
        d = {k: v for k, v in saved.items() if k != key}
        ours = T5Config.from_transformers(d)
        assert dataclass_dict(ours) == _fields_of(transformers.T5Config.from_dict(d)), f"without {key!r}"
    assert dataclass_dict(T5Config.from_transformers({})) == _fields_of(transformers.T5Config())
    generic = {"hidden_size": 40, "num_attention_heads": 5, "num_hidden_layers": 3, "head_dim": 7}
    assert dataclass_dict(T5Config.from_transformers(generic)) == _fields_of(transformers.T5Config(**generic))
    # A legacy "gated-gelu" without the derived keys means the tanh GELU.
    assert T5Config.from_transformers({"feed_forward_proj": "gated-gelu"}).dense_act_fn == "gelu_new"


def dataclass_dict(config) -> dict:
    return {key: getattr(config, key) for key in type(config).__dataclass_fields__}


def test_config_from_reference_and_errors():
    config = T5Config.from_transformers(json.loads(REFERENCE.read_text()))
    assert (config.d_model, config.d_ff, config.num_layers, config.num_heads, config.d_kv) == (1024, 2816, 24, 16, 64)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"
    assert T5Config.from_transformers({"feed_forward_proj": "gated-silu"}).dense_act_fn == "silu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.from_transformers({"feed_forward_proj": "gated-unknown"})
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.from_transformers({"feed_forward_proj": "double-gated-gelu"})
    with pytest.raises(ValueError, match="prelu"):  # an activation with learned weights
        T5Config.from_transformers({"feed_forward_proj": "gated-prelu"})
    with pytest.raises(ValueError, match="is_decoder"):
        T5Config.from_transformers({"is_decoder": True})
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        T5Config.from_transformers({"relative_attention_num_buckets": 2})


def test_checkpoint_errors_name_keys(tmp_path):
    save_reference(transformers.T5EncoderModel, upstream_config(feed_forward_proj="gated-gelu"), tmp_path)
    config, _, _ = components.load("t5", tmp_path)
    state = load_state_dict(tmp_path)
    # Either copy of the tied token table is enough.
    tied = dict(state)
    table = tied.pop("shared.weight", None)
    if table is not None:
        tied["encoder.embed_tokens.weight"] = table
    t5.to_flax(tied, config)
    broken = dict(state)
    del broken["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    broken["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((5, 5), np.float32)
    broken["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as info:
        t5.to_flax(broken, config, source="t5-test")
    message = str(info.value)
    assert "encoder/block_1/layer_1/DenseReluDense/wi_1/kernel" in message
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in message
    assert "encoder.extra.weight" in message and "t5-test" in message
