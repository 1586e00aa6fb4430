"""A model trained here, taken to the PyTorch ecosystem and back: the joint stage (micro size, 8 steps) exports in
diffusers' pipeline layout, diffusers' own ``AudioLDM2Pipeline.from_pretrained`` loads the export and, from the same
initial latents, makes the same audio as ours; ours loads the trained parameters bit for bit.

The reference for the audio is diffusers running the exported folder (tolerance: max abs error 1e-4 of the
waveform's scale, fp32); for the parameters, the run's own final (EMA) parameters."""

from __future__ import annotations

import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import train_fixtures as testing
from conftest import assert_close
from pipeline_fixtures import reference_latents

from audioldm2_jax import AudioLDM2Pipeline, components
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train.loop import Trainer
from audioldm2_jax.train.metrics import read_jsonl

PROMPTS = ["A sawtooth wave playing the note C#", "a square wave repeating a low G note"]
DURATION = 0.32
STEPS = 3
GUIDANCE = 2.5
# the pipeline's parameter entries -> registry names
ENTRIES = {"unet": "unet", "vae": "vae", "vocoder": "vocoder", "clap": "clap", "text_encoder_2": "t5",
           "projection": "projection", "language_model": "gpt2"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, trainer, summary)`` of an 8-step joint run whose export is a whole model: every frozen network
    random, and a random vocoder carried along (its output scaled up so that the audio compared is a signal, not the
    ~1e-6 of HiFi-GAN's initialisation)."""
    root = tmp_path_factory.mktemp("train_export")
    c = testing.micro_config("joint", testing.caption_tokenizers(root / "tokenizers"))
    vocoder_config = config_lib.model_config(c, "vocoder")
    vocoder = jax.device_get(nn.unbox(components.init_fn("vocoder", vocoder_config)(jax.random.key(7))))
    vocoder["conv_post"]["kernel"] = vocoder["conv_post"]["kernel"] * 300.0
    components.save("vocoder", root / "vocoder", vocoder_config, vocoder)
    c.init.vocoder = str(root / "vocoder")
    testing.override(c, num_steps=8, **{"joint.p_gt": 0.5})
    trainer = Trainer.build(c, root / "run", devices=jax.devices()[:1])
    summary = trainer.run()
    return root / "run", trainer, summary


def test_joint_finetuning_lowers_both_losses_and_exports_a_whole_model(trained):
    tmp_path, trainer, summary = trained
    assert trainer.stage.groups == ("model",) and summary["skipped_steps"] == 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for row in rows:  # the joint loss is the denoising loss plus the weighted LOA regression loss
        assert row["loss"] == pytest.approx(row["ldm_loss"] + 1.0 * row["gpt2_loss"], rel=1e-5)
        assert row["switch_gt_fraction"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # whole examples of a batch of 4
    state, frozen = testing.restore(trainer, tmp_path, trainer.config.num_steps)
    after = testing.loss_at(trainer, state, frozen, testing.first_batch(trainer), 0,
                            testing.run_keys(trainer.config)[1])
    assert after["loss"] < 0.75 * rows[0]["loss"], (rows[0]["loss"], after["loss"])
    assert after["gpt2_loss"] < rows[0]["gpt2_loss"]
    # trained networks, and the frozen ones it trained against (random here); the frozen AudioMAE is an encoder only
    for name in ("unet", "gpt2", "projection", "vae", "t5", "clap"):
        assert (tmp_path / "export" / components.get(name).folder / "training.json").is_file(), name
    vae_config, _, vae_extra = components.load("vae", tmp_path / "export")
    assert vae_extra["random_init"] and vae_config.scaling_factor == pytest.approx(vae_extra["latent_scale"])


@pytest.fixture(scope="module")
def ours(trained):
    return AudioLDM2Pipeline.from_pretrained(trained[0] / "export")


@pytest.fixture(scope="module")
def reference(trained):
    """diffusers' AudioLDM2Pipeline, from the export folder as it is."""
    import diffusers

    return diffusers.AudioLDM2Pipeline.from_pretrained(trained[0] / "export")


def test_export_is_a_diffusers_pipeline_folder(trained, reference, tmp_path):
    """The export's model_index.json and folders are the ones diffusers writes for the same pipeline."""
    export = trained[0] / "export"
    reference.save_pretrained(tmp_path / "resaved")
    ours_index = json.loads((export / "model_index.json").read_text())
    theirs = json.loads((tmp_path / "resaved" / "model_index.json").read_text())
    strip = lambda index: {k: v for k, v in index.items() if not k.startswith("_")}  # noqa: E731
    assert strip(ours_index) == strip(theirs)
    for folder in ("unet", "vae", "vocoder", "text_encoder", "text_encoder_2", "projection_model", "language_model"):
        assert (export / folder / "config.json").is_file(), folder
        assert json.loads((export / folder / "training.json").read_text())["stage"] == "joint", folder


def test_diffusers_makes_the_same_audio_from_the_same_latents(reference, ours):
    latents = reference_latents(len(PROMPTS), DURATION, seed=3, latent_width=ours.vocoder_config.model_in_dim // 4)
    with torch.no_grad():
        ref = reference(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                        latents=torch.from_numpy(latents), output_type="np").audios
    got = ours(PROMPTS, audio_length_in_s=DURATION, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               latents=latents)
    assert got.shape == ref.shape == (2, int(DURATION * 16000))
    assert np.abs(ref).max() > 1e-3  # real audio, not rounding noise
    err = assert_close(got, ref, what="waveforms of the trained export")
    print(f"trained export, ours vs diffusers: max abs error {err:.2e} of scale")


def test_ours_loads_the_trained_parameters_bit_for_bit(trained, ours):
    workdir, trainer, _ = trained
    state, frozen = testing.restore(trainer, workdir, trainer.config.num_steps)
    trained_params = jax.device_get(trainer.export_params(state))["model"]
    frozen = jax.device_get(frozen)
    want = {"unet": trained_params["unet"], "projection": trained_params["projection"],
            "language_model": trained_params["gpt2"], "text_encoder_2": frozen["t5"], "clap": frozen["clap"],
            "vae": frozen["vae"]}
    for entry, tree in want.items():
        got = components.flat(jax.device_get(ours.params[entry]["params"]))
        if entry == "clap":  # the text tower, plus ClapModel's two (unused) logit scales at their initial value
            assert got.pop("logit_scale_a") == got.pop("logit_scale_t") == np.float32(np.log(1 / 0.07))
        expected = components.flat(tree)
        assert sorted(got) == sorted(expected), entry
        for key, value in expected.items():
            assert got[key].dtype == np.float32 and np.array_equal(got[key], np.asarray(value)), f"{entry}/{key}"
    scale = float(jax.device_get(state.extras["latent_scale"]))
    assert ours.vae_config.scaling_factor == np.float32(scale) or ours.vae_config.scaling_factor == scale
    assert not ours.has_clap_audio


def test_training_lengths_travel_with_the_export(trained, ours):
    """Tokenizers trained on the spot get the caption lengths training used; the default duration is the training
    clip length (the UNet's sample_size)."""
    config = trained[1].config
    assert ours.tokenizer.model_max_length == config.text.clap_max_length
    assert ours.tokenizer_2.model_max_length == config.text.t5_max_length
    assert ours.default_duration_s == pytest.approx(config.data.clip_seconds)
    assert AudioLDM2Pipeline.from_pretrained(trained[0]).default_duration_s == ours.default_duration_s  # a workdir


def test_text_only_clap_refuses_ranking(ours):
    with pytest.raises(ValueError, match="audio branch"):
        ours(PROMPTS[0], num_waveforms_per_prompt=2, audio_length_in_s=DURATION, num_inference_steps=2)


@pytest.mark.parametrize("missing", ["projection_model", "text_encoder", "tokenizer_2", "scheduler"])
def test_missing_piece_is_named(trained, tmp_path, missing):
    copy = tmp_path / "export"
    shutil.copytree(trained[0] / "export", copy)
    shutil.rmtree(copy / missing)
    with pytest.raises(CheckpointError, match=missing):
        AudioLDM2Pipeline.from_pretrained(copy)


def test_partial_export_and_non_checkpoint_are_named(trained, tmp_path):
    partial = tmp_path / "vae_stage_export"
    shutil.copytree(trained[0] / "export" / "vae", partial / "vae")
    with pytest.raises(CheckpointError, match="model_index.json.*holds vae"):
        AudioLDM2Pipeline.from_pretrained(partial)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json"):
        AudioLDM2Pipeline.from_pretrained(tmp_path / "empty")
