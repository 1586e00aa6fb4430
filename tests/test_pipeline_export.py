"""Sampling from a training export: ``AudioLDM2Pipeline.from_pretrained`` on the component folders the trainer
writes (``component.json`` + ``params.safetensors``), tokenizer folders and the scheduler config.

The reference is what was saved: the loaded parameters must be bit-identical to the saved ones, and a sampling call
must give exactly the audio of a pipeline constructed directly from the same ``(config, params)`` pairs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from pipeline_fixtures import vits_tokenizer

from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.pipeline import AudioLDM2Pipeline
from audioldm2_jax.train import components as comp
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import testing
from audioldm2_jax.train.export import scheduler_config
from audioldm2_jax.train.text import load_tokenizer

# export component -> the pipeline's parameter entry
PIPELINE_ENTRY = {"unet": "unet", "vae": "vae", "vocoder": "vocoder", "clap": "clap", "t5": "text_encoder_2",
                  "projection": "projection", "gpt2": "language_model"}
LATENT_SCALE = 0.625
CALL = dict(audio_length_in_s=0.32, num_inference_steps=3, guidance_scale=2.5, scheduler="ddim", seed=[5, 9])
PROMPTS = ["A sawtooth wave playing the note C#", "a square wave repeating a low G note"]
PHONEMES = 24  # the speech model's phoneme length (VITS tokenizer's model_max_length, projection table)


def write_export(root, c, entries) -> tuple:
    """A micro export of config ``c``, as ``train.export.export_stage`` lays it out (the components of
    ``entries``, random weights; tokenizer folders copied from the config's), and the ``(config, params)``
    pairs in it."""
    export = root / "workdir" / "export"
    pairs = {}
    for index, name in enumerate(entries):
        cfg = config_lib.model_config(c, name)
        if name == "vae":  # the LDM stage's latent scale travels as the VAE's scaling_factor
            cfg = dataclasses.replace(cfg, scaling_factor=LATENT_SCALE)
        params = jax.device_get(nn.unbox(jax.jit(comp.init_fn(name, cfg))(jax.random.key(index))))
        params = jax.tree.map(np.asarray, params)
        if name == "vocoder":  # random HiFi-GAN output is ~1e-6: scale it up so that the audio compared is not noise
            params["conv_post"]["kernel"] = params["conv_post"]["kernel"] * 300.0
        extra = {"latent_scale": LATENT_SCALE} if name == "vae" else {}
        comp.save_component(export / name, name, cfg, params, {**extra, "stage": "joint", "step": 1})
        pairs[name] = (cfg, params)
    shutil.copytree(c.text.clap_tokenizer, export / "tokenizer")
    shutil.copytree(c.text.vits_tokenizer or c.text.t5_tokenizer, export / "tokenizer_2")
    (export / "scheduler").mkdir()
    (export / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(c)))
    return export, pairs, scheduler_config(c)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_export")
    tokenizers = testing.caption_tokenizers(root / "tokenizers")
    return write_export(root, testing.micro_config("joint", tokenizers), PIPELINE_ENTRY)


@pytest.fixture(scope="module")
def loaded(saved):
    return AudioLDM2Pipeline.from_pretrained(saved[0])


def test_export_loads_bit_identical_parameters(saved, loaded):
    export, pairs, schedule = saved
    for name, entry in PIPELINE_ENTRY.items():
        got = comp.flatten(jax.device_get(loaded.params[entry]["params"]))
        want = comp.flatten(pairs[name][1])
        if name == "clap":  # the text tower only, plus ClapModel's two (unused) logit scales at their initial value
            assert got.pop("logit_scale_a") == got.pop("logit_scale_t") == np.float32(np.log(1 / 0.07))
        assert sorted(got) == sorted(want), name
        for key in want:
            assert got[key].dtype == np.float32 and np.array_equal(got[key], want[key]), f"{name}/{key}"
    assert loaded.vae_config.scaling_factor == LATENT_SCALE
    assert loaded.unet_config == pairs["unet"][0] and loaded.language_model_config == pairs["gpt2"][0]
    assert loaded.scheduler_config == schedule
    assert not loaded.has_clap_audio
    assert loaded.tokenizer("a sawtooth wave")["input_ids"] == load_tokenizer(export / "tokenizer")(
        "a sawtooth wave")["input_ids"]


def _tokenizer(folder, max_length: int):
    tokenizer = load_tokenizer(folder)
    tokenizer.model_max_length = max_length
    return tokenizer


def test_export_samples_like_the_directly_built_pipeline(saved, loaded):
    export, pairs, schedule = saved
    # tokenizers trained on the spot have no model_max_length: without a workdir config.json it becomes 512
    assert loaded.tokenizer.model_max_length == loaded.tokenizer_2.model_max_length == 512
    direct = AudioLDM2Pipeline(
        unet=pairs["unet"], vae=pairs["vae"], vocoder=pairs["vocoder"], text_encoder=pairs["clap"],
        text_encoder_2=pairs["t5"], projection_model=pairs["projection"], language_model=pairs["gpt2"],
        tokenizer=_tokenizer(export / "tokenizer", 512), tokenizer_2=_tokenizer(export / "tokenizer_2", 512),
        scheduler_config=schedule)
    ours = loaded(PROMPTS, **CALL)
    ref = direct(PROMPTS, **CALL)
    assert ours.shape == (2, int(0.32 * 16000))
    assert np.abs(ref).max() > 1e-3  # real audio, not rounding noise
    np.testing.assert_array_equal(ours, ref)


def test_workdir_is_accepted_and_its_config_read(saved, tmp_path):
    """``from_pretrained(<workdir>)`` finds ``export/``; the workdir's config.json gives the tokenizers' lengths
    and the default duration (the training clip length)."""
    workdir = tmp_path / "run"
    shutil.copytree(saved[0], workdir / "export")
    (workdir / "config.json").write_text(json.dumps({"text": {"clap_max_length": 24, "t5_max_length": 20},
                                                     "data": {"clip_seconds": 0.64}}))
    pipe = AudioLDM2Pipeline.from_pretrained(workdir)
    assert pipe.vae_config.scaling_factor == LATENT_SCALE
    assert (pipe.tokenizer.model_max_length, pipe.tokenizer_2.model_max_length) == (24, 20)
    assert pipe.default_duration_s == pytest.approx(0.64)


def test_text_only_clap_refuses_ranking(loaded):
    with pytest.raises(ValueError, match="audio branch"):
        loaded(PROMPTS[0], num_waveforms_per_prompt=2, **{**CALL, "seed": 0})


@pytest.mark.parametrize("missing", ["projection", "clap", "tokenizer_2", "scheduler"])
def test_missing_piece_is_named(saved, tmp_path, missing):
    copy = tmp_path / "export"
    shutil.copytree(saved[0], copy)
    shutil.rmtree(copy / missing)
    with pytest.raises(CheckpointError, match=missing):
        AudioLDM2Pipeline.from_pretrained(copy)


def test_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json"):
        AudioLDM2Pipeline.from_pretrained(tmp_path / "empty")


def test_speech_export_reads_vits_as_the_second_text_encoder(tmp_path):
    """A speech model's export holds ``vits`` (and the VITS phoneme tokenizer as ``tokenizer_2``) instead of T5: it
    loads as a speech pipeline that needs a transcription and speaks it exactly as a pipeline built directly from
    the saved pairs."""
    vits_dir = tmp_path / "vits_tokenizer"
    vits_tokenizer(PHONEMES).save_pretrained(str(vits_dir))
    c = testing.speech_micro_config("joint", testing.caption_tokenizers(tmp_path / "tokenizers"), vits_dir, PHONEMES)
    entries = [name if name != "t5" else "vits" for name in PIPELINE_ENTRY]
    export, pairs, schedule = write_export(tmp_path, c, entries)
    loaded = AudioLDM2Pipeline.from_pretrained(export)
    assert loaded.is_speech
    got = comp.flatten(jax.device_get(loaded.params["text_encoder_2"]["params"]))
    want = comp.flatten(pairs["vits"][1])
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="transcription"):
        loaded(PROMPTS[0], **{**CALL, "seed": 0})
    direct = AudioLDM2Pipeline(
        unet=pairs["unet"], vae=pairs["vae"], vocoder=pairs["vocoder"], text_encoder=pairs["clap"],
        text_encoder_2=pairs["vits"], projection_model=pairs["projection"], language_model=pairs["gpt2"],
        tokenizer=_tokenizer(export / "tokenizer", 512), tokenizer_2=load_tokenizer(export / "tokenizer_2"),
        scheduler_config=schedule)
    speech = dict(CALL, transcription=["hello there", "good morning"], max_new_tokens=4)
    ours, ref = loaded(PROMPTS, **speech), direct(PROMPTS, **speech)
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_array_equal(ours, ref)
