"""Reading PyTorch checkpoints (safetensors, ``.bin`` / ``.pth`` pickles, sharded indexes) and turning their state
dicts into Flax parameter trees, checked key by key and shape by shape against the model's own structure.

No torch is needed: ``.bin`` / ``.pth`` zip archives are unpickled with a restricted unpickler that rebuilds
tensors as NumPy arrays.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

StateDict = dict[str, np.ndarray]

WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "pytorch_model.bin.index.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing files, or weights that do not fit the model."""


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, allow_patterns: Iterable[str] | None = None) -> Path:
    """A local directory as is, otherwise a hub id downloaded (or found in the cache) by ``huggingface_hub``."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a file; expected a diffusers-layout directory")
        return path
    text = str(path_or_hub_id)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"checkpoint directory {text} does not exist (and is not a hub id 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=list(allow_patterns) if allow_patterns else None))
    except Exception as err:  # network, auth, missing repo: keep the hub's own message
        raise CheckpointError(f"could not fetch checkpoint {text!r} from the hub: {err}") from err


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"missing {path}: every component folder needs its config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err


def find_weights(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}; found {found}")


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """A state dict from a weights file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``, ``*.index.json``) or a
    component folder. Values are float32/int NumPy arrays."""
    path = Path(path)
    if path.is_dir():
        path = find_weights(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        out: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load_state_dict(path.parent / shard))
        return out
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _load_torch_pickle(path)


def _load_safetensors(path: Path) -> StateDict:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                out[key] = _to_float32(f.get_tensor(key))
    except Exception as err:
        raise CheckpointError(f"cannot read safetensors file {path}: {err}") from err
    return out


def _to_float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else x


_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


def _load_torch_pickle(path: Path) -> StateDict:
    """Reads torch's zip serialisation (torch >= 1.6), or its legacy one, into NumPy without importing torch."""
    if not zipfile.is_zipfile(path):
        return _load_legacy_torch_pickle(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise CheckpointError(f"{path}: no data.pkl inside the archive")
        prefix = pkl[: -len("data.pkl")]

        def storage(dtype, key):
            raw = zf.read(f"{prefix}data/{key}")
            if dtype == "bfloat16":
                import ml_dtypes

                return np.frombuffer(raw, dtype=ml_dtypes.bfloat16)
            return np.frombuffer(raw, dtype=dtype)

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return _rebuild_tensor
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return lambda data, requires_grad, hooks: data
                if module == "torch" and name in _TORCH_DTYPES:
                    return _TORCH_DTYPES[name]
                if module == "collections" and name == "OrderedDict":
                    import collections

                    return collections.OrderedDict
                if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy") or module.startswith(
                        "numpy"):
                    return super().find_class(module, name)
                if module == "builtins" and name in ("set", "frozenset", "dict", "list", "tuple", "slice"):
                    return super().find_class(module, name)
                # Training state (optimizers, args namespaces) is kept as an opaque placeholder.
                return lambda *a, **k: _Opaque(module, name)

            def persistent_load(self, pid):
                _, dtype, key, _location, _numel = pid
                return storage(dtype, key)

        obj = Unpickler(zf.open(pkl)).load()
    return obj


class _Opaque:
    def __init__(self, module, name):
        self.what = f"{module}.{name}"

    def __setstate__(self, state):
        pass

    def __repr__(self):
        return f"<unloaded {self.what}>"


def _rebuild_tensor(data, offset, size, stride, *_):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(data[offset], dtype=data.dtype).astype(np.float32) if data.dtype.kind == "f" else np.array(
            data[offset])
    itemsize = data.dtype.itemsize
    arr = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=tuple(s * itemsize for s in stride))
    return _to_float32(np.array(arr))


