"""The networks of AudioLDM 2, one registry entry each: what a config, a checkpoint folder and a trainer stage call
them, their config class and Flax module, how they are initialised, converted and saved.

Every network lives on disk the way the reference keeps it: a diffusers pipeline folder ``model_index.json`` +
one subfolder per component (``config.json`` + safetensors weights, the keys and layouts of the PyTorch classes), so
that what this project trains loads in diffusers' ``AudioLDM2Pipeline`` and what diffusers publishes loads here.
Loading, conversion, the trainer's exports and :class:`~audioldm2_jax.pipeline.AudioLDM2Pipeline` all read this
table; ``convert/<name>.py`` holds each network's key and layout mapping (``config_from_json``,
``config_to_json``, ``to_flax``, ``to_torch``).

==========  ================  ===================================  ==================  ==========
name        pipeline folder   reference class                      Flax module         tokenizer
==========  ================  ===================================  ==================  ==========
unet        unet              AudioLDM2UNet2DConditionModel        AudioLDM2UNet
vae         vae               AutoencoderKL                        AutoencoderKL
vocoder     vocoder           SpeechT5HifiGan                      HifiGanVocoder
clap        text_encoder      ClapModel (text tower kept)          ClapTextTower       tokenizer
t5          text_encoder_2    T5EncoderModel                       T5EncoderModel      tokenizer_2
vits        text_encoder_2    VitsModel (text encoder kept)        VitsTextEncoder     tokenizer_2
projection  projection_model  AudioLDM2ProjectionModel             AudioLDM2Projection...
gpt2        language_model    GPT2LMHeadModel                      GPT2Model
audiomae    audiomae          AudioMAE (not part of the pipeline)  MaskedAutoencoder
==========  ================  ===================================  ==================  ==========

A component folder may also hold ``training.json``: what the trainer records about the weights (the stage and step
that produced them, the latent scale, ``random_init``); the reference ignores it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from audioldm2_jax.convert import audiomae as audiomae_convert
from audioldm2_jax.convert import clap as clap_convert
from audioldm2_jax.convert import gpt2 as gpt2_convert
from audioldm2_jax.convert import projection as projection_convert
from audioldm2_jax.convert import t5 as t5_convert
from audioldm2_jax.convert import unet as unet_convert
from audioldm2_jax.convert import vae as vae_convert
from audioldm2_jax.convert import vits_text as vits_convert
from audioldm2_jax.convert import vocoder as vocoder_convert
from audioldm2_jax.convert.weights import CheckpointError, load_state_dict, read_config, resolve_checkpoint
from audioldm2_jax.models.audiomae import AudioMAEConfig, MaskedAutoencoder, dummy_fbank
from audioldm2_jax.models.clap import ClapConfig, ClapTextTower
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, gpt2_dummy_inputs
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig, projection_dummy_inputs
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, t5_dummy_inputs
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig, vae_dummy_input
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig

TRAINING_FILE = "training.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Component:
    """One network. ``library`` / ``class_name``: the entry ``model_index.json`` gives its folder (diffusers files
    its AudioLDM 2 classes under ``audioldm2``; ``library`` "" for a network outside the pipeline); ``converter``:
    its ``convert/`` module; ``dummy_inputs(config)``: the arguments that initialise ``module``; ``model_types``: the
    ``config.json`` ``model_type`` values it reads (to tell the two networks that share ``text_encoder_2/`` apart)."""

    name: str
    folder: str
    library: str
    class_name: str
    config_class: type
    module: Callable[..., nn.Module]
    dummy_inputs: Callable[[Any], tuple]
    converter: ModuleType
    weights_file: str
    tokenizer: str | None = None
    model_types: tuple[str | None, ...] = ()

    def build(self, config, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.Module:
        return self.module(config, dtype=dtype, param_dtype=param_dtype)

    def init(self, config, rng: jax.Array):
        """Boxed random parameters (the ``params`` collection; ``nn.unbox`` for plain arrays)."""
        return self.build(config).init({"params": rng}, *self.dummy_inputs(config))["params"]

    def abstract_params(self, config):
        """The boxed parameter tree with ``ShapeDtypeStruct`` leaves: logical axes for sharding, shapes for checks."""
        return jax.eval_shape(lambda rng: self.init(config, rng), jax.random.key(0))

    # ---- reading ---------------------------------------------------------------------------------------------

    def config_from_folder(self, folder: str | os.PathLike):
        """The config of ``folder/config.json``; ``CheckpointError`` naming the file and the key when it is not one
        this network reads."""
        folder = Path(folder)
        raw = read_config(folder)
        if self.model_types and raw.get("model_type") not in self.model_types:
            raise CheckpointError(f"{folder / 'config.json'}: model_type={raw.get('model_type')!r} is not a "
                                  f"{self.name} ({self.class_name}); expected one of "
                                  f"{[t for t in self.model_types if t]}")
        try:
            return self.converter.config_from_json(raw)
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{folder / 'config.json'}: {err}") from err

    def load(self, source: str | os.PathLike) -> tuple[Any, dict, dict]:
        """``(config, params, training)`` from ``source`` (see :func:`component_folder`; for AudioMAE also the
        original repository's ``.pth`` file): host float32 arrays, a bare parameter tree; ``training`` is the folder's
        ``training.json`` ({} when there is none)."""
        if self._is_pth(source):
            return (*audiomae_convert.load_audiomae(source), {})
        folder = component_folder(self.name, source)
        config = self.config_from_folder(folder)
        params = self.converter.to_flax(load_state_dict(folder), config, source=str(folder))
        return config, jax.tree.map(np.asarray, params), read_training(folder)

    def load_config(self, source: str | os.PathLike):
        """The config alone, without reading the weights (a stage must know the UNet's streams before it chooses
        what else to load)."""
        if self._is_pth(source):
            return self.load(source)[0]
        return self.config_from_folder(component_folder(self.name, source))

    def _is_pth(self, source) -> bool:
        return self.name == "audiomae" and Path(source).is_file()

    def check_params(self, config, params) -> None:
        """``CheckpointError`` naming every parameter whose path or shape differs from what ``config`` builds."""
        problem = shape_mismatch(self.abstract_params(config), params)
        if problem:
            raise CheckpointError(f"{self.name} parameters do not fit its config: {problem}")

    # ---- writing ---------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, config, params, training: dict | None = None) -> Path:
        """Writes ``config.json`` and the weights the reference class reads (float32 safetensors, its key names),
        plus ``training.json`` when given. Only process 0 writes; every process must call it (the parameters are
        gathered to the host first)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        state_dict = self.converter.to_torch(jax.device_get(nn.unbox(params)), config)
        if jax.process_index() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / (self.weights_file + ".tmp")
            save_file(state_dict, str(tmp), metadata={"format": "pt"})
            os.replace(tmp, directory / self.weights_file)
            (directory / "config.json").write_text(json.dumps(self.converter.config_to_json(config), indent=2) + "\n")
            if training:
                (directory / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
        return directory


def _clap_inputs(config: ClapConfig):
    return jnp.full((1, 4), 3, jnp.int32), jnp.ones((1, 4), jnp.int32)


def _ids_and_mask(config):
    ids = jnp.ones((1, 4), jnp.int32)
    return ids, jnp.ones_like(ids)


def _mae_inputs(config: AudioMAEConfig):
    return dummy_fbank(config), jnp.zeros((1, config.num_patches), jnp.float32)


COMPONENTS: dict[str, Component] = {c.name: c for c in (
    Component("unet", "unet", "audioldm2", "AudioLDM2UNet2DConditionModel", UNetConfig, AudioLDM2UNet,
              unet_dummy_inputs, unet_convert, DIFFUSERS_WEIGHTS),
    Component("vae", "vae", "diffusers", "AutoencoderKL", VAEConfig, AutoencoderKL,
              lambda c: (vae_dummy_input(c),), vae_convert, DIFFUSERS_WEIGHTS),
    Component("vocoder", "vocoder", "transformers", "SpeechT5HifiGan", VocoderConfig, HifiGanVocoder,
              lambda c: (jnp.zeros((1, 4, c.model_in_dim), jnp.float32),), vocoder_convert, TRANSFORMERS_WEIGHTS),
    Component("clap", "text_encoder", "transformers", "ClapModel", ClapConfig, ClapTextTower,
              _clap_inputs, clap_convert, TRANSFORMERS_WEIGHTS, tokenizer="tokenizer"),
    Component("t5", "text_encoder_2", "transformers", "T5EncoderModel", T5Config, T5EncoderModel,
              lambda c: t5_dummy_inputs(), t5_convert, TRANSFORMERS_WEIGHTS, tokenizer="tokenizer_2",
              model_types=("t5", "mt5", "umt5", None)),
    Component("vits", "text_encoder_2", "transformers", "VitsModel", VitsTextConfig, VitsTextEncoder,
              _ids_and_mask, vits_convert, TRANSFORMERS_WEIGHTS, tokenizer="tokenizer_2", model_types=("vits",)),
    Component("projection", "projection_model", "audioldm2", "AudioLDM2ProjectionModel", ProjectionConfig,
              AudioLDM2ProjectionModel, projection_dummy_inputs, projection_convert, DIFFUSERS_WEIGHTS),
    Component("gpt2", "language_model", "transformers", "GPT2LMHeadModel", GPT2Config, GPT2Model,
              gpt2_dummy_inputs, gpt2_convert, TRANSFORMERS_WEIGHTS),
    # The trainable AudioMAE is the masked autoencoder ({"encoder", "decoder"}); frozen uses read the encoder.
    Component("audiomae", "audiomae", "", "AudioMAE", AudioMAEConfig, MaskedAutoencoder, _mae_inputs,
              audiomae_convert, TRANSFORMERS_WEIGHTS),
)}

# The networks of diffusers' AudioLDM2Pipeline, by the argument (and folder) name it gives them; text_encoder_2 is
# T5 or, for the speech checkpoints, VITS.
PIPELINE_COMPONENTS = ("unet", "vae", "vocoder", "clap", "projection", "gpt2")
TEXT_ENCODER_2 = ("t5", "vits")


def get(name: str) -> Component:
    if name not in COMPONENTS:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    return COMPONENTS[name]


def component_folder(name: str, source: str | os.PathLike) -> Path:
    """The folder holding component ``name`` in ``source``: a training workdir (its ``export/``), a pipeline folder
    or hub id (its ``<folder>/`` subfolder) or the component's own folder. ``CheckpointError`` when there is none."""
    component = get(name)
    path = resolve_checkpoint(source)
    if (path / "export").is_dir() and not (path / "config.json").is_file():
        path = path / "export"
    for folder in (path / component.folder, path):
        if (folder / "config.json").is_file():
            return folder
    raise CheckpointError(f"no {name} weights at {path}: expected a component folder (config.json + weights), a "
                          f"pipeline folder or training export with {component.folder}/, or a training workdir")


def text_encoder_2_name(source: str | os.PathLike) -> str:
    """``"t5"`` or ``"vits"``: which network the pipeline folder ``source`` holds in ``text_encoder_2/``."""
    folder = Path(source) / "text_encoder_2"
    model_type = read_config(folder).get("model_type")
    for name in TEXT_ENCODER_2:
        if model_type in COMPONENTS[name].model_types:
            return name
    raise CheckpointError(f"{folder / 'config.json'}: model_type={model_type!r}; expected 't5' (text-to-audio / "
                          "music) or 'vits' (speech)")


def read_training(folder: str | os.PathLike) -> dict:
    path = Path(folder) / TRAINING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def flat(tree) -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` of a parameter tree."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def shape_mismatch(expected, got) -> str | None:
    """What differs between two parameter trees' paths and shapes (arrays, boxed or ``ShapeDtypeStruct`` leaves):
    the first few missing, unexpected and misshaped paths; None when nothing does."""
    want = {k: tuple(np.shape(v)) for k, v in flat(nn.unbox(expected)).items()}
    have = {k: tuple(np.shape(v)) for k, v in flat(nn.unbox(got)).items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    misshaped = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if not (missing or unexpected or misshaped):
        return None
    return (f"missing {missing[:8]}, unexpected {unexpected[:8]}, misshaped "
            f"{[(k, have[k], want[k]) for k in misshaped[:8]]}")


def load(name: str, source: str | os.PathLike) -> tuple[Any, dict, dict]:
    return get(name).load(source)


def save(name: str, directory: str | os.PathLike, config, params, training: dict | None = None) -> Path:
    return get(name).save(directory, config, params, training)


def init_fn(name: str, config) -> Callable[[jax.Array], Any]:
    """``rng -> boxed params`` of a randomly initialised component (float32 parameters)."""
    return lambda rng: get(name).init(config, rng)
