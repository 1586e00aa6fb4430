"""Grain random-access sources of audio records: manifests, TFDS datasets, ArrayRecord shards.

Every source has ``__len__`` and ``__getitem__(i) -> record`` (the record layout is in
:mod:`audioldm2_jax.data.transforms`) and never raises on a bad clip: a file that is missing, empty, truncated or
in a format nothing can decode comes back as a record with an ``error`` (and the path), which the pipeline counts
and skips. Sources open their files lazily and drop open handles when pickled, so that grain's worker processes
can receive them.

Manifests (CSV / TSV / pipe-separated, JSONL, or JSON with a ``data`` list) in the shapes of the common
text-audio corpora:

* AudioCaps (``audiocap_id, youtube_id, start_time, caption``; one row per caption: rows naming the same file
  are merged) -- pass ``audio_template="{youtube_id}.wav"`` when the table has no path column;
* MusicCaps (``ytid, ..., aspect_list, caption``; ``aspect_list`` becomes the labels) -- ``"{ytid}.wav"``;
* WavCaps JSON (``{"data": [{"id", "caption", "audio" | "file_name", ...}]}``);
* LJSpeech ``metadata.csv`` (``id|transcription|normalised transcription``, no header; audio in ``wavs/``).

Columns are recognised by name (:data:`AUDIO_COLUMNS`, :data:`CAPTION_COLUMNS`, ...); ``columns=`` overrides.
"""

from __future__ import annotations

import ast
import csv
import glob
import io
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from audioldm2_jax.audio import io as audio_io

log = logging.getLogger(__name__)

AUDIO_COLUMNS = ("audio", "path", "audio_path", "audio_filepath", "filepath", "file_path", "file", "filename",
                 "file_name", "wav", "wav_path", "location")
CAPTION_COLUMNS = ("captions", "caption", "text_caption", "description")
TRANSCRIPTION_COLUMNS = ("transcription", "transcript", "normalized_text", "text", "sentence")
LABEL_COLUMNS = ("labels", "label", "tags", "aspect_list", "genre", "category", "class")
_NUMBERED_CAPTION = re.compile(r"^caption_?\d+$")


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    captions: tuple[str, ...] = ()
    transcription: str = ""
    labels: tuple[str, ...] = ()