# torch.save's format before torch 1.6 (still written with ``_use_new_zipfile_serialization=False``), the format of
# checkpoints published before mid-2020 (torchvggish's ``vggish-10086976.pth`` is from 2019): consecutive pickles
# of a magic number, the protocol version and the system info, then the object (storages as persistent ids), then
# the list of storage keys; then, in that order, each storage's bytes: an int64 element count and the elements
# (little-endian).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _LegacyStorage:
    """A storage of the legacy format: its bytes come after the object's pickle, so tensors on it are rebuilt only
    once every storage is read."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.data = None


class _LegacyTensor:
    def __init__(self, storage: _LegacyStorage, args: tuple):
        self.storage, self.args = storage, args


def _load_legacy_torch_pickle(path: Path):
    """Reads torch's legacy (non-zip) serialisation into NumPy without importing torch."""
    storages: dict[str, _LegacyStorage] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda storage, *args: _LegacyTensor(storage, args)
            if module == "torch._utils" and name == "_rebuild_parameter":
                return lambda data, requires_grad, hooks: data
            if module == "torch" and name in _TORCH_DTYPES and name != "BFloat16Storage":
                return _TORCH_DTYPES[name]
            if (module, name) == ("collections", "OrderedDict") or (module == "builtins" and name in (
                    "set", "frozenset", "dict", "list", "tuple", "slice")):
                return super().find_class(module, name)
            return lambda *a, **k: _Opaque(module, name)  # training state, source records: not tensors

        def persistent_load(self, pid):
            if pid[0] != "storage":
                return _Opaque("torch", str(pid[0]))
            _, dtype, key, _location, _numel, view = pid
            if view is not None or isinstance(dtype, str):
                raise CheckpointError(f"{path}: storage views and bfloat16 storages of the legacy torch format are not "
                                      "supported; re-save the checkpoint with a current torch.save")
            return storages.setdefault(key, _LegacyStorage(dtype))

    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:  # any bytes: not a pickle at all
            magic = None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a torch checkpoint (neither torch.save's zip format nor its legacy "
                                  "format)")
        pickle.load(f), pickle.load(f)  # protocol version, system info
        obj = Unpickler(f).load()
        for key in pickle.load(f):
            storage = storages[key]
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            raw = f.read(count * np.dtype(storage.dtype).itemsize)
            storage.data = np.frombuffer(raw, storage.dtype)
            if storage.data.shape[0] != count:
                raise CheckpointError(f"{path}: truncated (storage {key} has {storage.data.shape[0]} of {count} "
                                      "elements)")

    def rebuild(value):
        if isinstance(value, _LegacyTensor):
            return _rebuild_tensor(value.storage.data, *value.args)
        if isinstance(value, dict):
            return {k: rebuild(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(rebuild(v) for v in value)
        return value

    return rebuild(obj)


# ----------------------------------------------------------------------------------------------------------------
# State dict -> Flax tree
# ----------------------------------------------------------------------------------------------------------------


def torch_key_to_path(key: str) -> tuple[str, ...]:
    """``down_blocks.0.attentions.1.to_out.0.weight`` -> ``('down_blocks_0', 'attentions_1', 'to_out_0', 'weight')``."""
    parts: list[str] = []
    for piece in key.split("."):
        if piece.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{piece}"
        else:
            parts.append(piece)
    return tuple(parts)


def default_transform(leaf: str, value: np.ndarray) -> np.ndarray:
    """torch layout -> Flax layout for the standard layers (Linear, ConvNd, norms, embeddings)."""
    if leaf == "kernel":
        if value.ndim == 2:  # Linear (out, in) -> (in, out)
            return value.T
        if value.ndim >= 3:  # ConvNd (out, in, *k) -> (*k, in, out)
            return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping, *, source: str = "checkpoint",
                       rename: Callable[[str], str | None] | None = None,
                       transform: Callable[[tuple[str, ...], np.ndarray], np.ndarray | None] | None = None) -> dict:
    """Maps a torch state dict onto the structure of ``expected`` (a Flax params tree of arrays or
    ``ShapeDtypeStruct``, e.g. from ``jax.eval_shape(model.init, ...)``).

    ``rename(key)`` rewrites a torch key first (None drops it). Leaves named ``weight`` become whichever of
    ``kernel`` / ``scale`` / ``embedding`` the expected tree has there. ``transform(path, value)`` may return a
    converted value for special layouts (else None for the default). Every missing, unexpected and misshaped key
    is reported in one ``CheckpointError`` that names ``source``.
    """
    expected_flat = traverse_util.flatten_dict(plain_params(expected))
    out: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, misshaped = [], []
    for key, value in state_dict.items():
        new_key = rename(key) if rename else key
        if new_key is None:
            continue
        path = torch_key_to_path(new_key)
        if path[-1] in ("weight", "gamma", "beta"):
            candidates = ("kernel", "scale", "embedding") if path[-1] == "weight" else (
                ("scale",) if path[-1] == "gamma" else ("bias",))
            path = next((path[:-1] + (c,) for c in candidates if path[:-1] + (c,) in expected_flat), path)
        if path not in expected_flat:
            unexpected.append(f"{key} {tuple(value.shape)}")
            continue
        converted = transform(path, value) if transform else None
        if converted is None:
            converted = default_transform(path[-1], np.asarray(value))
        want = tuple(expected_flat[path].shape)
        if tuple(converted.shape) != want:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)} -> {tuple(converted.shape)}, model expects "
                             f"{want} at {'/'.join(path)}")
            continue
        out[path] = np.asarray(converted, dtype=np.float32 if converted.dtype.kind == "f" else converted.dtype)
    missing = [f"{'/'.join(p)} {tuple(v.shape)}" for p, v in expected_flat.items() if p not in out]
    if missing or unexpected or misshaped:
        lines = [f"{source}: weights do not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointError("\n".join(lines))
    return traverse_util.unflatten_dict(out)


def plain_params(tree):
    """Unboxed, unfrozen params tree (the ``params`` collection when given full variables)."""
    import flax.linen as nn

    tree = nn.unbox(tree)
    if hasattr(tree, "unfreeze"):
        tree = tree.unfreeze()
    if isinstance(tree, Mapping) and "params" in tree and len(tree) == 1:
        tree = tree["params"]
    return tree


def strip_prefix(prefix: str) -> Callable[[str], str | None]:
    """A ``rename`` that keeps keys under ``prefix`` (without it) and drops the rest."""
    pattern = re.compile("^" + re.escape(prefix))

    def rename(key: str) -> str | None:
        return pattern.sub("", key) if pattern.match(key) else None

    return rename


# ----------------------------------------------------------------------------------------------------------------
# Flax parameters -> torch state dict (exports in the diffusers / transformers layout)
# ----------------------------------------------------------------------------------------------------------------

# The reference versions whose config.json an export imitates: ``save_pretrained`` writes its version as
# ``_diffusers_version`` / ``transformers_version``; loaders only report it.
DIFFUSERS_VERSION = "0.42.1"
TRANSFORMERS_VERSION = "5.24.0"


def path_to_torch_key(path: tuple[str, ...], containers: frozenset[str] | set[str]) -> str:
    """The inverse of :func:`torch_key_to_path` for one model: ``('down_blocks_0', 'attentions_1', 'to_out_0',
    'kernel')`` -> ``down_blocks.0.attentions.1.to_out.0.weight`` when ``containers`` holds the torch ModuleList /
    Sequential names (``down_blocks``, ``attentions``, ``to_out``). A part such as ``linear_1`` whose stem is not a
    container keeps its underscore (the torch attribute is called that), which is why the set is needed: the forward
    map folds both spellings onto the same Flax name. ``kernel`` / ``scale`` / ``embedding`` become ``weight`` inside a
    layer; a parameter of the root module keeps its name (the vocoder's ``scale`` buffer is ``scale`` in torch too:
    Flax's layers, whose parameters have those names, are never the root)."""
    parts = []
    for part in path[:-1]:
        stem, _, index = part.rpartition("_")
        parts.append(f"{stem}.{index}" if index.isdigit() and stem in containers else part)
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") and len(path) > 1 else leaf)
    return ".".join(parts)


def default_transform_back(leaf: str, value: np.ndarray) -> np.ndarray:
    """Flax layout -> torch layout for the standard layers: the inverse of :func:`default_transform`."""
    if leaf == "kernel":
        if value.ndim == 2:  # (in, out) -> Linear (out, in)
            return value.T
        if value.ndim >= 3:  # (*k, in, out) -> ConvNd (out, in, *k)
            n = value.ndim
            return np.transpose(value, (n - 1, n - 2) + tuple(range(n - 2)))
    return value


def params_to_state_dict(params, containers: frozenset[str] | set[str], *,
                         rename: Callable[[str], str | None] | None = None,
                         transform: Callable[[tuple[str, ...], np.ndarray], np.ndarray | None] | None = None
                         ) -> StateDict:
    """A Flax params tree -> a torch state dict (float32 / int host arrays, contiguous), the inverse of
    :func:`convert_state_dict`: ``transform(path, value)`` may return the torch layout of a special leaf (else
    None for :func:`default_transform_back`); ``rename(key)`` rewrites the torch key built by
    :func:`path_to_torch_key` (None drops the leaf)."""
    out: StateDict = {}
    for path, value in traverse_util.flatten_dict(plain_params(params)).items():
        value = np.asarray(value)
        converted = transform(path, value) if transform else None
        if converted is None:
            converted = default_transform_back(path[-1], value)
        key = path_to_torch_key(path, containers)
        key = rename(key) if rename else key
        if key is None:
            continue
        converted = _to_float32(np.asarray(converted))  # bfloat16 params are saved as float32
        out[key] = np.ascontiguousarray(converted).reshape(converted.shape)  # (ascontiguousarray makes 0-d 1-d)
    return out
