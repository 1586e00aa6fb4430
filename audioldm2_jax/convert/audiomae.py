"""AudioMAE (the original repository's ViT-B/16 masked autoencoder) <-> ``MaskedAutoencoder`` here: its state dict
<-> a bare Flax params tree ``{"encoder": ..., ["decoder": ...]}``, and ``AudioMAEConfig`` <-> a ``config.json`` of
its fields (AudioMAE has no transformers class).

Every source holds the same timm-style ViT keys (``patch_embed.proj.weight``, ``cls_token``, ``pos_embed``,
``blocks.N.attn.qkv.weight``, ``norm.weight``, ``decoder_*``, ``mask_token``), mapped by the shared rule of
:mod:`~audioldm2_jax.convert.weights` (``blocks.3.attn.qkv.weight`` <-> ``encoder/blocks_3/attn/qkv/kernel``,
``decoder_*`` / ``mask_token`` under ``decoder``, the rest under ``encoder``). The fixed sin-cos position tables
(``pos_embed``, ``decoder_pos_embed``) are not parameters here: they are compared with the tables the model
computes, which also tells which layout the checkpoint used, and written back for the reference.

Besides the component folder the registry writes and reads (``config.json`` + ``model.safetensors``), two published
pickles hold these keys; :func:`load_audiomae` reads them:

- the AudioMAE release (``pretrained.pth``): a torch pickle whose ``model`` entry is the state dict;
- an original AudioLDM 2 checkpoint: a Lightning pickle whose ``state_dict`` holds the AudioMAE of the LOA
  conditioner under a prefix such as ``cond_stage_models.0.cond_stage_models.2.audiomae.model.``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import CheckpointError, StateDict, convert_state_dict, load_state_dict, \
    params_to_state_dict
from audioldm2_jax.models.audiomae import (POS_EMBED_LAYOUTS, AudioMAEConfig, AudioMAEDecoder, AudioMAEEncoder,
                                           dummy_fbank, sincos_pos_embed)

_DECODER_KEY = re.compile(r"^(decoder_|mask_token$)")
# torch ModuleLists of the release's model (`blocks.3...`, `decoder_blocks.1...`).
CONTAINERS = frozenset({"blocks", "decoder_blocks"})
ARCHITECTURE = "AudioMAE"  # the config.json's `architectures` entry
_ANCHORS = ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight")


def find_audiomae_state_dict(checkpoint: Mapping[str, Any], prefix: str | None = None,
                             source: str = "checkpoint") -> tuple[dict[str, np.ndarray], str]:
    """The AudioMAE sub-dictionary of a loaded checkpoint (``{"model": sd}``, ``{"state_dict": sd}`` or a bare state
    dict), with its prefix removed. Without ``prefix``, the prefix is found from the keys; a checkpoint holding
    several different AudioMAEs needs ``prefix``."""
    sd = checkpoint
    for entry in ("model", "state_dict"):
        if isinstance(sd, Mapping) and entry in sd and isinstance(sd[entry], Mapping):
            sd = sd[entry]
            break
    # NumPy arrays (load_state_dict) or torch tensors (a module's state_dict()); other entries are not weights.
    sd = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    if prefix is None:
        candidates = sorted({k[: -len(_ANCHORS[0])] for k in sd if k.endswith(_ANCHORS[0])})
        candidates = [p for p in candidates if all(p + a in sd for a in _ANCHORS[1:])]
        if not candidates:
            raise CheckpointError(f"{source}: no AudioMAE weights found (looked for keys ending in "
                                  f"{', '.join(_ANCHORS)})")
        if len(candidates) > 1:  # the same frozen AudioMAE may be stored twice; that is fine
            first = {k[len(candidates[0]):]: v for k, v in sd.items() if k.startswith(candidates[0])}
            for other in candidates[1:]:
                second = {k[len(other):]: v for k, v in sd.items() if k.startswith(other)}
                same = first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
                if not same:
                    raise CheckpointError(f"{source}: several different AudioMAEs under the prefixes {candidates}; "
                                          "pass prefix= to choose one")
        prefix = candidates[0]
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f"{source}: no key starts with prefix {prefix!r}")
    return out, prefix


def _count(sd: Mapping[str, np.ndarray], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def infer_config(sd: Mapping[str, np.ndarray], **overrides) -> AudioMAEConfig:
    """An ``AudioMAEConfig`` from a state dict's shapes. Head counts are not in the shapes: the encoder's defaults
    to ``embed_dim // 64`` (ViT-B: 12), the global decoder's to 16 (the reference's), the local decoder's is read
    from ``tau``. ``overrides`` (config fields) win."""
    try:
        embed_dim, in_chans, patch, _ = sd["patch_embed.proj.weight"].shape
    except KeyError:
        raise CheckpointError("state dict has no patch_embed.proj.weight") from None
    fields: dict[str, Any] = dict(embed_dim=int(embed_dim), in_chans=int(in_chans), patch_size=int(patch),
                                  depth=_count(sd, r"^blocks\.(\d+)\."), num_heads=max(1, int(embed_dim) // 64))
    fields["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if "decoder_embed.weight" in sd:
        fields["decoder_embed_dim"] = int(sd["decoder_embed.weight"].shape[0])
        fields["decoder_depth"] = _count(sd, r"^decoder_blocks\.(\d+)\.")
        if "decoder_blocks.0.attn.tau" in sd:
            fields["decoder_type"] = "local"
            fields["decoder_num_heads"] = int(sd["decoder_blocks.0.attn.tau"].shape[0])
            fields["decoder_bias_hidden"] = int(sd["decoder_blocks.0.attn.meta_mlp.fc1.weight"].shape[0])
    fields.update(overrides)
    if "pos_embed" in sd and "input_frames" not in overrides:  # the time extent from the table's length
        bins = int(fields.get("mel_bins", AudioMAEConfig.mel_bins))
        patches = sd["pos_embed"].shape[-2] - 1
        if bins % patch == 0 and patches % (bins // patch) == 0:
            fields["input_frames"] = patches // (bins // patch) * int(patch)
    return AudioMAEConfig(**fields)


def _check_pos_embed(table: np.ndarray, config: AudioMAEConfig, dim: int, key: str, source: str) -> str:
    """The layout whose computed table matches ``table`` (``[1, 1 + L, dim]``); raises when none does."""
    table = np.asarray(table, np.float32).reshape(-1, table.shape[-1])
    errors = []
    for layout in POS_EMBED_LAYOUTS:
        ours = sincos_pos_embed(dim, config.grid, layout)
        if ours.shape != table.shape:
            raise CheckpointError(f"{source}: {key} has shape {table.shape}; the {config.grid[0]}x{config.grid[1]} "
                                  f"patch grid of a {config.input_frames}x{config.mel_bins} input needs {ours.shape}")
        err = float(np.abs(ours - table).max())
        if err <= 1e-4:
            return layout
        errors.append(f"{layout}: max abs difference {err:.3g}")
    raise CheckpointError(f"{source}: {key} is not a fixed 2-D sin-cos table of the {config.grid[0]}x{config.grid[1]} "
                          f"grid in any known layout ({'; '.join(errors)})")


def audiomae_param_shapes(config: AudioMAEConfig, with_decoder: bool) -> dict:
    fb = dummy_fbank(config)
    enc = jax.eval_shape(lambda: AudioMAEEncoder(config).init(jax.random.key(0), fb,
                                                              method=AudioMAEEncoder.features))["params"]
    shapes = {"encoder": enc}
    if with_decoder:
        latent = jax.ShapeDtypeStruct((1, 1 + config.num_patches, config.embed_dim), np.float32)
        ids = jax.ShapeDtypeStruct((1, config.num_patches), np.int32)
        shapes["decoder"] = jax.eval_shape(lambda l, i: AudioMAEDecoder(config).init(jax.random.key(0), l, i),
                                           latent, ids)["params"]
    return shapes


def convert_audiomae_state_dict(sd: Mapping[str, np.ndarray], config: AudioMAEConfig | None = None, *,
                                with_decoder: bool | None = None, source: str = "checkpoint",
                                **overrides) -> tuple[AudioMAEConfig, dict]:
    """A prefix-free AudioMAE state dict -> ``(config, {"encoder": ..., ["decoder": ...]})``.

    ``with_decoder=None`` converts the decoder when the state dict has one. ``config`` (else inferred from the
    shapes, with ``overrides``) fixes what shapes cannot tell (head counts, input size).
    """
    has_decoder = "decoder_embed.weight" in sd
    if with_decoder is None:
        with_decoder = has_decoder
    if with_decoder and not has_decoder:
        raise CheckpointError(f"{source}: with_decoder=True but the checkpoint has no decoder (decoder_embed.weight)")
    try:
        config = infer_config(sd, **overrides) if config is None else dataclasses.replace(config, **overrides)
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{source}: {err}") from err
    if "pos_embed" in sd:
        layout = _check_pos_embed(sd["pos_embed"], config, config.embed_dim, "pos_embed", source)
        config = dataclasses.replace(config, pos_embed_layout=layout)
    if with_decoder and "decoder_pos_embed" in sd:
        layout = _check_pos_embed(sd["decoder_pos_embed"], config, config.decoder_embed_dim, "decoder_pos_embed",
                                  source)
        if layout != config.pos_embed_layout:
            raise CheckpointError(f"{source}: pos_embed uses the {config.pos_embed_layout!r} layout but "
                                  f"decoder_pos_embed the {layout!r} one")

    def rename(key: str) -> str | None:
        if key in ("pos_embed", "decoder_pos_embed"):
            return None  # fixed tables, checked above
        if _DECODER_KEY.match(key):
            return "decoder." + key if with_decoder else None
        return "encoder." + key

    params = convert_state_dict(sd, audiomae_param_shapes(config, with_decoder), source=source, rename=rename)
    return config, params


def load_audiomae(checkpoint: str | os.PathLike | Mapping[str, Any], config: AudioMAEConfig | None = None, *,
                  with_decoder: bool | None = None, prefix: str | None = None,
                  **overrides) -> tuple[AudioMAEConfig, dict]:
    """An AudioMAE ``.pth`` (``model`` entry), an original AudioLDM 2 ``.pth`` (its AudioMAE sub-dictionary is found
    by key, or under ``prefix``) or an already loaded dict -> ``(config, params)`` with ``params = {"encoder": ...,
    "decoder": ...}`` (``decoder`` when converted). The config is inferred from the shapes unless given; a component
    folder with ``config.json`` is read by ``components.load("audiomae", folder)``. Errors name the file, key and
    shapes."""
    if isinstance(checkpoint, Mapping):
        source, loaded = "state dict", checkpoint
    else:
        source, loaded = str(checkpoint), load_state_dict(checkpoint)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{source}: expected a dict, found {type(loaded).__name__}")
    sd, found = find_audiomae_state_dict(loaded, prefix, source)
    if found:
        source = f"{source} [{found}*]"
    return convert_audiomae_state_dict(sd, config, with_decoder=with_decoder, source=source, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# The component interface: config.json <-> AudioMAEConfig, state dict <-> params
# ----------------------------------------------------------------------------------------------------------------


def config_to_json(config: AudioMAEConfig) -> dict:
    """AudioMAE has no transformers class: its ``config.json`` is the ``AudioMAEConfig`` fields (pairs as lists)
    with ``"architectures": ["AudioMAE"]``, read back by :func:`config_from_json`."""
    fields = {name: list(value) if isinstance(value, tuple) else value
              for name, value in dataclasses.asdict(config).items()}
    return {"architectures": [ARCHITECTURE], **fields}


def config_from_json(d: dict) -> AudioMAEConfig:
    """The inverse of :func:`config_to_json`; missing fields take ``AudioMAEConfig``'s defaults, metadata keys
    (``_name_or_path``, ...) are ignored, any other unknown key is a ``ValueError`` naming it."""
    if d.get("architectures", [ARCHITECTURE]) != [ARCHITECTURE]:
        raise ValueError(f"architectures={d['architectures']!r}: expected [{ARCHITECTURE!r}]")
    fields = AudioMAEConfig.__dataclass_fields__
    unknown = sorted(k for k in d if k not in fields and k != "architectures" and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown AudioMAE config keys {unknown}; expected some of {sorted(fields)}")
    return AudioMAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


def to_flax(state_dict: Mapping[str, np.ndarray], config: AudioMAEConfig, source: str = "AudioMAE") -> dict:
    """A release-layout state dict -> the params tree ``{"encoder": ..., ["decoder": ...]}`` for ``config`` (the
    decoder when the state dict has one). Fixed position tables that ``config`` would not compute are an error."""
    found, params = convert_audiomae_state_dict(state_dict, config, source=source)
    if found != config:
        raise CheckpointError(f"{source}: the position tables use the {found.pos_embed_layout!r} layout but the config "
                              f"says {config.pos_embed_layout!r}")
    return params


def to_torch(params, config: AudioMAEConfig) -> StateDict:
    """``{"encoder": ..., ["decoder": ...]}`` -> the release's state dict (the ``model`` entry of its ``.pth``):
    timm key names, the local decoder's temperature as ``tau``, and the fixed sin-cos tables ``pos_embed`` /
    ``decoder_pos_embed`` ``[1, 1 + T' F', dim]`` that the release stores beside the weights."""
    out = params_to_state_dict(params, CONTAINERS, rename=lambda key: key.split(".", 1)[1])
    out["pos_embed"] = sincos_pos_embed(config.embed_dim, config.grid, config.pos_embed_layout)[None]
    if "decoder" in params:
        out["decoder_pos_embed"] = sincos_pos_embed(config.decoder_embed_dim, config.grid,
                                                    config.pos_embed_layout)[None]
    return {key: np.ascontiguousarray(value, np.float32) for key, value in out.items()}
