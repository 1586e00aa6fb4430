"""The speech models' training (AudioLDM 2 gigaspeech / ljspeech) at micro size: the LDM stage with a UNet that
attends to the LOA only trains without any T5, GPT-2 learns the LOA from CLAP(caption) + VITS(phonemes of the
transcription) and its export (GPT-2, projection with its position table, VITS, VitsTokenizer) loads back, the
joint stage trains without T5 (its loss falls, GPT-2 reads the phonemes and learns through the switcher), speech
config mistakes fail before compiling, naming the key, and configs/audioldm2_speech.py holds the published sizes."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_fixtures as testing
from conftest import assert_close
from pipeline_fixtures import vits_tokenizer

from audioldm2_jax.models.gpt2 import generate_loa
from audioldm2_jax.models.vits_text import VitsTextEncoder
from audioldm2_jax import components
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer, data_config
from audioldm2_jax.train.metrics import read_jsonl
from audioldm2_jax.train.stages import make_stage

JOINT_STEPS = 8
PHONEMES = 24  # micro phoneme length: the projection's table length and the tokenizer's model_max_length
# The fixture tokenizer's symbols: <pad> 0, space 1, a-z 2..27, <unk> 28.
CHAR_ID = {" ": 1, **{chr(ord("a") + i): 2 + i for i in range(26)}}
SPEECH_CONFIG = "configs/audioldm2_speech.py"  # the packaged config file, from any working directory


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return testing.caption_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def vits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vits_tokenizer")
    vits_tokenizer(PHONEMES).save_pretrained(str(folder))
    return folder


def speech_config(stage: str, tokenizers, vits_dir, **overrides):
    """The micro speech model (``testing.speech_micro_config``) with one checkpoint, the final one (the tests
    restore it)."""
    return testing.speech_micro_config(stage, tokenizers, vits_dir, PHONEMES,
                                       **{"checkpoint.every_steps": 1000, **overrides})


def _trained_vs_initial(trainer, workdir):
    """Step 1's logged loss (random initialisation) and the final parameters' loss on the same batch and draws."""
    rows = read_jsonl(workdir / "metrics.jsonl")
    state, frozen = testing.restore(trainer, workdir, trainer.config.num_steps)
    after = testing.loss_at(trainer, state, frozen, testing.first_batch(trainer), 0,
                            testing.run_keys(trainer.config)[1])
    return rows[0]["loss"], after["loss"], rows, state, frozen


def _saved_component(folder, name, config, seed):
    params = jax.device_get(nn.unbox(components.init_fn(name, config)(jax.random.key(seed))))
    components.save(name, folder, config, params)
    return params


@pytest.fixture(scope="module")
def host_batch():
    """One procedural batch as the data pipeline delivers it (captions, empty transcriptions, fbank, log-mel)."""
    from audioldm2_jax.data.pipeline import make_dataset

    return next(make_dataset(data_config(testing.micro_config("gpt2")), seed=0))


def test_vits_component_reads_a_speech_checkpoint_folder(vits_dir, tmp_path):
    """``init.vits`` at a diffusers speech pipeline folder: ``text_encoder_2/`` (a transformers VitsModel) is the
    component, ``tokenizer_2/`` its tokenizer, and the frozen encoder computes what the PyTorch one does."""
    import shutil

    import torch
    from pipeline_fixtures import _vits

    torch.manual_seed(0)
    reference = _vits()  # 16-d, 2 layers, window 3, vocabulary 183
    reference.save_pretrained(str(tmp_path / "text_encoder_2"))
    shutil.copytree(vits_dir, tmp_path / "tokenizer_2")
    cfg, params, _ = components.load("vits", tmp_path)
    components.get("vits").check_params(cfg, params)
    assert components.get("vits").load_config(tmp_path) == cfg and cfg.window_size == 3

    c = testing.micro_config("gpt2")
    c.model.text_encoder_2, c.init.vits = "vits", str(tmp_path)
    from audioldm2_jax.train.stages import common

    assert common.find_tokenizer(c, "vits") == str(tmp_path / "tokenizer_2")
    with pytest.raises(ValueError, match="model.text_encoder_2='vits'"):
        common.find_tokenizer(c, "t5")  # the T5 tokenizer of a speech model: none (export copies VITS's)
    ids, mask = common.TranscriptionTokenizer(common.find_tokenizer(c, "vits"), PHONEMES)(
        np.asarray(["hello world", "a sawtooth note rising"]))
    ours = components.get("vits").build(cfg).apply({"params": params}, ids, mask).last_hidden_state
    with torch.no_grad():
        ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        expected = reference.text_encoder(ids_t, attention_mask=mask_t, padding_mask=mask_t.unsqueeze(-1).float())
    assert_close(np.asarray(ours), expected.last_hidden_state.numpy(), rel=1e-5, what="VITS hidden states")


# ----------------------------------------------------------------------------------------------------------------
# LDM stage
# ----------------------------------------------------------------------------------------------------------------


def test_speech_ldm_trains_without_t5(tmp_path):
    c = speech_config("ldm", None, "", num_steps=8)
    c.text.vits_tokenizer = ""
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    assert trainer.stage.frozen_components == ("vae", "audiomae") and not trainer.stage.ldm.uses_t5
    summary = trainer.run()
    assert summary["final_step"] == 8 and summary["skipped_steps"] == 0
    before, after, rows, state, frozen = _trained_vs_initial(trainer, tmp_path)
    assert set(frozen) == {"vae", "audiomae"}
    print(f"speech ldm: loss on step 1's batch {before:.4f} -> {after:.4f} after 8 steps")
    assert after < 0.75 * before, (before, after)
    assert not {"t5_ids", "t5_mask"} & set(trainer.stage.host_batch(testing.first_batch(trainer)))
    cfg, _, extra = components.load("unet", tmp_path / "export")
    assert cfg.cross_attention_dim == ((None, 16),) * 2 and extra["stage"] == "ldm"
    assert not (tmp_path / "export" / "text_encoder_2").exists() and not (tmp_path / "export" / "tokenizer_2").exists()

    # Condition dropout leaves the UNet the zero LOA and no second stream: the conditions the UNet receives, caught
    # by a stand-in for the denoising loss (run eagerly: no UNet to compile), against AudioMAE's pooled features.
    stage = trainer.stage
    seen = []
    stage.ldm.denoising_loss = lambda unet_params, latents, loa, t5_hidden, t5_mask, key: (
        seen.append((np.asarray(loa), t5_hidden, t5_mask)) or jnp.float32(0.0))
    frozen = jax.device_get(frozen)
    batch = {k: jnp.asarray(v) for k, v in stage.host_batch(testing.first_batch(trainer)).items()}
    for rate in (1.0, 0.0):
        stage.ldm.cond_dropout = rate
        _, metrics = stage.loss("unet", jax.device_get(state.params), frozen, jax.device_get(state.extras), batch,
                                jax.random.key(3), 0, 4)
        assert float(metrics["cond_dropped"]) == rate
    (dropped, *no_t5_dropped), (kept, *no_t5_kept) = seen
    assert no_t5_dropped == no_t5_kept == [None, None]
    expected = np.asarray(stage.ldm.loa(frozen["audiomae"], batch["fbank"], 4))
    assert dropped.shape == expected.shape == (4, 4, 16) and np.all(dropped == 0.0)
    np.testing.assert_array_equal(kept, expected)
    assert np.abs(expected).max(axis=(1, 2)).min() > 0  # every kept example has a non-zero LOA


# ----------------------------------------------------------------------------------------------------------------
# GPT-2 stage
# ----------------------------------------------------------------------------------------------------------------


def test_speech_gpt2_learns_the_loa_and_exports_vits(tokenizers, vits_dir, tmp_path):
    c = speech_config("gpt2", tokenizers, vits_dir, num_steps=10, **{"gpt2.cond_dropout": 0.0})
    # Frozen text encoders with weights of their own (as published checkpoints give): they travel with the export.
    vits_params = _saved_component(tmp_path / "vits_in", "vits", config_lib.model_config(c, "vits"), 5)
    _saved_component(tmp_path / "clap_in", "clap", config_lib.model_config(c, "clap"), 6)
    c.init.vits, c.init.clap = str(tmp_path / "vits_in"), str(tmp_path / "clap_in")
    workdir = tmp_path / "run"
    trainer = Trainer.build(c, workdir, devices=jax.devices()[:1])
    assert trainer.stage.frozen_components == ("clap", "vits", "audiomae")
    trainer.run()
    before, after, rows, state, frozen = _trained_vs_initial(trainer, workdir)
    print(f"speech gpt2: loss on step 1's batch {before:.4f} -> {after:.4f} after 10 steps; LOA cosine "
          f"{rows[0]['loa_cosine']:.3f} -> {rows[-1]['loa_cosine']:.3f}")
    assert after < 0.75 * before, (before, after)
    assert rows[-1]["loa_cosine"] > rows[0]["loa_cosine"]

    # Phoneme ids as the pipeline makes them: the caption's characters, then the end-of-phonemes mark 182.
    first = testing.first_batch(trainer)
    host = trainer.stage.host_batch(first)
    assert "t5_ids" not in host and host["phoneme_ids"].shape == (4, PHONEMES)
    caption = str(np.asarray(first["caption"])[0])
    letters = [CHAR_ID[ch] for ch in caption.lower() if ch in CHAR_ID][:PHONEMES]  # other characters are dropped
    expected = (letters + [182] + [0] * PHONEMES)[:PHONEMES]
    assert host["phoneme_ids"][0].tolist() == expected, (caption, host["phoneme_ids"][0])
    assert host["phoneme_mask"][0].tolist() == [int(i <= len(letters)) for i in range(PHONEMES)]

    # A dropped example's phoneme stream is all zeros and fully masked (the pipeline's negative stream); a kept one
    # is the VITS encoder's output.
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    dropped = jnp.array([True, False, True, False])
    _, hidden, mask = jax.jit(trainer.stage.text.text_streams)(jax.device_get(frozen), batch, dropped)
    reference = VitsTextEncoder(config_lib.model_config(c, "vits")).apply(
        {"params": vits_params}, host["phoneme_ids"], host["phoneme_mask"]).last_hidden_state
    assert np.all(np.asarray(hidden)[[0, 2]] == 0) and np.all(np.asarray(mask)[[0, 2]] == 0)
    np.testing.assert_allclose(np.asarray(hidden)[[1, 3]], np.asarray(reference)[[1, 3]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask)[[1, 3]], host["phoneme_mask"][[1, 3]])

    # Teacher forcing sees the positions inference uses: fed the LOA that greedy generation (the pipeline's
    # generate_loa, padded phoneme slots inside the prompt) produces for the same prompts, GPT-2's teacher-forced
    # predictions are that LOA again.
    text, trained = trainer.stage.text, jax.device_get(state.params)["gpt2"]
    clap, hidden, mask = jax.jit(text.text_streams)(jax.device_get(frozen), batch, jnp.zeros(4, bool))
    prompt, prompt_mask = text.prompt(trained["projection"], clap, hidden, mask)
    assert not np.all(np.asarray(prompt_mask)) and prompt.shape[1] == 1 + 2 + PHONEMES + 2
    generated = generate_loa(text.gpt2, trained["gpt2"], prompt, prompt_mask, 4)
    forced = text.teacher_forced(trained["gpt2"], prompt, prompt_mask, generated)
    assert_close(forced, generated, rel=1e-5, what="teacher-forced vs generated LOA")

    # The export: trained GPT-2 and projection (with its position table), the frozen VITS and CLAP as loaded, the
    # VitsTokenizer as tokenizer_2; no T5.
    export = workdir / "export"
    for name in ("gpt2", "projection"):
        cfg, params, extra = components.load(name, export)
        assert cfg == trainer.stage.model_configs[name] and extra["stage"] == "gpt2"
    cfg, params, _ = components.load("projection", export)
    assert cfg.use_learned_position_embedding and params["learnable_positional_embedding"].shape == (PHONEMES, 16)
    cfg, params, _ = components.load("vits", export)
    assert cfg == config_lib.model_config(c, "vits")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(vits_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert components.get("vits").load_config(export) == cfg
    assert components.text_encoder_2_name(export) == "vits"
    tokenizer_config = json.loads((export / "tokenizer_2" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "VitsTokenizer" and tokenizer_config["model_max_length"] == PHONEMES
    assert (export / "tokenizer" / "tokenizer_config.json").is_file()


# ----------------------------------------------------------------------------------------------------------------
# Joint stage
# ----------------------------------------------------------------------------------------------------------------


def test_speech_joint_finetuning_lowers_the_loss_and_reads_the_phonemes(tokenizers, vits_dir, tmp_path):
    """The joint stage of a speech model, trained: frozen VAE, AudioMAE, VITS and CLAP (no T5), a batch without T5
    fields; the trained parameters lower the loss of step 1's batch and draws (both of its terms), GPT-2's prompt
    reads the transcription's phonemes, the switcher gives the UNet GPT-2's teacher-forced LOA (its gradient reaching
    GPT-2 and the projection with its position table) or AudioMAE's, and the export is a speech model."""
    c = speech_config("joint", tokenizers, vits_dir, num_steps=JOINT_STEPS, **{"joint.p_gt": 0.5})
    trainer = Trainer.build(c, tmp_path, devices=jax.devices()[:1])
    stage = trainer.stage
    assert set(stage.frozen_components) == {"vae", "audiomae", "vits", "clap"} and not stage.ldm.uses_t5
    assert "t5" not in stage.components() and "t5" not in stage.passenger_components
    first = testing.first_batch(trainer)
    host = stage.host_batch(first)
    assert not {"t5_ids", "t5_mask"} & set(host) and host["phoneme_ids"].shape == (4, PHONEMES)
    summary = trainer.run()
    assert summary["final_step"] == JOINT_STEPS and summary["skipped_steps"] == 0

    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for row in rows:  # the joint loss is the denoising loss plus the weighted LOA regression loss
        assert row["loss"] == pytest.approx(row["ldm_loss"] + 1.0 * row["gpt2_loss"], rel=1e-5)
        assert row["switch_gt_fraction"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # whole examples of a batch of 4
    assert min(r["switch_gt_fraction"] for r in rows) < 1.0  # the UNet did train on GPT-2's predictions
    state, frozen = testing.restore(trainer, tmp_path, JOINT_STEPS)
    base_key = testing.run_keys(c)[1]
    after = testing.loss_at(trainer, state, frozen, first, 0, base_key)
    print(f"speech joint: loss on step 1's batch {rows[0]['loss']:.4f} -> {after['loss']:.4f} after {JOINT_STEPS} "
          f"steps (gpt2 {rows[0]['gpt2_loss']:.4f} -> {after['gpt2_loss']:.4f}, ldm {rows[0]['ldm_loss']:.4f} -> "
          f"{after['ldm_loss']:.4f})")
    # Measured over seeds 0-7: after / before 0.66-0.75 (mean 0.70), the GPT-2 term 0.62-0.76, the denoising term
    # 0.63-0.75; the bounds leave five standard deviations or more.
    assert after["loss"] < 0.85 * rows[0]["loss"], (rows[0]["loss"], after["loss"])
    assert after["gpt2_loss"] < 0.9 * rows[0]["gpt2_loss"], (rows[0]["gpt2_loss"], after["gpt2_loss"])
    assert after["ldm_loss"] < 0.9 * rows[0]["ldm_loss"], (rows[0]["ldm_loss"], after["ldm_loss"])

    # The phonemes reach the loss: each caption spoken backwards (the same phoneme count, so the same mask, but other
    # phonemes) with the same captions, clips and draws changes GPT-2's loss; the same batch repeats it exactly.
    assert testing.loss_at(trainer, state, frozen, first, 0, base_key) == after
    backwards = np.asarray([str(caption).lower()[::-1] for caption in np.asarray(first["caption"])])
    spoken = stage.host_batch(dict(first, transcription=backwards))
    np.testing.assert_array_equal(spoken["phoneme_mask"], host["phoneme_mask"])
    assert not np.array_equal(spoken["phoneme_ids"], host["phoneme_ids"])
    other = testing.loss_at(trainer, state, frozen, dict(first, transcription=backwards), 0, base_key)
    assert abs(other["gpt2_loss"] - after["gpt2_loss"]) > 1e-3 * after["gpt2_loss"], (other, after)

    # The switcher's conditions, caught by a stand-in for the denoising loss (no UNet to compile), without
    # condition dropout: p_gt=0 gives the UNet GPT-2's teacher-forced prediction for the prompt of CLAP(caption) +
    # VITS(phonemes), p_gt=1 AudioMAE's LOA; and the denoising loss trains GPT-2 and the projection (its learned
    # position table included) only through the prediction. One program for both rates (p_gt traced).
    stage = make_stage(c)
    stage.cond_dropout, stage.gpt2_weight = 0.0, 0.0
    text = stage.text

    @jax.jit
    def probe(model, frozen, batch, p_gt):
        stage.p_gt, seen = p_gt, []
        stage.ldm.denoising_loss = lambda unet_params, latents, loa, t5_hidden, t5_mask, key: (
            seen.append((loa, t5_hidden, t5_mask)) or jnp.sum(loa ** 2))

        def loss(m):
            value, metrics = stage.loss("model", {"model": m}, frozen, stage.extras_template(), batch,
                                        jax.random.key(3), 0, None)
            return value, (seen[-1][0], metrics["switch_gt_fraction"])

        (_, (loa, gt_fraction)), grads = jax.value_and_grad(loss, has_aux=True)(model)
        assert seen[-1][1] is None and seen[-1][2] is None  # no T5 stream
        # the GPT-2 stage's teacher forcing of the same prompt, and AudioMAE's LOA
        clap, hidden, mask = text.text_streams(frozen, batch, jnp.zeros(4, bool))
        target = text.loa(frozen["audiomae"], batch["fbank"], text.lam)
        prompt, prompt_mask = text.prompt(model["projection"], clap, hidden, mask)
        return loa, gt_fraction, grads, text.teacher_forced(model["gpt2"], prompt, prompt_mask, target), target

    model, batch = state.params["model"], {k: jnp.asarray(v) for k, v in host.items()}
    grads = {}
    for p_gt in (0.0, 1.0):
        loa, gt_fraction, grads[p_gt], predicted, target = probe(model, frozen, batch, jnp.float32(p_gt))
        assert float(gt_fraction) == p_gt
        assert np.abs(np.asarray(predicted - target)).max() > 1e-2  # the two branches differ
        assert_close(loa, predicted if p_gt == 0.0 else target, rel=1e-5, what=f"the UNet's LOA at p_gt={p_gt}")
    for name in ("gpt2", "projection"):
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[1.0][name])), name
    for name, leaf in (("projection position table", grads[0.0]["projection"]["learnable_positional_embedding"]),
                       ("projection sos_embed", grads[0.0]["projection"]["sos_embed"]),
                       ("gpt2 h_0.attn.c_attn", grads[0.0]["gpt2"]["h_0"]["attn"]["c_attn"]["kernel"]),
                       ("gpt2 ln_f", grads[0.0]["gpt2"]["ln_f"]["scale"])):
        assert float(jnp.abs(leaf).max()) > 0, f"no gradient of the denoising loss reaches the {name}"

    # The export: a speech model (trained UNet without a T5 stream, GPT-2, projection; frozen VITS and CLAP;
    # the VitsTokenizer as tokenizer_2), no T5.
    export = tmp_path / "export"
    for name in ("unet", "gpt2", "projection"):
        cfg, _, extra = components.load(name, export)
        if name == "unet":  # the export records the training clip length as the UNet's sample_size
            cfg = dataclasses.replace(cfg, sample_size=None)
        assert cfg == trainer.stage.model_configs[name], name
        assert extra["stage"] == "joint", name
    assert components.get("unet").load_config(export).cross_attention_dim == ((None, 16),) * 2
    for name in ("vae", "vits", "clap"):
        assert (export / components.get(name).folder / "training.json").is_file(), name
    assert components.text_encoder_2_name(export) == "vits"
    tokenizer_config = json.loads((export / "tokenizer_2" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "VitsTokenizer" and tokenizer_config["model_max_length"] == PHONEMES


# ----------------------------------------------------------------------------------------------------------------
# Config errors
# ----------------------------------------------------------------------------------------------------------------


def test_speech_config_mistakes_are_named(tokenizers, vits_dir, host_batch):
    stage = make_stage(speech_config("gpt2", tokenizers, vits_dir))
    batch = {k: v for k, v in host_batch.items() if k != "transcription"}
    with pytest.raises(config_lib.ConfigError, match="no 'transcription' field"):
        stage.host_batch(batch)
    stage = make_stage(speech_config("gpt2", tokenizers, vits_dir, **{"text.transcription_from_caption": False}))
    with pytest.raises(config_lib.ConfigError, match="every transcription in the batch is empty"):
        stage.host_batch(host_batch)
    spoken = dict(host_batch, transcription=np.asarray(["hello world", "", "", ""]))
    assert stage.host_batch(spoken)["phoneme_mask"].sum(1).tolist() == [12, 1, 1, 1]  # 11 letters + the end mark

    cases = [
        ({"model.projection.use_learned_position_embedding": False}, "use_learned_position_embedding"),
        ({"text.vits_max_length": 16}, r"text.vits_max_length=16 != model.projection.max_seq_length=24"),
        ({"model.projection.max_seq_length": 16}, "model_max_length=24"),
        ({"model.vits.hidden_size": 24, "model.vits.num_attention_heads": 2}, "model.vits.hidden_size"),
        ({"model.vits.vocab_size": 100}, "model.vits.vocab_size=100"),
    ]
    for overrides, message in cases:
        with pytest.raises(config_lib.ConfigError, match=message):
            make_stage(speech_config("gpt2", tokenizers, vits_dir, **overrides))
    # a speech model's UNet has no T5 stream
    with pytest.raises(config_lib.ConfigError, match="has a T5 stream"):
        make_stage(speech_config("joint", tokenizers, vits_dir, **{"model.unet.cross_attention_dim":
                                                                   ((None, 16, 16),) * 2}))
    c = speech_config("gpt2", tokenizers, vits_dir, **{"model.text_encoder_2": "phonemes"})
    with pytest.raises(config_lib.ConfigError, match="model.text_encoder_2='phonemes'"):
        config_lib.validate(c, num_devices=1)


def test_published_speech_config_sizes():
    """configs/audioldm2_speech.py: 512 LOA tokens at lambda 1, GPT-2-only UNet context, VITS at 192 x 6 layers,
    and the stages build (no weights: init cleared) with T5 nowhere."""
    from audioldm2_jax.models.audiomae import loa_token_count
    from audioldm2_jax.models.unet import context_dims

    for stage in ("vae", "vocoder", "audiomae", "ldm", "gpt2", "joint"):
        c = config_lib.load_config_file(f"{SPEECH_CONFIG}:{stage}")
        config_lib.validate(c, num_devices=8)
    c = config_lib.load_config_file(f"{SPEECH_CONFIG}:ldm")
    mae = config_lib.model_config(c, "audiomae")
    assert loa_token_count(1, mae.grid) == 512 == c.model.gpt2.max_new_tokens and tuple(c.ldm.loa_lambdas) == (1,)
    assert context_dims(config_lib.model_config(c, "unet")) == (768, None)
    vits = config_lib.model_config(c, "vits")
    assert (vits.vocab_size, vits.hidden_size, vits.num_hidden_layers, vits.num_attention_heads) == (183, 192, 6, 2)
    for name in c.init:
        c.init[name] = ""
    assert make_stage(c).frozen_components == ("vae", "audiomae")
    with pytest.raises(ValueError, match="unknown option"):
        config_lib.load_config_file(f"{SPEECH_CONFIG}:ldm,dataset=ljspeech")