def _as_text_list(value: Any, split_separators: bool) -> list[str]:
    """A cell as a list of strings: JSON / Python lists, or plain text (split on ';' / ',' for label cells)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return []
    if text[0] == "[" and text[-1] == "]":
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, (list, tuple)):
                return [str(v).strip() for v in parsed if str(v).strip()]
    if split_separators:
        separator = ";" if ";" in text else ","
        return [part.strip() for part in text.split(separator) if part.strip()]
    return [text]


def _pick(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {name.lower(): name for name in names}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def _read_rows(manifest: str, delimiter: str | None) -> tuple[list[dict], bool]:
    """Rows as dicts, and whether the file is a header-less LJSpeech-style table."""
    suffix = os.path.splitext(manifest)[1].lower()
    with open(manifest, encoding="utf-8") as handle:
        text = handle.read()
    if suffix in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return rows, False
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("data", data.get("rows", data.get("items")))
        if not isinstance(data, list):
            raise ValueError(f"manifest {manifest!r}: a JSON manifest is a list of rows or {{\"data\": [...]}}")
        return data, False
    if delimiter is None:
        first_line = text.split("\n", 1)[0]
        delimiter = "\t" if suffix == ".tsv" or "\t" in first_line else "|" if "|" in first_line else ","
    first_fields = [f.strip().lower() for f in next(csv.reader([text.split("\n", 1)[0]], delimiter=delimiter), [])]
    known = set(AUDIO_COLUMNS + CAPTION_COLUMNS + TRANSCRIPTION_COLUMNS + LABEL_COLUMNS)
    if delimiter == "|" and not known.intersection(first_fields):
        # LJSpeech metadata.csv: id|transcription|normalised transcription, no header, quotes are text
        rows = []
        for line in text.splitlines():
            if not line.strip():
                continue
            fields = line.split("|")
            rows.append({"id": fields[0], "transcription": fields[-1] if len(fields) > 1 else ""})
        return rows, True
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return [dict(row) for row in reader], False


def read_manifest(manifest, audio_root: str | None = None, audio_template: str | None = None,
                  columns: Mapping[str, str] | None = None, delimiter: str | None = None) -> list[ManifestEntry]:
    """Parses a manifest into entries (rows naming the same audio file merged, their captions pooled).

    Args:
      manifest: CSV / TSV / pipe table with a header, JSONL, JSON, or LJSpeech's ``metadata.csv``.
      audio_root: directory relative paths are resolved against (default: the manifest's directory; for an
        LJSpeech table, its ``wavs/`` folder).
      audio_template: builds the path from the row when it has no path column, e.g. ``"{youtube_id}.wav"``.
      columns: overrides, e.g. ``{"audio": "clip", "caption": "desc", "labels": "tags"}``.
    Raises:
      ValueError: no such file, no audio column / template, or not a single usable row.
    """
    manifest = os.fspath(manifest)
    if not os.path.isfile(manifest):
        raise ValueError(f"manifest {manifest!r} does not exist")
    rows, ljspeech = _read_rows(manifest, delimiter)
    if not rows:
        raise ValueError(f"manifest {manifest!r} has no rows: an empty dataset")
    base = audio_root if audio_root is not None else os.path.dirname(os.path.abspath(manifest))
    if ljspeech:
        audio_template = audio_template or "{id}.wav"
        if audio_root is None and os.path.isdir(os.path.join(base, "wavs")):
            base = os.path.join(base, "wavs")
    names = list(rows[0].keys())
    columns = dict(columns or {})
    audio_col = columns.get("audio") or _pick(names, AUDIO_COLUMNS)
    if audio_col is None and audio_template is None:
        raise ValueError(f"manifest {manifest!r}: no audio path column (looked for {AUDIO_COLUMNS}, found "
                         f"{names}); name one with columns={{'audio': ...}} or pass audio_template")
    caption_cols = [columns["caption"]] if "caption" in columns else (
        [c for c in names if c.lower() in CAPTION_COLUMNS] + [c for c in names if _NUMBERED_CAPTION.match(c.lower())])
    transcription_col = columns.get("transcription") or _pick(names, TRANSCRIPTION_COLUMNS)
    label_col = columns.get("labels") or _pick(names, LABEL_COLUMNS)

    merged: dict[str, dict] = {}
    malformed = 0
    for row in rows:
        if not isinstance(row, dict):
            malformed += 1
            continue
        try:
            relative = str(row.get(audio_col) or "").strip() if audio_col else audio_template.format(**row)
        except (KeyError, IndexError, ValueError):
            relative = ""
        if not relative:
            malformed += 1
            continue
        path = relative if os.path.isabs(relative) or "://" in relative else os.path.join(base, relative)
        entry = merged.setdefault(path, {"captions": [], "transcription": "", "labels": []})
        for col in caption_cols:
            for caption in _as_text_list(row.get(col), split_separators=False):
                if caption not in entry["captions"]:
                    entry["captions"].append(caption)
        if transcription_col and not entry["transcription"]:
            entry["transcription"] = str(row.get(transcription_col) or "").strip()
        if label_col:
            for label in _as_text_list(row.get(label_col), split_separators=True):
                if label not in entry["labels"]:
                    entry["labels"].append(label)
    if malformed:
        log.warning("manifest %s: %d rows without an audio path were left out", manifest, malformed)
    if not merged:
        raise ValueError(f"manifest {manifest!r}: none of its {len(rows)} rows names an audio file")
    return [ManifestEntry(path, tuple(e["captions"]), e["transcription"], tuple(e["labels"]))
            for path, e in merged.items()]


class ManifestSource:
    """Audio files listed in a manifest, decoded with soundfile (librosa / audioread fallback)."""

    def __init__(self, manifest, audio_root: str | None = None, audio_template: str | None = None,
                 columns: Mapping[str, str] | None = None, delimiter: str | None = None):
        self.manifest = os.fspath(manifest)
        self.entries = read_manifest(manifest, audio_root, audio_template, columns, delimiter)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[int(index)]
        record = {"path": entry.path, "captions": list(entry.captions), "transcription": entry.transcription,
                  "labels": list(entry.labels), "waveform": None, "sample_rate": 0}
        try:
            record["waveform"], record["sample_rate"] = audio_io.read_audio(entry.path)
        except audio_io.AudioDecodeError as error:
            record["error"] = error.reason
        except Exception as error:  # noqa: BLE001 -- a reader bug on one file must not stop the run
            record["error"] = f"{type(error).__name__}: {error}"
        return record

    def clip_identity(self, index: int) -> str:
        """The clip's audio path: what keeps it on its side of a held-out split (:mod:`audioldm2_jax.data.split`)
        when the manifest is reordered or grows."""
        return self.entries[int(index)].path

    def __repr__(self) -> str:
        return f"ManifestSource({self.manifest!r}, {len(self)} clips)"


# ---- TFDS ------------------------------------------------------------------------------------------------------

# How the features of known TFDS datasets map onto audio / caption / transcription / labels.
TFDS_PRESETS: dict[str, dict[str, Any]] = {
    "ljspeech": {"audio": "speech", "transcription": "text_normalized"},
    "nsynth": {"audio": "audio", "labels": ("instrument/source", "instrument/family")},
    "gtzan": {"audio": "audio", "labels": ("label",)},
    "gtzan_music_speech": {"audio": "audio", "labels": ("label",)},
    "speech_commands": {"audio": "audio", "labels": ("label",)},
}


def _get_path(tree: Any, path: str) -> Any:
    for part in path.split("/"):
        if isinstance(tree, Mapping) and part in tree:
            tree = tree[part]
        elif isinstance(tree, Mapping) and path in tree:  # a flat key containing "/"
            return tree[path]
        else:
            raise KeyError(path)
    return tree


def _feature_at(features: Any, path: str) -> Any:
    try:
        return features[path]
    except (KeyError, TypeError):
        node = features
        for part in path.split("/"):
            node = node[part]
        return node


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _to_float_audio(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32)


class _LazyRandomAccess:
    """A random-access reader opened on first use in each process: a worker receives the source pickled without its
    open reader (``__getstate__``) and opens its own. Subclasses implement ``_connect()`` and call
    ``_open_and_count()`` at the end of ``__init__``."""

    def _connect(self):
        raise NotImplementedError

    def _open_and_count(self) -> None:
        self._source = None
        self._length = len(self._open())

    def _open(self):
        if self._source is None:
            self._source = self._connect()
        return self._source

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return self._length


class TFDSSource(_LazyRandomAccess):
    """A TFDS dataset read through ``tfds.data_source`` (random access, ArrayRecord), mapped onto records.

    Args:
      name: TFDS name (``"ljspeech"``, ``"nsynth/full"``, ``"gtzan"``, or a builder registered locally).
      audio / caption / transcription: feature paths (``"instrument/family"`` for nested features); defaults
        from :data:`TFDS_PRESETS` by the name before ``/``.
      labels: feature paths whose values (ClassLabel names, strings) become labels.
      sample_rate: defaults to the Audio feature's ``sample_rate`` or the builder's ``metadata["sample_rate"]``.

    Datasets whose audio is a ``tfds.features.Audio`` feature import TensorFlow to decode it: install the
    ``tfds-audio`` extra. Datasets stored with ``tfds.features.Tensor`` audio (what a local builder can use)
    need no TensorFlow.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None, audio: str | None = None,
                 caption: str | None = None, transcription: str | None = None,
                 labels: Sequence[str] | None = None, sample_rate: int | None = None):
        import tensorflow_datasets as tfds

        preset = TFDS_PRESETS.get(name.split("/")[0].split(":")[0], {})
        self.name, self.split, self.data_dir = name, split, data_dir
        self.audio_key = audio or preset.get("audio", "audio")
        self.caption_key = caption or preset.get("caption")
        self.transcription_key = transcription or preset.get("transcription")
        self.label_keys = tuple(labels if labels is not None else preset.get("labels", ()))
        builder = tfds.builder(name, data_dir=data_dir)
        features = builder.info.features
        audio_feature = _feature_at(features, self.audio_key)
        if isinstance(audio_feature, tfds.features.Audio):
            try:
                import tensorflow  # noqa: F401
            except ImportError as error:
                raise ImportError(f"TFDS dataset {name!r} stores audio as tfds.features.Audio, which imports "
                                  "TensorFlow to decode: pip install 'audioldm2_jax[tfds-audio]'") from error
        rate = sample_rate or getattr(audio_feature, "sample_rate", None) or (
            (builder.info.metadata or {}).get("sample_rate") if builder.info.metadata is not None else None)
        if not rate:
            raise ValueError(f"TFDS dataset {name!r}: its audio feature {self.audio_key!r} has no sample rate; "
                             "pass sample_rate=")
        self.sample_rate = int(rate)
        self._label_names = {}
        for key in self.label_keys:
            feature = _feature_at(features, key)
            if isinstance(feature, tfds.features.ClassLabel) and feature.names:
                self._label_names[key] = list(feature.names)
        self._open_and_count()

    def _connect(self):
        import tensorflow_datasets as tfds

        return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)

    def __getitem__(self, index: int) -> dict:
        path = f"tfds:{self.name}/{self.split}[{int(index)}]"
        record = {"path": path, "captions": [], "transcription": "", "labels": [], "waveform": None,
                  "sample_rate": self.sample_rate}
        try:
            example = self._open()[int(index)]
            record["waveform"] = _to_float_audio(_get_path(example, self.audio_key))
            if self.caption_key:
                record["captions"] = _as_text_list(_text(_get_path(example, self.caption_key)), False)
            if self.transcription_key:
                record["transcription"] = _text(_get_path(example, self.transcription_key)).strip()
            for key in self.label_keys:
                value = _get_path(example, key)
                names = self._label_names.get(key)
                if names is not None and np.ndim(value) == 0 and not isinstance(value, (str, bytes)):
                    record["labels"].append(names[int(value)])
                else:
                    record["labels"].extend(_as_text_list(_text(value), split_separators=False))
        except Exception as error:  # noqa: BLE001 -- one bad example must not stop the run
            record["error"] = f"{type(error).__name__}: {error}"
        return record

    def __repr__(self) -> str:
        return f"TFDSSource({self.name!r}, split={self.split!r}, {len(self)} examples)"


