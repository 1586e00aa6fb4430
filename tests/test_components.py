"""The component registry: every network saves and loads back bit for bit through its entry (config.json +
safetensors in the reference's layout + training.json), from every kind of folder a user points at (the component
folder, a pipeline folder or export, a training workdir; AudioMAE also from the original repository's ``.pth``), and
names what is wrong when it cannot."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import train_fixtures as testing

from audioldm2_jax import components
from audioldm2_jax.convert import audiomae as audiomae_convert
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.train import config as config_lib


@pytest.fixture(scope="module")
def micro():
    """Micro configs of every network (the speech config supplies VITS)."""
    c = testing.micro_config("joint")
    configs = {name: config_lib.model_config(c, name) for name in components.COMPONENTS if name != "vits"}
    configs["vits"] = config_lib.model_config(testing.speech_micro_config("joint", None, "unused"), "vits")
    return configs


def _random(name, config, seed=0):
    return jax.device_get(nn.unbox(jax.jit(components.init_fn(name, config))(jax.random.key(seed))))


@pytest.mark.parametrize("name", list(components.COMPONENTS))
def test_every_component_saves_and_loads_back_bit_for_bit(micro, tmp_path, name):
    entry = components.get(name)
    params = _random(name, micro[name])
    entry.save(tmp_path / entry.folder, micro[name], params, {"stage": "test", "step": 3})
    assert (tmp_path / entry.folder / entry.weights_file).is_file()
    for source in (tmp_path / entry.folder, tmp_path):  # the component's folder, and a pipeline folder holding it
        config, loaded, training = components.load(name, source)
        assert config == micro[name] and training == {"stage": "test", "step": 3}
        want, got = components.flat(params), components.flat(loaded)
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == np.float32 and np.array_equal(got[key], np.asarray(want[key])), key
        entry.check_params(config, loaded)
    assert entry.load_config(tmp_path) == micro[name]


def test_a_workdir_is_read_through_its_export(micro, tmp_path):
    components.save("vae", tmp_path / "run" / "export" / "vae", micro["vae"], _random("vae", micro["vae"]))
    assert components.load("vae", tmp_path / "run")[0] == micro["vae"]


def test_audiomae_reads_the_original_pth(micro, tmp_path):
    """``init.audiomae`` may name the published ``.pth`` file (the original repository's keys; the config is read
    from the shapes, so this one keeps the head counts the shapes imply: 64 / 64 and the decoder's 16)."""
    config = dataclasses.replace(micro["audiomae"], embed_dim=64, num_heads=1, depth=3, feature_layers=3,
                                 decoder_embed_dim=32, decoder_num_heads=16)
    params = _random("audiomae", config)
    state = {k: torch.from_numpy(np.array(v)) for k, v in audiomae_convert.to_torch(params, config).items()}
    torch.save({"model": state}, tmp_path / "pretrained.pth")
    loaded_config, loaded, training = components.load("audiomae", tmp_path / "pretrained.pth")
    assert training == {} and components.get("audiomae").load_config(tmp_path / "pretrained.pth") == loaded_config
    assert (loaded_config.depth, loaded_config.input_frames) == (3, config.input_frames)
    for key, value in components.flat(params).items():
        np.testing.assert_array_equal(components.flat(loaded)[key], value)


def test_problems_are_named(micro, tmp_path):
    with pytest.raises(CheckpointError, match="no unet weights at .*with unet/"):
        components.load("unet", tmp_path)
    components.save("t5", tmp_path / "text_encoder_2", micro["t5"], _random("t5", micro["t5"]))
    assert components.text_encoder_2_name(tmp_path) == "t5"
    with pytest.raises(CheckpointError, match="model_type='t5' is not a vits"):
        components.load("vits", tmp_path)
    config = json.loads((tmp_path / "text_encoder_2" / "config.json").read_text())
    (tmp_path / "text_encoder_2" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type='bert'; expected 't5'"):
        components.text_encoder_2_name(tmp_path)
    params = _random("gpt2", micro["gpt2"])
    params["h_0"]["attn"]["c_attn"]["kernel"] = params["h_0"]["attn"]["c_attn"]["kernel"][:, :-1]
    with pytest.raises(CheckpointError, match="misshaped.*h_0/attn/c_attn/kernel"):
        components.get("gpt2").check_params(micro["gpt2"], params)
    with pytest.raises(KeyError, match="unknown component 'bert'"):
        components.get("bert")
