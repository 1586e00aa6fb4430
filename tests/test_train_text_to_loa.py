"""The AudioMAE and GPT-2 stages at micro size, the packing of GPT-2's teacher-forced sequences, and the joint
stage's switcher (the joint stage's training run is in test_train_export.py, which also exports it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_fixtures as testing

from audioldm2_jax import components
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.metrics import read_jsonl
from audioldm2_jax.train.stages.gpt2 import pack_sequences
from audioldm2_jax.train.stages.joint import switch_loa


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return testing.caption_tokenizers(tmp_path_factory.mktemp("tokenizers"))


def _train(stage, tokenizers, workdir, **overrides):
    c = testing.micro_config(stage, tokenizers)
    testing.override(c, **overrides)
    trainer = Trainer.build(c, workdir, devices=jax.devices()[:1])
    return trainer, trainer.run()


def _trained_vs_initial(trainer, workdir, key="loss"):
    """Step 1's logged loss (random initialisation) and the final parameters' loss on the same batch and draws."""
    rows = read_jsonl(workdir / "metrics.jsonl")
    state, frozen = testing.restore(trainer, workdir, trainer.config.num_steps)
    after = testing.loss_at(trainer, state, frozen, testing.first_batch(trainer), 0,
                            testing.run_keys(trainer.config)[1])
    return rows[0][key], after[key], rows


def test_switcher_picks_ground_truth_with_probability_p_gt():
    b, n, d = 4000, 3, 5
    gt = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None], (b, n, d))
    pred = -1.0 - gt
    for p_gt in (0.0, 0.25, 0.7, 1.0):
        loa, use_gt = jax.jit(switch_loa, static_argnums=3)(jax.random.key(1), gt, pred, p_gt)
        use_gt = np.asarray(use_gt)
        assert abs(use_gt.mean() - p_gt) < 4 * np.sqrt(p_gt * (1 - p_gt) / b) + 1e-9, (p_gt, use_gt.mean())
        # every row is wholly one or the other, and the mask says which
        np.testing.assert_array_equal(np.asarray(loa), np.where(use_gt[:, None, None], np.asarray(gt), np.asarray(pred)))
    # independent draws per example and per key
    _, a = switch_loa(jax.random.key(2), gt, pred, 0.5)
    _, b_ = switch_loa(jax.random.key(3), gt, pred, 0.5)
    assert 0.4 < np.mean(np.asarray(a) != np.asarray(b_)) < 0.6


def test_pack_sequences_moves_real_tokens_first_in_order():
    values = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1)
    mask = jnp.array([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    packed, packed_mask = pack_sequences(values, mask)
    assert np.asarray(packed[0, :, 0]).tolist()[:4] == [0, 2, 3, 5]
    assert np.asarray(packed_mask).tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    np.testing.assert_array_equal(np.asarray(packed[1]), np.asarray(values[1]))


def test_audiomae_pretraining_lowers_the_masked_loss(tokenizers, tmp_path):
    trainer, summary = _train("audiomae", tokenizers, tmp_path, num_steps=8)
    before, after, rows = _trained_vs_initial(trainer, tmp_path)
    assert after < 0.9 * before, (before, after)
    assert rows[0]["masked_fraction"] == pytest.approx(0.8, abs=0.02)  # 51 of 64 patches hidden
    config, params, _ = components.load("audiomae", tmp_path / "export")
    assert set(params) == {"encoder", "decoder"} and config.mask_ratio == 0.8


def test_gpt2_teacher_forcing_learns_the_loa_and_exports(tokenizers, tmp_path):
    trainer, summary = _train("gpt2", tokenizers, tmp_path, num_steps=10, **{"gpt2.cond_dropout": 0.0})
    assert summary["num_params"]["gpt2"] > 0
    before, after, rows = _trained_vs_initial(trainer, tmp_path)
    assert after < 0.75 * before, (before, after)
    assert rows[-1]["loa_cosine"] > rows[0]["loa_cosine"]
    for name in ("gpt2", "projection"):
        cfg, _, extra = components.load(name, tmp_path / "export")
        assert cfg == trainer.stage.model_configs[name] and extra["stage"] == "gpt2"
    assert (tmp_path / "export" / "tokenizer_2" / "tokenizer_config.json").is_file()
    assert (tmp_path / "export" / "tokenizer" / "tokenizer_config.json").is_file()


def test_gpt2_config_mismatches_fail_before_compiling(tokenizers, tmp_path):
    c = testing.micro_config("gpt2", tokenizers)
    c.model.gpt2.max_new_tokens = 8  # the 4-token LOA of gpt2.loa_lambda=4
    with pytest.raises(config_lib.ConfigError, match="max_new_tokens=8"):
        Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    c = testing.micro_config("gpt2", tokenizers)
    c.model.projection.language_model_dim = 24
    with pytest.raises(config_lib.ConfigError, match="language_model_dim"):
        Trainer.build(c, tmp_path, devices=jax.devices()[:1])
