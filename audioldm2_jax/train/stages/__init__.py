"""Training stages: what is trained, what is frozen, and the loss of each trainable parameter group.

A stage is the model-specific half of training; :mod:`audioldm2_jax.train.loop` is the generic half (sharding,
optimizers, accumulation, checkpoints, logging). A stage declares

- ``groups``: its trainable parameter groups in update order, each ``{component: params}`` with its own
  optimizer and its own loss (GAN stages: ``("generator", "discriminator")``, updated one after the other
  within a step);
- ``frozen_components``: networks it runs but does not train (the VAE and AudioMAE of the LDM stage, ...);
- ``reads_from`` / ``carries_from``: the stage graph, ``{component: the earlier stage whose export holds it}`` for
  the components it starts from or freezes, and for those it only carries into its own export (the joint stage
  carries the vocoder, so that its export is a complete model); configs point ``init.<component>`` at those
  exports (:func:`audioldm2_jax.configs.common.link_stages`), the quickstart orders its stages by them;

and implements

- ``init_group(group, rng)`` -> boxed parameters of a randomly initialised group (traced under ``jit``);
- ``host_batch(batch)`` -> the numeric arrays the step needs (tokenised captions, cropped features), on the host;
- ``step_options(step)`` -> a hashable static value per step (the LDM's LOA pooling rate): the step is compiled
  once per distinct value;
- ``loss(group, params, frozen, extras, batch, rng, step, options)`` -> ``(scalar loss, {name: scalar})``;
- optionally ``initial_extras(frozen, batch)`` (values computed from the first batch of a fresh run, kept in the
  train state: the latent scale) and ``samples(...)`` (audio and spectrograms for the logs).

Weights: every component named in the config's ``init`` section is loaded on the host when the stage is built
(its architecture config replaces ``config.model.<name>``); the others start from random initialisation.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from audioldm2_jax import components
from audioldm2_jax.models.audiomae import init_encoder
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import held_out


class Stage:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    #: trainable groups -> the components each holds
    group_components: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: components run but not trained
    frozen_components: ClassVar[tuple[str, ...]] = ()
    #: components the stage does not run but carries into its export when the config names their weights
    passenger_components: ClassVar[tuple[str, ...]] = ("unet", "vae", "vocoder", "audiomae", "gpt2", "t5", "clap",
                                                       "projection")
    #: components taken from an earlier stage's export (starting or frozen weights) -> that stage
    reads_from: ClassVar[dict[str, str]] = {}
    #: components not run but carried from an earlier stage's export into this one's -> that stage
    carries_from: ClassVar[dict[str, str]] = {}

    def __init__(self, config, dtype=jnp.float32):
        self.config = config
        self.dtype = dtype
        self.loaded: dict[str, tuple[Any, dict, dict]] = {}
        for name in self.components():
            source = config.init.get(name, "")
            if source:
                cfg, params, extra = components.load(name, source)
                self.loaded[name] = (cfg, params, extra)
                config_lib.set_model_config(config, name, cfg)
        self.model_configs = {name: config_lib.model_config(config, name) for name in self.components()}

    # ---- declarations ----------------------------------------------------------------------------------------

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.group_components)

    def components(self) -> tuple[str, ...]:
        trained = tuple(c for cs in self.group_components.values() for c in cs if c in components.COMPONENTS)
        return trained + tuple(self.frozen_components)

    # ---- parameters ------------------------------------------------------------------------------------------

    def init_component(self, name: str, rng: jax.Array):
        """Boxed random parameters of one trainable component (override for non-standard components)."""
        return components.init_fn(name, self.model_configs[name])(rng)

    def init_group(self, group: str, rng: jax.Array) -> dict:
        names = self.group_components[group]
        keys = jax.random.split(rng, len(names))
        return {name: self.init_component(name, key) for name, key in zip(names, keys)}

    def init_frozen_component(self, name: str, rng: jax.Array):
        """Boxed random parameters of a frozen component without weights (tests, from-scratch smoke runs). A frozen
        AudioMAE is its encoder only: the LOA extractor."""
        if name == "audiomae":
            return init_encoder(rng, self.model_configs["audiomae"])
        return components.init_fn(name, self.model_configs[name])(rng)

    def frozen_from_loaded(self, name: str, params: dict) -> dict:
        """The part of a loaded component the stage keeps frozen: AudioMAE is stored as the masked autoencoder
        (``{"encoder", "decoder"}``), of which frozen uses keep the encoder; CLAP as the whole ``ClapModel``, of which
        they keep the text tower; anything else whole."""
        if name == "audiomae" and "encoder" in params:
            return params["encoder"]
        if name == "clap":
            return {key: params[key] for key in ("text_model", "text_projection")}
        return params

    def loaded_group_params(self, group: str) -> dict[str, Any]:
        """``{component: host params}`` of a group's components that have weights to start from."""
        return {name: self.loaded[name][1] for name in self.group_components[group] if name in self.loaded}

    # ---- data ------------------------------------------------------------------------------------------------

    def host_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def step_options(self, step: int) -> Any:
        return None

    # ---- training --------------------------------------------------------------------------------------------

    def initial_extras(self, frozen, batch, rng) -> dict:
        """Run-level values of a fresh run, computed on the device from the first batch."""
        return {}

    def extras_template(self) -> dict:
        """The shapes of ``initial_extras`` (placeholders until the first batch)."""
        return {}

    def loss(self, group: str, params: dict, frozen: dict, extras: dict, batch: dict, rng: jax.Array, step,
             options) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def held_out_losses(self, params: dict, frozen: dict, extras: dict, batch: dict, key: jax.Array,
                        per_clip: int) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{name: (sum, count)}`` of the evaluation losses on a held-out batch (:mod:`audioldm2_jax.train.held_out`).
        ``batch["eval_index"]`` (int32 ``[B]``) numbers its clips in the held-out split: every random draw derives
        from ``key`` and those numbers, never from the step. ``per_clip``: ``eval.timesteps_per_clip``, the draws per
        clip of a diffusion loss. Default: each group's training loss with one fixed key per batch."""
        batch_key = jax.random.fold_in(key, batch[held_out.CLIP_INDEX][0])
        size = batch[held_out.CLIP_INDEX].shape[0]
        out = {}
        for group in self.groups:
            loss, _ = self.loss(group, params, frozen, extras, batch, batch_key, 0, self.step_options(0))
            out["loss" if len(self.groups) == 1 else f"{group}/loss"] = held_out.batch_mean(loss, size)
        return out

    # ---- outputs ---------------------------------------------------------------------------------------------

    def export_components(self, params: dict, frozen: dict, extras: dict) -> dict[str, tuple[Any, dict, dict]]:
        """``{component: (config, params, extra)}`` to save as the stage's export: the trained components (``params``
        from the EMA copy when there is one), the frozen ones as loaded, and passengers."""
        out = {}
        for group, names in self.group_components.items():
            for name in names:
                if name in components.COMPONENTS:
                    out[name] = (self.model_configs[name], params[group][name], {})
        for name, (cfg, loaded_params, extra) in self.loaded.items():
            out.setdefault(name, (cfg, loaded_params, extra))
        # Frozen networks that started from random initialisation are part of the model the stage trained against
        # (a from-scratch UNet is useless without the same random T5). The frozen AudioMAE is its encoder alone,
        # not a loadable masked autoencoder: it stays in the workdir's frozen/ folder.
        for name in self.frozen_components:
            if name not in out and name != "audiomae" and name in frozen:
                out[name] = (self.model_configs[name], frozen[name], {"random_init": True})
        for name in self.passenger_components:
            source = self.config.init.get(name, "")
            if source and name not in out:
                out[name] = components.load(name, source)
        return out

    def samples(self, params: dict, frozen: dict, extras: dict, batch: dict, rng: jax.Array) -> dict:
        """``{name: {"waveform": [N] | None, "mel": [T, F] | None}}`` for the logs (default: none)."""
        return {}


# The paper's stages in the order they train (each reads only earlier stages' exports), and the smoke-test stage.
# A stage's class is ``STAGE`` in the module of the same name.
STAGE_ORDER = ("vae", "vocoder", "audiomae", "ldm", "gpt2", "joint")
STAGES = STAGE_ORDER + ("toy",)


def stage_class(name: str) -> type:
    """The class of a built-in stage (``"ldm"``, ...) or of a custom one given as ``"package.module:Class"``."""
    if ":" in name:
        module_name, class_name = name.split(":", 1)
        return getattr(importlib.import_module(module_name), class_name)
    if name not in STAGES:
        raise ValueError(f"stage={name!r} is not one of {STAGES} (or 'package.module:Class')")
    return importlib.import_module(f"audioldm2_jax.train.stages.{name}").STAGE


def stage_inputs(name: str) -> dict[str, str]:
    """``{component: producing stage}`` of every earlier export ``name`` reads or carries (its ``reads_from`` and
    ``carries_from``)."""
    cls = stage_class(name)
    return {**cls.reads_from, **cls.carries_from}


def stage_dependencies(name: str) -> tuple[str, ...]:
    """The stages whose exports ``name`` reads or carries, in :data:`STAGE_ORDER`."""
    producers = set(stage_inputs(name).values())
    return tuple(s for s in STAGE_ORDER if s in producers)


def make_stage(config, dtype=jnp.float32) -> Stage:
    return stage_class(config.stage)(config, dtype)
