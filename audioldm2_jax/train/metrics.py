"""What a run reports: scalars to TensorBoard event files and a JSONL log, audio and spectrogram images, throughput
(steps/s, examples/s), TFLOP/s from the compiled step's cost analysis, and utilisation against the device's peak.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``{"step": s, "loss": ...}``) and
is what tests and scripts read; TensorBoard gets the same scalars (``tensorboard --logdir <workdir>/tensorboard``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

# Dense peak FLOP/s per device for the compute dtype (bf16 / fp32-via-TF32 tensor cores), from vendor datasheets.
# Keys are matched as substrings of ``device.device_kind`` (lower case), most specific first.
PEAK_FLOPS = (
    ("h200", {"bfloat16": 989e12, "float32": 494e12}),
    ("h100", {"bfloat16": 989e12, "float32": 494e12}),  # SXM; the PCIe card is ~25% lower
    ("a100", {"bfloat16": 312e12, "float32": 156e12}),
    ("l4", {"bfloat16": 121e12, "float32": 60e12}),
    ("a10", {"bfloat16": 125e12, "float32": 62e12}),
    ("v100", {"bfloat16": 125e12, "float32": 15.7e12}),
    ("tpu v6", {"bfloat16": 918e12, "float32": 918e12 / 4}),
    ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12 / 4}),
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12 / 4}),
    ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12 / 4}),
    ("tpu v4", {"bfloat16": 275e12, "float32": 275e12 / 4}),
    ("tpu v3", {"bfloat16": 123e12, "float32": 123e12 / 4}),
)


def peak_flops_per_device(device=None, dtype_name: str = "bfloat16") -> float | None:
    """The device's dense peak FLOP/s for ``dtype_name``, or None when unknown (CPUs)."""
    device = device or jax.devices()[0]
    kind = str(getattr(device, "device_kind", "")).lower()
    for key, peaks in PEAK_FLOPS:
        if key in kind:
            return peaks.get(dtype_name)
    return None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (partitioned) program per device, from XLA's cost analysis. On CPU the
    large attentions run as a loop over (example, head) (``layers.per_head_attention``) whose body the analysis
    counts once: there the figure is a lower bound."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


class Throughput:
    """Steps/s, examples/s, TFLOP/s and utilisation over the interval since the last ``report``."""

    def __init__(self, batch_size: int, flops_per_step_per_device: float | None, num_devices: int,
                 peak_per_device: float | None):
        self.batch_size = batch_size
        self.flops = flops_per_step_per_device
        self.num_devices = num_devices
        self.peak = peak_per_device
        self._t = time.perf_counter()
        self._steps = 0

    def tick(self, steps: int = 1) -> None:
        self._steps += steps

    def reset(self) -> None:
        self._t = time.perf_counter()
        self._steps = 0

    def report(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._t, 1e-9)
        out: dict[str, float] = {}
        if self._steps:
            steps_per_s = self._steps / elapsed
            out["perf/steps_per_s"] = steps_per_s
            out["perf/examples_per_s"] = steps_per_s * self.batch_size
            if self.flops:
                per_device = self.flops * steps_per_s
                out["perf/tflops_per_s"] = per_device * self.num_devices / 1e12
                out["perf/tflops_per_s_per_device"] = per_device / 1e12
                if self.peak:
                    out["perf/utilization"] = per_device / self.peak
        self._t, self._steps = now, 0
        return out


class MetricWriter:
    """JSONL + TensorBoard (tensorboardX) writer; a no-op on processes other than 0."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True, jsonl: bool = True):
        self.active = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._jsonl = None
        self._tb = None
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        clean = {}
        for key, value in values.items():
            value = float(np.asarray(value))
            clean[key] = value if math.isfinite(value) else str(value)
            if self._tb is not None and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
            self._jsonl.flush()

    def text(self, step: int, key: str, value: str) -> None:
        if self.active and self._tb is not None:
            self._tb.add_text(key, value, step)

    def audio(self, step: int, key: str, waveform: np.ndarray, sample_rate: int = 16000) -> None:
        if not self.active:
            return
        wave = np.clip(np.asarray(waveform, np.float32).reshape(-1), -1.0, 1.0)
        if self._tb is not None:
            self._tb.add_audio(key, wave, step, sample_rate=sample_rate)
        out = self.workdir / "samples" / f"{step:08d}_{key.replace('/', '_')}.wav"
        out.parent.mkdir(parents=True, exist_ok=True)
        import soundfile

        soundfile.write(str(out), wave, sample_rate)

    def spectrogram(self, step: int, key: str, mel: np.ndarray) -> None:
        """``mel [T, F]`` (log scale) as an image: frequency up, time right, colour-mapped."""
        if not self.active:
            return
        image = spectrogram_image(mel)
        if self._tb is not None:
            self._tb.add_image(key, image, step, dataformats="HWC")
        out = self.workdir / "samples" / f"{step:08d}_{key.replace('/', '_')}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        import matplotlib

        matplotlib.image.imsave(str(out), image)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def spectrogram_image(mel: np.ndarray) -> np.ndarray:
    """``[T, F]`` -> uint8 RGB ``[F, T, 3]`` (low frequencies at the bottom), magma colour map over the clip's
    range."""
    import matplotlib

    mel = np.asarray(mel, np.float32)
    lo, hi = float(mel.min()), float(mel.max())
    scaled = (mel - lo) / max(hi - lo, 1e-6)
    rgba = matplotlib.colormaps["magma"](scaled.T[::-1])
    return (rgba[..., :3] * 255).astype(np.uint8)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_metrics(values: Mapping[str, Any], keys=None) -> str:
    keys = keys or sorted(values)
    parts = []
    for key in keys:
        if key in values:
            value = float(np.asarray(values[key]))
            parts.append(f"{key.replace('perf/', '')}={value:.4g}")
    return " ".join(parts)