# ---- ArrayRecord shards (written by `prepare`) -----------------------------------------------------------------

RECORD_MAGIC = b"ALDM2\x01"
RECORD_FORMAT = "audioldm2_jax.clips/v1"


def encode_clip(wave_int16: np.ndarray, sample_rate: int, captions: Sequence[str], transcription: str = "",
                labels: Sequence[str] = (), path: str = "") -> bytes:
    """One shard record: magic, little-endian uint32 header length, JSON header, int16 little-endian PCM."""
    wave_int16 = np.asarray(wave_int16)
    if wave_int16.dtype != np.int16 or wave_int16.ndim != 1:
        raise ValueError(f"encode_clip takes mono int16 samples, got {wave_int16.dtype} {wave_int16.shape}")
    header = json.dumps({"sample_rate": int(sample_rate), "num_samples": int(wave_int16.shape[0]),
                         "captions": list(captions), "transcription": transcription, "labels": list(labels),
                         "path": path}, ensure_ascii=False).encode("utf-8")
    return RECORD_MAGIC + struct.pack("<I", len(header)) + header + wave_int16.astype("<i2").tobytes()


def decode_clip(data: bytes) -> dict:
    """Inverse of :func:`encode_clip`: a record with float32 ``waveform`` in [-1, 1]."""
    if not data.startswith(RECORD_MAGIC):
        raise ValueError("not an audioldm2_jax clip record (bad magic)")
    offset = len(RECORD_MAGIC)
    (header_length,) = struct.unpack_from("<I", data, offset)
    offset += 4
    header = json.loads(data[offset:offset + header_length].decode("utf-8"))
    offset += header_length
    samples = np.frombuffer(data, dtype="<i2", offset=offset)
    if samples.shape[0] != header["num_samples"]:
        raise ValueError(f"truncated clip record: {samples.shape[0]} of {header['num_samples']} samples")
    return {"path": header.get("path", ""), "waveform": samples.astype(np.float32) / 32768.0,
            "sample_rate": header["sample_rate"], "captions": header.get("captions", []),
            "transcription": header.get("transcription", ""), "labels": header.get("labels", [])}


