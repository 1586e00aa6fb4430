"""PANNs ``Cnn14`` (``audioset_tagging_cnn`` / ``panns_inference``) state dict <-> ``Cnn14`` params here, and
``PannsConfig`` <-> a ``config.json`` of its fields (PANNs has no transformers class).

The published checkpoint (``Cnn14_16k_mAP=0.438.pth``, zenodo record 3987831) is a torch pickle
``{"iteration", "model", "sampler"}`` whose ``model`` entry is the state dict; :func:`load_panns` reads it without
torch. Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``conv_block3.conv2.weight`` <->
``conv_block3/conv2/kernel``, ``bn1.weight`` <-> ``bn1/scale``; Conv2d ``(out, in, kh, kw)`` <-> ``(kh, kw, in,
out)`` where ``kh`` runs over time and ``kw`` over mel bins, Linear transposed). BatchNorm's ``running_mean`` /
``running_var`` are parameters here (inference only); its ``num_batches_tracked`` counters are dropped.

The front end's matrices in the state dict (``spectrogram_extractor.stft.conv_real.weight`` / ``conv_imag.weight``,
the windowed DFT, and ``logmel_extractor.melW``, the Slaney mel filters) are not parameters: the model recomputes
them from the config (:mod:`audioldm2_jax.audio.panns_features`). They are compared with those instead, so a
checkpoint made for other front-end settings (the 8 kHz or 32 kHz models) is an error naming the mismatch rather
than silently wrong features; :func:`to_torch` writes them back for the reference.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import numpy as np

from audioldm2_jax.audio.panns_features import PannsFrontEnd, dft_kernels, mel_filters
from audioldm2_jax.convert.weights import (CheckpointError, StateDict, convert_state_dict, load_state_dict,
                                           params_to_state_dict)
from audioldm2_jax.models.panns import Cnn14, PannsConfig, dummy_waveform

ARCHITECTURE = "Cnn14"  # the config.json's ``architectures`` entry
CONV_REAL = "spectrogram_extractor.stft.conv_real.weight"
CONV_IMAG = "spectrogram_extractor.stft.conv_imag.weight"
MEL_W = "logmel_extractor.melW"
# The stored float32 matrices differ from the float64 ones computed here by their rounding (~1e-8 of their scale);
# other settings differ by percents. The bound, 1e-4 of the matrix's scale, leaves room for the librosa version that
# built a published ``melW`` while still refusing a checkpoint of another front end.
_FRONT_END_RTOL = 1e-4


def panns_param_shapes(config: PannsConfig):
    """The abstract params tree (``ShapeDtypeStruct`` leaves, logical axes boxed) of ``Cnn14(config)``."""
    return jax.eval_shape(Cnn14(config).init, jax.random.key(0), dummy_waveform(config))["params"]


def config_from_json(d: Mapping[str, Any]) -> PannsConfig:
    """From a ``config.json`` of ``PannsConfig``'s fields (the front end's fields at the top level, as the reference's
    constructor takes them); missing keys take the 16 kHz model's values."""
    architectures = d.get("architectures", [ARCHITECTURE])
    if ARCHITECTURE not in architectures:
        raise ValueError(f"PANNs config: architectures={architectures} does not name {ARCHITECTURE}")
    front_fields = {f.name for f in dataclasses.fields(PannsFrontEnd)}
    known = front_fields | {"classes_num", "architectures"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"PANNs config: unknown keys {unknown} (known: {sorted(known)})")
    front = PannsFrontEnd(**{k: d[k] for k in front_fields if k in d})
    return PannsConfig(front, int(d.get("classes_num", PannsConfig.classes_num)))


def config_to_json(config: PannsConfig) -> dict:
    """The ``config.json`` of ``config``: the reference constructor's arguments, plus ``architectures``."""
    return {"architectures": [ARCHITECTURE], **dataclasses.asdict(config.front_end),
            "classes_num": config.classes_num}


