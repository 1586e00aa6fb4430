"""The networks a training stage assembles, as named *components*: how each is built, initialised, saved and loaded.

A component is a (config dataclass, parameter tree) pair. Weights come from one of:

- random initialisation (``init.<name> = ""``),
- a component folder this trainer wrote (``component.json`` + ``params.safetensors``),
- a training workdir (its ``export/<name>`` folder),
- a pretrained checkpoint in the diffusers / transformers layout (a pipeline folder such as ``cvssp/audioldm2``
  with ``unet/``, ``text_encoder_2/``, ... or the component's own folder), through ``audioldm2_jax.convert``.

Component names and their pipeline subfolders: unet (``unet``), vae (``vae``), vocoder (``vocoder``), gpt2
(``language_model``), t5 (``text_encoder_2``), clap (``text_encoder``, text tower only), projection
(``projection_model``), vits (``text_encoder_2`` of the speech checkpoints: the phoneme text encoder of a
transformers ``VitsModel``), audiomae (an AudioMAE ``.pth``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax.models.audiomae import AudioMAEConfig, AudioMAEEncoder, MaskedAutoencoder
from audioldm2_jax.models.clap import ClapConfig, ClapProjection, ClapTextModel, l2_normalize
from audioldm2_jax.models.gpt2 import GPT2Config, GPT2Model, gpt2_dummy_inputs
from audioldm2_jax.models.projection import AudioLDM2ProjectionModel, ProjectionConfig, projection_dummy_inputs
from audioldm2_jax.models.t5 import T5Config, T5EncoderModel, t5_dummy_inputs
from audioldm2_jax.models.unet import AudioLDM2UNet, UNetConfig, unet_dummy_inputs
from audioldm2_jax.models.vae import AutoencoderKL, VAEConfig
from audioldm2_jax.models.vits_text import VitsTextConfig, VitsTextEncoder
from audioldm2_jax.models.vocoder import HifiGanVocoder, VocoderConfig

PIPELINE_SUBFOLDERS = {"unet": "unet", "vae": "vae", "vocoder": "vocoder", "gpt2": "language_model",
                       "t5": "text_encoder_2", "clap": "text_encoder", "projection": "projection_model",
                       "vits": "text_encoder_2"}
PARAMS_FILE = "params.safetensors"
META_FILE = "component.json"


class ClapTextEncoder(nn.Module):
    """CLAP's text tower with its projection (the part of ``ClapModel`` AudioLDM 2 uses):
    ``input_ids [B, L]``, ``attention_mask [B, L]`` -> L2-normalised embeddings ``[B, P]``.

    Parameters ``{"text_model", "text_projection"}`` are the same subtrees as in ``ClapModel``."""

    config: ClapConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.text_model = ClapTextModel(self.config.text, **kw)
        self.text_projection = ClapProjection(self.config.text.projection_dim, self.config.text.projection_hidden_act,
                                              **kw)

    def __call__(self, input_ids, attention_mask=None):
        _, pooled = self.text_model(input_ids, attention_mask)
        return l2_normalize(self.text_projection(pooled))


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    config_class: type
    build: Callable[..., nn.Module]  # (config, dtype=, param_dtype=) -> module
    init: Callable[[nn.Module, jax.Array], Any]  # (module, rng) -> boxed params (the "params" collection)


def _unet_init(model, rng):
    return model.init(rng, *unet_dummy_inputs(model.config))["params"]


def _vae_init(model, rng):
    f = model.config.downsample_factor
    x = jnp.zeros((1, 4 * f, 4 * f, model.config.in_channels), jnp.float32)
    return model.init(rng, x)["params"]


def _vocoder_init(model, rng):
    return model.init(rng, jnp.zeros((1, 4, model.config.model_in_dim), jnp.float32))["params"]


def _mae_init(model, rng):
    c = model.config
    fbank = jnp.zeros((1, c.input_frames, c.mel_bins), jnp.float32)
    return model.init({"params": rng}, fbank, jnp.zeros((1, c.num_patches), jnp.float32))["params"]


def _gpt2_init(model, rng):
    return model.init(rng, *gpt2_dummy_inputs(model.config))["params"]


def _t5_init(model, rng):
    return model.init(rng, *t5_dummy_inputs())["params"]


def _clap_init(model, rng):
    ids = jnp.full((1, 4), 3, jnp.int32)
    return model.init(rng, ids, jnp.ones((1, 4), jnp.int32))["params"]


def _projection_init(model, rng):
    return model.init(rng, *projection_dummy_inputs(model.config))["params"]


def _vits_init(model, rng):
    ids = jnp.ones((1, 4), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids))["params"]


COMPONENTS: dict[str, Component] = {
    "unet": Component("unet", UNetConfig, AudioLDM2UNet, _unet_init),
    "vae": Component("vae", VAEConfig, AutoencoderKL, _vae_init),
    "vocoder": Component("vocoder", VocoderConfig, HifiGanVocoder, _vocoder_init),
    # The trainable AudioMAE is the masked autoencoder ({"encoder", "decoder"}); frozen uses read the encoder.
    "audiomae": Component("audiomae", AudioMAEConfig, MaskedAutoencoder, _mae_init),
    "gpt2": Component("gpt2", GPT2Config, GPT2Model, _gpt2_init),
    "t5": Component("t5", T5Config, T5EncoderModel, _t5_init),
    "clap": Component("clap", ClapConfig, ClapTextEncoder, _clap_init),
    "projection": Component("projection", ProjectionConfig, AudioLDM2ProjectionModel, _projection_init),
    # The speech models' second text encoder: ``(input_ids, attention_mask)`` -> ``VitsTextEncoderOutput`` (the
    # stages read ``last_hidden_state``, as the pipeline does).
    "vits": Component("vits", VitsTextConfig, VitsTextEncoder, _vits_init),
}


def build(name: str, config, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.Module:
    return COMPONENTS[name].build(config, dtype=dtype, param_dtype=param_dtype)


def init_fn(name: str, config) -> Callable[[jax.Array], Any]:
    """``rng -> boxed params`` of a randomly initialised component (float32 parameters)."""
    component = COMPONENTS[name]
    model = component.build(config)
    return lambda rng: component.init(model, rng)


def mae_encoder(config: AudioMAEConfig, dtype=jnp.float32) -> AudioMAEEncoder:
    return AudioMAEEncoder(config, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = np.asarray(jax.device_get(value))
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _config_to_json(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _config_from_json(cls, d: dict):
    def tuples(v):
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    if cls is ClapConfig:
        from audioldm2_jax.models.clap import ClapAudioConfig, ClapTextConfig

        return ClapConfig(text=ClapTextConfig(**{k: tuples(v) for k, v in d["text"].items()}),
                          audio=ClapAudioConfig(**{k: tuples(v) for k, v in d["audio"].items()}),
                          projection_dim=d["projection_dim"], logit_scale_init_value=d["logit_scale_init_value"])
    return cls(**{k: tuples(v) for k, v in d.items()})


def save_component(directory: str | os.PathLike, name: str, config, params, extra: dict | None = None) -> Path:
    """Writes ``directory/component.json`` (name, config, extra metadata) and ``params.safetensors`` (float32,
    keys are ``/``-joined parameter paths). Only process 0 writes; every process must call it."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    flat = flatten(params)
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"component": name, "config": _config_to_json(config), "extra": dict(extra or {})}
        tmp = directory / (PARAMS_FILE + ".tmp")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}, str(tmp))
        os.replace(tmp, directory / PARAMS_FILE)
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def read_component_meta(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text())