def shard_paths(location) -> list[str]:
    """Shard files of a prepared dataset: a directory (its ``dataset_info.json`` or ``*.array_record``), a glob,
    one file, or a list of files."""
    if isinstance(location, (list, tuple)):
        return [os.fspath(p) for p in location]
    location = os.fspath(location)
    if os.path.isdir(location):
        info_path = os.path.join(location, "dataset_info.json")
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as handle:
                info = json.load(handle)
            return [os.path.join(location, shard) for shard in info["shards"]]
        return sorted(glob.glob(os.path.join(location, "*.array_record")))
    if any(ch in location for ch in "*?["):
        return sorted(glob.glob(location))
    return [location]


class ArrayRecordSource(_LazyRandomAccess):
    """Clips in ArrayRecord shards written by ``python -m audioldm2_jax.data.prepare`` (16 kHz int16 + text)."""

    def __init__(self, location):
        self.paths = shard_paths(location)
        if not self.paths:
            raise ValueError(f"no ArrayRecord shards at {location!r}")
        missing = [p for p in self.paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"ArrayRecord shards missing: {missing[:5]}")
        self._open_and_count()

    def _connect(self):
        import grain

        return grain.sources.ArrayRecordDataSource(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            return decode_clip(self._open()[int(index)])
        except Exception as error:  # noqa: BLE001
            return {"path": f"{self.paths[0] if len(self.paths) == 1 else 'shards'}[{int(index)}]",
                    "waveform": None, "sample_rate": 0, "captions": [], "transcription": "", "labels": [],
                    "error": f"{type(error).__name__}: {error}"}

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} clips)"