def model_state_dict(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The state dict of a loaded PANNs checkpoint: its ``model`` entry (the published files), or the mapping itself
    when it is a bare state dict. Torch tensors become NumPy arrays; non-array entries are dropped."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict (a state dict or {{'model': state_dict}}), got "
                              f"{type(checkpoint).__name__}")
    sd = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    sd = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}


def check_front_end(state_dict: Mapping[str, np.ndarray], config: PannsConfig, source: str = "checkpoint") -> None:
    """``CheckpointError`` unless the state dict's STFT kernels and mel matrix (when present) are those of
    ``config.front_end`` (max abs difference within 1e-4 of the matrix's largest entry)."""
    real, imag = dft_kernels(config.front_end)
    f = config.front_end
    settings = (f"sample_rate={f.sample_rate}, window_size={f.window_size}, mel_bins={f.mel_bins}, fmin={f.fmin}, "
                f"fmax={f.fmax}")
    for key, ours in ((CONV_REAL, real), (CONV_IMAG, imag), (MEL_W, mel_filters(f))):
        if key not in state_dict:
            continue
        stored = np.asarray(state_dict[key])
        if stored.shape != ours.shape:
            raise CheckpointError(f"{source}: {key} has shape {stored.shape}, the front end ({settings}) needs "
                                  f"{ours.shape}: the checkpoint was made for other settings; pass its PannsConfig")
        err = float(np.max(np.abs(stored.astype(np.float64) - ours)))
        if err > _FRONT_END_RTOL * float(np.max(np.abs(ours))):
            raise CheckpointError(f"{source}: {key} differs from the front end's ({settings}) by up to {err:.3g}: "
                                  "the checkpoint was made for other settings; pass its PannsConfig")


def _rename(key: str) -> str | None:
    if key in (CONV_REAL, CONV_IMAG, MEL_W) or key.endswith(".num_batches_tracked"):
        return None  # recomputed (checked by check_front_end) / a training counter
    return key


def to_flax(state_dict: Mapping[str, np.ndarray], config: PannsConfig = PannsConfig(), source: str = "panns") -> dict:
    """The reference's state dict (or a checkpoint ``{"model": state_dict}``) -> a bare params tree of
    ``Cnn14(config)``; every missing, unexpected or misshaped key and a front-end mismatch are ``CheckpointError``s
    naming ``source``."""
    sd = model_state_dict(state_dict, source)
    check_front_end(sd, config, source)
    return convert_state_dict(sd, panns_param_shapes(config), source=source, rename=_rename)


def to_torch(params, config: PannsConfig = PannsConfig()) -> StateDict:
    """A bare params tree -> the reference's full state dict (what ``Cnn14.load_state_dict`` takes, strictly): the
    inverse of :func:`to_flax`, with the front end's matrices and zero ``num_batches_tracked`` counters added."""
    state = params_to_state_dict(params, frozenset())
    real, imag = dft_kernels(config.front_end)
    state[CONV_REAL] = real.astype(np.float32)
    state[CONV_IMAG] = imag.astype(np.float32)
    state[MEL_W] = np.array(mel_filters(config.front_end))
    for key in [k for k in state if k.endswith(".running_mean")]:
        state[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return state


def load_panns(path: str | os.PathLike, config: PannsConfig = PannsConfig()) -> dict:
    """Params of ``Cnn14(config)`` (host float32 arrays) from a PANNs ``.pth`` file (the published
    ``{"model": state_dict, ...}`` or a bare state dict) or a safetensors file / folder of the same keys. A missing
    file is a ``CheckpointError`` naming it and where the 16 kHz weights are published."""
    if not os.path.exists(path):
        raise CheckpointError(f"PANNs weights {path} do not exist: download Cnn14_16k_mAP=0.438.pth from "
                              "https://zenodo.org/record/3987831")
    return to_flax(load_state_dict(path), config, source=str(path))
