"""A stage's trained model, written in diffusers' pipeline layout.

``export_stage`` writes ``<workdir>/export/``: one folder per network the stage trained, ran or carried
(``unet/``, ``vae/``, ``language_model/``, ... see :mod:`audioldm2_jax.components`), each ``config.json`` + the
reference class's safetensors + ``training.json`` (stage, step, latent scale); the tokenizers the run used
(``tokenizer/``, ``tokenizer_2/``), the noise schedule (``scheduler/``), CLAP's feature extractor, and, once every
network of the pipeline is there (the joint stage), ``model_index.json``: the folder then loads in diffusers'
``AudioLDM2Pipeline.from_pretrained`` as it does in ours. Later stages read their inputs from these folders
(``init.<component>``), like any pretrained checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax

from audioldm2_jax import components
from audioldm2_jax.audio.clap_features import ClapFeatureConfig
from audioldm2_jax.audio.mel import HOP_LENGTH, SAMPLE_RATE
from audioldm2_jax.train.stages.common import find_tokenizer
from audioldm2_jax.train.text import load_tokenizer

# The diffusers release whose AudioLDM2Pipeline the exports are checked against (tests/test_train_export.py).
DIFFUSERS_VERSION = "0.42.1"
# Beyond this a tokenizer's model_max_length is transformers' "unset" sentinel, not a real limit.
MAX_REAL_TOKENIZER_LENGTH = 4096


def scheduler_config(config) -> dict:
    """The diffusers DDIM scheduler config of the trained schedule (the published sampler settings)."""
    d = config.diffusion
    return {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": int(d.num_train_timesteps), "beta_start": float(d.beta_start),
            "beta_end": float(d.beta_end), "beta_schedule": str(d.beta_schedule),
            "prediction_type": str(d.prediction_type), "steps_offset": 1, "set_alpha_to_one": False,
            "clip_sample": False, "timestep_spacing": "leading"}


def _latent_frames(config, vae_config) -> int:
    """The UNet's ``sample_size``: latent frames of a training clip (the pipeline's default duration)."""
    frames = int(round(float(config.data.clip_seconds) * SAMPLE_RATE / HOP_LENGTH))
    return max(1, frames // vae_config.downsample_factor)


def _write_tokenizer(source: str, target: Path, max_length: int) -> str:
    """Copies the tokenizer folder ``source`` to ``target``; a tokenizer without a real ``model_max_length`` (one
    trained on the spot) gets the caption length training used, so that the pipeline truncates as training did.
    Returns its class name for ``model_index.json``."""
    tokenizer = load_tokenizer(source)
    if int(tokenizer.model_max_length) > MAX_REAL_TOKENIZER_LENGTH:
        tokenizer.model_max_length = int(max_length)
        if target.exists():
            shutil.rmtree(target)
        tokenizer.save_pretrained(str(target))
    elif Path(source).resolve() != target.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
    saved = json.loads((target / "tokenizer_config.json").read_text()).get("tokenizer_class")
    return saved or type(tokenizer).__name__


def model_index(present: dict[str, str], tokenizer_classes: dict[str, str]) -> dict | None:
    """diffusers' ``model_index.json`` for the component folders ``present`` (``{name: folder}``), or None while
    the pipeline is incomplete."""
    text_encoder_2 = [name for name in components.TEXT_ENCODER_2 if name in present]
    if any(name not in present for name in components.PIPELINE_COMPONENTS) or len(text_encoder_2) != 1 \
            or set(tokenizer_classes) != {"tokenizer", "tokenizer_2"}:
        return None
    index = {"_class_name": "AudioLDM2Pipeline", "_diffusers_version": DIFFUSERS_VERSION}
    for name in components.PIPELINE_COMPONENTS + tuple(text_encoder_2):
        c = components.get(name)
        index[c.folder] = [c.library, c.class_name]
    index.update({folder: ["transformers", cls] for folder, cls in tokenizer_classes.items()})
    index["feature_extractor"] = ["transformers", "ClapFeatureExtractor"]
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    return dict(sorted(index.items()))


def export_stage(trainer, state, frozen, directory: str | Path) -> Path:
    """Writes the stage's networks (EMA parameters when kept) and what the pipeline needs beside them to
    ``directory``; returns it. Every process calls it; process 0 writes."""
    directory = Path(directory)
    config = trainer.config
    params = jax.device_get(trainer.export_params(state))
    extras = jax.device_get(state.extras)
    exported = trainer.stage.export_components(params, frozen, extras)
    step = int(jax.device_get(state.step))
    present = {}
    for name, (cfg, tree, training) in exported.items():
        if name == "unet" and "vae" in exported:
            cfg = dataclasses.replace(cfg, sample_size=_latent_frames(config, exported["vae"][0]))
        folder = components.get(name).folder
        components.save(name, directory / folder, cfg, jax.device_get(tree),
                        {**training, "stage": trainer.stage.name, "step": step})
        present[name] = folder
    if jax.process_index() != 0:
        return directory
    tokenizer_classes = {}
    for name in present:
        sub = components.get(name).tokenizer
        if sub is None:
            continue
        try:
            source = find_tokenizer(config, name)
        except ValueError:
            continue
        tokenizer_classes[sub] = _write_tokenizer(source, directory / sub, config.text.get(f"{name}_max_length", 512))
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(config), indent=2))
    if "clap" in present:
        (directory / "feature_extractor").mkdir(parents=True, exist_ok=True)
        (directory / "feature_extractor" / "preprocessor_config.json").write_text(
            json.dumps(ClapFeatureConfig().to_preprocessor_config(), indent=2))
    index = model_index(present, tokenizer_classes)
    if index is not None:
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory
