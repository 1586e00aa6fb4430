"""Exports of trained parameters.

``export_stage`` writes a stage's inference components into ``<workdir>/export/``: one folder per component
(``component.json`` + ``params.safetensors``, what :func:`audioldm2_jax.train.components.load_component` reads and
later stages use as ``init.<name>``), the tokenizers the run used, and the noise schedule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax

from audioldm2_jax.train import components as comp


def _copy_tokenizer(source: str, target: Path) -> None:
    if not source or jax.process_index() != 0:
        return
    source_path = Path(source)
    if source_path.is_dir() and source_path.resolve() != target.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source_path, target)


def scheduler_config(config) -> dict:
    """The diffusers DDIM scheduler config of the trained schedule (the published sampler settings)."""
    d = config.diffusion
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": int(d.num_train_timesteps),
            "beta_start": float(d.beta_start), "beta_end": float(d.beta_end), "beta_schedule": str(d.beta_schedule),
            "prediction_type": str(d.prediction_type), "steps_offset": 1, "set_alpha_to_one": False,
            "clip_sample": False, "timestep_spacing": "leading"}


def export_stage(trainer, state, frozen, directory: str | Path) -> Path:
    """Writes the stage's components (EMA parameters when kept) to ``directory``; returns it."""
    directory = Path(directory)
    params = jax.device_get(trainer.export_params(state))
    extras = jax.device_get(state.extras)
    for name, (cfg, tree, extra) in trainer.stage.export_components(params, frozen, extras).items():
        comp.save_component(directory / name, name, cfg, jax.device_get(tree),
                            {**extra, "stage": trainer.stage.name, "step": int(jax.device_get(state.step))})
    if jax.process_index() == 0:
        config = trainer.config
        from audioldm2_jax.train.stages.common import TOKENIZER_SUBFOLDERS, find_tokenizer

        for encoder, sub in TOKENIZER_SUBFOLDERS.items():
            try:
                _copy_tokenizer(find_tokenizer(config, encoder), directory / sub)
            except ValueError:
                pass
        (directory / "scheduler").mkdir(parents=True, exist_ok=True)
        (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(config), indent=2))
    return directory
