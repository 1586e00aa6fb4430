"""The field's metrics during training (``eval.metrics_every_steps``): every N steps the joint stage's model (a
complete text-to-audio pipeline) generates one clip for each of the first ``eval.num_generated`` held-out captions,
and :func:`audioldm2_jax.eval.run.evaluate` scores them against those held-out clips: FAD (with ``eval.vggish``),
FD / KL / IS (with ``eval.panns``), the CLAP score (with ``eval.clap``); the metrics whose weights are not configured
are left out (the CLAP score alone when only CLAP is). Logged as ``eval/<metric>``.

Everything a person may want to listen to stays in the workdir: ``eval/reference/`` (the held-out clips, written
once, named ``heldout_<n>.wav`` like the generated clip they pair with for KL, with their captions in
``prompts.json``), ``eval/<step>/generated/`` and ``eval/<step>/metrics.json``. The model is written with the
trainer's own export (``eval/model/``, replaced each time) and read back by
:meth:`AudioLDM2Pipeline.from_pretrained`, the path every user of an export takes. The reference set's features are
cached under ``eval/cache/`` (keyed by file contents, weights and settings), so only the generated clips are
extracted again. Runs on process 0; a failure is logged and training goes on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from audioldm2_jax.audio.io import write_wav
from audioldm2_jax.eval.metrics import IS_SPLITS
from audioldm2_jax.eval.run import evaluate
from audioldm2_jax.pipeline import AudioLDM2Pipeline
from audioldm2_jax.train import export as export_lib
from audioldm2_jax.train.config import ConfigError

log = logging.getLogger(__name__)

# The metrics each configured network makes possible.
METRICS_OF = {"vggish": ("fad",), "panns": ("fd", "kl", "is"), "clap": ("clap",)}


def configured_metrics(ev) -> tuple[str, ...]:
    """The metrics of ``eval.metrics`` whose network weights are configured (``eval.vggish`` / ``panns`` / ``clap``)."""
    wanted = [m.strip().lower() for m in str(ev.metrics).split(",") if m.strip()]
    available = {m for name, ms in METRICS_OF.items() if ev[name] for m in ms}
    return tuple(m for m in wanted if m in available)


class HeldOutMetrics:
    """Generates from held-out captions and scores the clips (see the module docstring)."""

    def __init__(self, trainer, references: list[tuple[str, np.ndarray]]):
        """``references``: ``(caption, 16 kHz waveform)`` of held-out clips, in order."""
        ev = trainer.config.eval
        if trainer.stage.name != "joint":
            raise ConfigError(f"config error: eval.metrics_every_steps={int(ev.metrics_every_steps)} generates audio, "
                              f"which needs a whole text-to-audio model: the joint stage (with init.vocoder), not "
                              f"stage={trainer.stage.name!r}")
        if not trainer.config.init.vocoder:
            raise ConfigError("config error: eval.metrics_every_steps generates audio, which needs a vocoder: set "
                              "init.vocoder (the vocoder stage's export), which the joint stage carries")
        self.metrics = configured_metrics(ev)
        if not self.metrics:
            raise ConfigError(f"config error: eval.metrics_every_steps={int(ev.metrics_every_steps)}, but none of "
                              f"eval.metrics={ev.metrics!r} has its network configured: set eval.vggish (FAD), "
                              "eval.panns (FD, KL, IS) or eval.clap (CLAP score)")
        self.trainer = trainer
        self.root = trainer.workdir / "eval"
        self.references = references[:int(ev.num_generated)]
        self.names = [f"heldout_{i:04d}" for i in range(len(self.references))]
        self.prompts = {name: caption for name, (caption, _) in zip(self.names, self.references)}

    def _write_references(self) -> Path:
        folder = self.root / "reference"
        if not (folder / "prompts.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for name, (_, wave) in zip(self.names, self.references):
                write_wav(folder / f"{name}.wav", wave)
            (folder / "prompts.json").write_text(json.dumps(self.prompts, indent=2))
        return folder

    def __call__(self, state, frozen, step: int) -> dict[str, float]:
        """``state`` / ``frozen`` whole on every host (the loop gathers them). Every process takes part in the
        export; process 0 generates, scores and returns ``{metric: value}``, the others ``{}``."""
        ev = self.trainer.config.eval
        model = export_lib.export_stage(self.trainer, state, frozen, self.root / "model")
        if jax.process_index() != 0:
            return {}
        reference = self._write_references()
        pipeline = AudioLDM2Pipeline.from_pretrained(model, attention=self.trainer.attention)
        prompts = [self.prompts[name] for name in self.names]
        waves = pipeline(prompts, num_inference_steps=int(ev.inference_steps), guidance_scale=float(ev.guidance_scale),
                         seed=list(range(len(prompts))))
        generated = self.root / f"{step:08d}" / "generated"
        generated.mkdir(parents=True, exist_ok=True)
        for name, wave in zip(self.names, np.asarray(waves)):
            write_wav(generated / f"{name}.wav", wave, pipeline.sampling_rate)
        result = evaluate(generated, reference, metrics=self.metrics, vggish=ev.vggish or None,
                          panns=ev.panns or None, clap=ev.clap or None, prompts=self.prompts,
                          cache_dir=self.root / "cache", progress=False,
                          devices=list(self.trainer.mesh.local_devices),  # the run's devices, not every device
                          is_splits=min(IS_SPLITS, len(self.names)))  # IS needs a clip per split
        (generated.parent / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
        return flat_values(result["metrics"])


def flat_values(metrics: dict[str, Any]) -> dict[str, float]:
    """``evaluate``'s ``{metric: {"value": ..., ...}}`` as scalars: ``kl`` -> ``kl_softmax`` / ``kl_sigmoid``, ``is`` ->
    ``is`` (the mean) and ``is_std``, the others their value."""
    out = {}
    for name, entry in metrics.items():
        if name == "kl":
            out["kl_softmax"], out["kl_sigmoid"] = float(entry["softmax"]), float(entry["sigmoid"])
        elif name == "is":
            out["is"], out["is_std"] = float(entry["mean"]), float(entry["std"])
        else:
            out[name] = float(entry["value"])
    return out