def load_component(name: str, source: str | os.PathLike) -> tuple[Any, dict, dict]:
    """``(config, params, extra)`` of component ``name`` from ``source`` (see the module docstring).

    ``params`` are host NumPy arrays; ``extra`` holds metadata a stage saved with it (e.g. ``latent_scale``).
    """
    path = _trainer_folder(name, source)
    if (path / META_FILE).is_file():
        meta = _checked_meta(name, path)
        from safetensors.numpy import load_file

        config = _config_from_json(COMPONENTS[name].config_class, meta["config"])
        return config, unflatten(load_file(str(path / PARAMS_FILE))), meta.get("extra", {})
    return _load_pretrained(name, path)


def load_component_config(name: str, source: str | os.PathLike):
    """The architecture config of component ``name`` at ``source`` (as :func:`load_component` finds it) without
    reading its weights: stages that must know a shape before choosing what else to load (the LDM stage builds
    T5 only for a UNet with a T5 stream) call this first."""
    path = _trainer_folder(name, source)
    if (path / META_FILE).is_file():
        return _config_from_json(COMPONENTS[name].config_class, _checked_meta(name, path)["config"])
    readers = {"unet": lambda d: UNetConfig.from_diffusers(d), "vits": lambda d: VitsTextConfig.from_transformers(d),
               "projection": lambda d: ProjectionConfig.from_diffusers(d)}
    sub = PIPELINE_SUBFOLDERS.get(name)
    if name in readers:
        folder = path / sub if (path / sub / "config.json").is_file() else path
        if (folder / "config.json").is_file():
            return readers[name](json.loads((folder / "config.json").read_text()))
    return load_component(name, source)[0]


def _trainer_folder(name: str, source: str | os.PathLike) -> Path:
    """``source`` narrowed to the component's own folder where it is a workdir or an export."""
    path = Path(source)
    if (path / "export").is_dir():
        path = path / "export"
    if (path / name / META_FILE).is_file():
        path = path / name
    return path


def _checked_meta(name: str, path: Path) -> dict:
    meta = read_component_meta(path)
    if meta["component"] != name:
        raise ValueError(f"{path}: holds component {meta['component']!r}, expected {name!r}")
    return meta


def _load_pretrained(name: str, path: Path) -> tuple[Any, dict, dict]:
    if name == "audiomae":
        from audioldm2_jax.convert.audiomae import load_audiomae

        config, params = load_audiomae(path)
        return config, params, {}
    sub = PIPELINE_SUBFOLDERS[name]
    if (path / sub / "config.json").is_file():
        path = path / sub
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {name} weights at {path}: expected a component saved by the trainer "
                                f"({META_FILE}), a training workdir (export/{name}), or a diffusers / transformers "
                                f"folder (config.json, or {sub}/config.json)")
    extra: dict = {}
    if name == "unet":
        from audioldm2_jax.convert.unet import load_unet as load
    elif name == "vae":
        from audioldm2_jax.convert.vae import load_vae as load
    elif name == "vocoder":
        from audioldm2_jax.convert.vocoder import load_vocoder as load
    elif name == "gpt2":
        from audioldm2_jax.convert.gpt2 import load_gpt2 as load
    elif name == "t5":
        from audioldm2_jax.convert.t5 import load_t5 as load
    elif name == "projection":
        from audioldm2_jax.convert.projection import load_projection as load
    elif name == "vits":
        from audioldm2_jax.convert.vits_text import load_vits_text as load
    elif name == "clap":
        from audioldm2_jax.convert.clap import load_clap

        config, params = load_clap(path)
        params = params.get("params", params)
        return config, {"text_model": params["text_model"], "text_projection": params["text_projection"]}, extra
    else:
        raise KeyError(name)
    config, params = load(path)
    params = params.get("params", params) if isinstance(params, dict) else params
    if name == "vae":
        extra["latent_scale"] = float(config.scaling_factor)
    return config, jax.tree.map(np.asarray, params), extra


def check_params_match(name: str, config, params) -> None:
    """Raises a ValueError naming every parameter whose path or shape differs from what ``config`` builds."""
    expected = jax.eval_shape(init_fn(name, config), jax.random.key(0))
    expected = flatten_shapes(nn.unbox(expected))
    got = flatten_shapes(params)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))
    if missing or unexpected or misshaped:
        raise ValueError(f"{name} parameters do not fit its config: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}, misshaped {[(k, got[k], expected[k]) for k in misshaped[:8]]}")


def flatten_shapes(tree, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten_shapes(value, name + "/"))
        else:
            out[name] = tuple(value.shape)
    return out
