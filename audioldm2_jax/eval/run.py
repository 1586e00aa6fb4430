"""The evaluation command's library call: a folder of generated clips against a folder of reference clips ->
FAD (VGGish frames), FD (PANNs CNN14 embeddings), paired KL (CNN14 logits, softmax and sigmoid), IS (CNN14 logits of
the generated clips) and the CLAP score (generated clips against their prompts), with the formulas of
:mod:`audioldm2_jax.eval.metrics`.

Audio is prepared as ``audioldm_eval``'s ``WaveDataset`` does it, except for the resampler:

* decoded with :func:`audioldm2_jax.audio.io.read_audio` (WAV, FLAC, and whatever else libsndfile reads);
* the first channel only, its mean subtracted (as ``audioldm_eval``);
* resampled to 16 kHz with :func:`audioldm2_jax.audio.io.resample` (soxr "HQ"; ``audioldm_eval`` uses
  ``torchaudio.functional.resample``'s default sinc-Hann, ``frechet-audio-distance`` resampy, ``fadtk`` torchaudio's
  Kaiser window: the choice moves FD by up to tens, so :data:`RESAMPLING` is written into the results);
* zero-padded at the end to at least :data:`MIN_SAMPLES` (2 s; ``audioldm_eval``'s ``pad_short_audio``), nothing
  cropped. That also covers both models' minimum lengths (VGGish 0.975 s, CNN14 0.31 s).

Both networks see each whole clip. Clips of equal length are batched (padded with zero rows to a fixed batch size,
so one compile per length; rows do not interact in either network: BatchNorm is frozen) and jitted, each batch split
over the devices (all of this process's by default; :mod:`audioldm2_jax.eval.placement`) with the weights
replicated: the batch size is rounded up to a multiple of the device count.

Features of the reference set are cached per file under ``cache_dir``, keyed by the sha256 of the file's bytes, the
sha256 of the model's weights file and the preparation settings: an edited clip, other weights or other settings
give another key, so a cache entry is never stale (``audioldm_eval`` keys its cache by the folder name only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from audioldm2_jax import components
from audioldm2_jax.audio.clap_features import ClapFeatureConfig
from audioldm2_jax.audio.io import AudioDecodeError, read_audio, resample
from audioldm2_jax.convert.panns import load_panns
from audioldm2_jax.convert.vggish import load_params as load_vggish
from audioldm2_jax.convert.weights import CheckpointError
from audioldm2_jax.eval import metrics as M
from audioldm2_jax.eval.clap_score import ClapEmbedder, clap_scores
from audioldm2_jax.eval.placement import BatchMesh
from audioldm2_jax.models.panns import panns_outputs
from audioldm2_jax.models.vggish import vggish_embeddings

METRICS = ("fad", "fd", "kl", "is", "clap")  # the default set
# fadtk's FAD-inf: optional (it needs more than ``fad_inf_min_n`` VGGish frames of generated audio, 500 by default).
KNOWN_METRICS = METRICS + ("fad_inf",)
FAD_INF_SEED = 0  # the sample-size draws: what fadtk draws after np.random.seed(0)
SAMPLE_RATE = 16000
MIN_SAMPLES = 32000  # audioldm_eval's pad_short_audio: 2 s at 16 kHz
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
RESAMPLING = "soxr HQ (audioldm2_jax.audio.io.resample; scipy resample_poly if soxr is missing)"
DEFAULT_CACHE = Path("~/.cache/audioldm2_jax/eval")
BATCH_SIZE = 8
CACHE_VERSION = 1  # bump when what a cache entry holds changes
# Where the published weights are (the error for a missing file names them).
WEIGHTS = {
    "vggish": ("vggish-10086976.pth",
               "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"),
    "panns": ("Cnn14_16k_mAP=0.438.pth", "https://zenodo.org/record/3987831"),
}
# Which network each metric needs.
_NEEDS = {"fad": "vggish", "fad_inf": "vggish", "fd": "panns", "kl": "panns", "is": "panns"}
SETTINGS = {
    "sample_rate": SAMPLE_RATE,
    "resampling": RESAMPLING,
    "channels": "first channel (as audioldm_eval)",
    "dc_offset": "mean subtracted per clip (as audioldm_eval)",
    "padding": f"zeros appended to clips shorter than {MIN_SAMPLES} samples (2 s, audioldm_eval's pad_short_audio); "
               "nothing cropped",
    "fad_features": "VGGish 128-d embeddings of every 0.96 s example, no PCA, no final ReLU",
    "fd_features": "PANNs CNN14 (16 kHz) 2048-d embedding, one per clip",
    "kl_features": "PANNs CNN14 527 AudioSet logits, paired by file name",
}


# ----------------------------------------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------------------------------------


def list_clips(directory: str | os.PathLike, what: str) -> list[Path]:
    """The audio files directly in ``directory`` (by suffix, sorted by name); a missing or empty folder is a
    ValueError naming it."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{what} folder {folder} has no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def read_mono_16k(path: str | os.PathLike) -> np.ndarray:
    """One file -> float32 ``[N]``: its first channel resampled to 16 kHz (:data:`RESAMPLING`). AudioDecodeError for
    an unreadable file or non-finite samples."""
    wave, rate = read_audio(path)
    if wave.ndim == 2:
        wave = wave[:, 0]  # the first channel, as audioldm_eval
    if not np.isfinite(wave).all():
        raise AudioDecodeError(path, "non-finite samples (NaN / inf)")
    return resample(wave, rate, SAMPLE_RATE)


def prepare_clip(path: str | os.PathLike) -> np.ndarray:
    """One file -> float32 ``[N]`` at 16 kHz, ``N >= MIN_SAMPLES`` (see the module docstring). AudioDecodeError for
    an unreadable file or non-finite samples."""
    wave = read_mono_16k(path)
    wave = wave - wave.mean()
    if wave.shape[0] < MIN_SAMPLES:
        wave = np.pad(wave, (0, MIN_SAMPLES - wave.shape[0]))
    return np.asarray(wave, np.float32)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------------


# One function per network: ``(params, waves [B, N]) -> {feature name: [B, ...]}``, compiled by BatchMesh.call.
_FEATURES: dict[str, Callable] = {
    "vggish": lambda params, x: {"vggish": vggish_embeddings(params, x)},  # [B, E, 128]
    "panns": lambda params, x: {k: v for k, v in panns_outputs(params, x).items()
                                if k in ("embedding", "logits")},  # [B, 2048], [B, 527]
}


def _batched(fn: Callable[[np.ndarray], Mapping[str, Any]], waves: Sequence[np.ndarray], batch_size: int,
             bar) -> list[dict[str, np.ndarray]]:
    """``fn`` on clips grouped by length, ``batch_size`` rows at a time (the last batch of a group padded with zero
    rows, dropped again; ``batch_size`` a multiple of the device count ``fn`` splits batches over): per clip,
    ``{name: array}`` in the input order."""
    out: list[dict | None] = [None] * len(waves)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        groups.setdefault(int(w.shape[0]), []).append(i)
    for length, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            rows = indices[start:start + batch_size]
            batch = np.zeros((batch_size, length), np.float32)
            batch[:len(rows)] = np.stack([waves[i] for i in rows])
            result = {k: np.asarray(v) for k, v in fn(batch).items()}
            for j, i in enumerate(rows):
                out[i] = {k: v[j] for k, v in result.items()}
            if bar is not None:
                bar.update(len(rows))
    return out


@dataclasses.dataclass
class Extractor:
    """One network with its weights: ``name`` ("vggish" / "panns"), ``params`` (host arrays), ``path`` and
    ``sha256`` of its file. :meth:`on` gives the function that maps a batch ``[B, N]`` to its per-clip features on a
    :class:`~audioldm2_jax.eval.placement.BatchMesh`."""

    name: str
    params: Any
    path: str
    sha256: str
    # The parameters replicated on the mesh last used, ``(mesh key, tree)``: one copy per device, kept for repeated
    # evaluations on the same devices (a trainer's), replaced when another mesh asks.
    _replica: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

    def on(self, mesh: BatchMesh) -> Callable[[np.ndarray], dict[str, jax.Array]]:
        """``batch [B, N]`` (``B`` a multiple of ``mesh.size``) -> ``{feature name: [B, ...]}`` device arrays,
        computed with the rows split over ``mesh``'s devices."""
        if self._replica is None or self._replica[0] != mesh.key:
            self._replica = None  # drop the old copies before making new ones
            self._replica = (mesh.key, mesh.replicate(self.params))
        params, fn = self._replica[1], _FEATURES[self.name]

        def features(batch: np.ndarray) -> dict[str, jax.Array]:
            return mesh.call(fn, params, mesh.split(np.asarray(batch, np.float32)))

        return features

    def describe(self) -> dict:
        return {"file": self.path, "sha256": self.sha256[:16]}


def load_extractor(name: str, path: str | os.PathLike | None) -> Extractor:
    """The ``name`` network ("vggish" / "panns") from its weights file; a missing path or file is a
    CheckpointError naming the file to download and where."""
    filename, url = WEIGHTS[name]
    if path is None or not os.path.isfile(path):
        where = "no path given" if path is None else f"{path} does not exist"
        raise CheckpointError(f"{name} weights: {where}; download {filename} from {url} and pass its path "
                              f"(--{name} PATH)")
    stat = os.stat(path)
    return _load_extractor(name, os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_extractor(name: str, path: str, size: int, mtime_ns: int) -> Extractor:
    # Keyed by size and modification time too, so a replaced file is read again; repeated evaluations (a trainer's,
    # a notebook's) do not re-read and re-hash 300 MB of PANNs weights.
    params = load_vggish(path) if name == "vggish" else load_panns(path)
    return Extractor(name, jax.device_get(params), path, file_sha256(path))


# ----------------------------------------------------------------------------------------------------------------
# A set of clips and its features
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClipSet:
    """The readable clips of one folder: ``paths`` and their per-model features (``features[model][i]``, a dict of
    arrays per clip); ``skipped``: ``(file name, reason)`` of every unreadable file; ``found``: audio files
    listed."""

    folder: str
    paths: list[Path]
    features: dict[str, list[dict[str, np.ndarray]]]
    skipped: list[tuple[str, str]]
    found: int

    def stack(self, model: str, key: str) -> np.ndarray:
        return np.stack([f[key] for f in self.features[model]])

    def counts(self) -> dict:
        return {"found": self.found, "used": len(self.paths), "skipped": len(self.skipped),
                "skipped_files": [{"file": n, "reason": r} for n, r in self.skipped]}


def _cache_key(file_hash: str, extractor: Extractor) -> str:
    settings = json.dumps({"version": CACHE_VERSION, "model": extractor.name, "weights": extractor.sha256,
                           "settings": SETTINGS, "batch_size_independent": True}, sort_keys=True)
    return hashlib.sha256((file_hash + settings).encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):  # absent, or a half-written / corrupt entry: recompute it
        return None


def _write_cache(path: Path, features: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **features)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the whole new one


def extract_set(directory: str | os.PathLike, extractors: Sequence[Extractor], what: str,
                cache_dir: str | os.PathLike | None = None, batch_size: int = BATCH_SIZE,
                progress: bool = True, mesh: BatchMesh | None = None) -> ClipSet:
    """Features of every readable clip of ``directory`` under each extractor; with ``cache_dir``, features are
    read from / written to the cache (see the module docstring), and a clip whose features are all cached is not
    even decoded. An unreadable file is skipped and recorded; no readable clip at all is a ValueError.
    ``mesh``: the devices each batch is split over (default: every local device); ``batch_size`` is rounded up to a
    multiple of their count."""
    mesh = mesh or BatchMesh()
    rows = mesh.rows(batch_size)
    files = list_clips(directory, what)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    keys: list[dict[str, Path]] = []
    cached: list[dict[str, dict]] = []
    for path in files:
        k, c = {}, {}
        if cache is not None:
            digest = file_sha256(path)
            for ex in extractors:
                k[ex.name] = cache / ex.name / f"{_cache_key(digest, ex)}.npz"
                hit = _read_cache(k[ex.name])
                if hit is not None:
                    c[ex.name] = hit
        keys.append(k)
        cached.append(c)

    paths, waves, skipped, kept = [], {}, [], []
    for i, path in enumerate(tqdm(files, desc=f"read {what}", unit="clip", disable=not progress)):
        if len(cached[i]) == len(extractors):
            paths.append(path)
            kept.append(i)
            continue
        try:
            waves[i] = prepare_clip(path)
        except AudioDecodeError as err:
            skipped.append((path.name, err.reason))
            continue
        paths.append(path)
        kept.append(i)
    if not paths:
        raise ValueError(f"{what} folder {directory}: none of its {len(files)} audio files could be read "
                         f"(e.g. {skipped[0][0]}: {skipped[0][1]})")

    features: dict[str, list[dict]] = {}
    for ex in extractors:
        todo = [i for i in kept if ex.name not in cached[i]]
        computed: dict[int, dict] = {}
        if todo:
            bar = tqdm(total=len(todo), desc=f"{ex.name} {what}", unit="clip", disable=not progress)
            for i, f in zip(todo, _batched(ex.on(mesh), [waves[i] for i in todo], rows, bar)):
                computed[i] = f
                if cache is not None:
                    _write_cache(keys[i][ex.name], f)
            bar.close()
        features[ex.name] = [cached[i][ex.name] if ex.name in cached[i] else computed[i] for i in kept]
    return ClipSet(os.fspath(directory), paths, features, skipped, len(files))


# ----------------------------------------------------------------------------------------------------------------
# Prompts and CLAP
# ----------------------------------------------------------------------------------------------------------------


def read_prompts(paths: Sequence[Path], prompts: str | os.PathLike | Mapping[str, str] | None) -> list[str]:
    """One prompt per clip: from ``prompts`` (a mapping or a JSON file ``{name: prompt}``, ``name`` the file name
    or its stem), else from each clip's ``NAME.json`` beside it (``sample.py``'s output, key ``"prompt"``). A clip
    without a prompt is a ValueError naming the clips."""
    table: Mapping[str, str] | None = None
    if prompts is not None:
        if isinstance(prompts, Mapping):
            table = prompts
        else:
            table = json.loads(Path(prompts).read_text())
            if not isinstance(table, dict):
                raise ValueError(f"prompts file {prompts}: expected a JSON object {{name: prompt}}")
    out, missing = [], []
    for path in paths:
        text = None
        if table is not None:
            text = table.get(path.name, table.get(path.stem))
        else:
            side = path.with_suffix(".json")
            if side.is_file():
                text = json.loads(side.read_text()).get("prompt")
        if not isinstance(text, str):
            missing.append(path.name)
        else:
            out.append(text)
    if missing:
        source = f"the prompts file {prompts}" if prompts is not None and not isinstance(prompts, Mapping) else (
            "the prompts given" if prompts is not None else "NAME.json files with a \"prompt\" key beside the clips")
        raise ValueError(f"CLAP score: no prompt in {source} for {len(missing)} clip(s), e.g. "
                         f"{', '.join(missing[:5])}; pass --prompts JSON ({{name: prompt}})")
    return out


def load_clap(checkpoint: str | os.PathLike, devices: int | Sequence[jax.Device] | BatchMesh | None = None):
    """A :class:`~audioldm2_jax.eval.clap_score.ClapEmbedder` from any transformers-layout CLAP folder or pipeline
    folder: weights through ``components.load("clap", ...)``, the tokenizer from ``tokenizer/`` beside the weights'
    folder (or in it), the feature extractor's ``preprocessor_config.json`` likewise (AudioLDM 2's defaults
    otherwise); batches split over ``devices`` (default: every local device)."""
    import transformers  # deferred: heavy, and needed only for the CLAP score's tokenizer

    config, params, _ = components.load("clap", checkpoint)
    folder = components.component_folder("clap", checkpoint)
    tok_dirs = [d for d in (folder.parent / "tokenizer", folder) if (d / "tokenizer_config.json").is_file()]
    if not tok_dirs:
        raise CheckpointError(f"CLAP checkpoint {checkpoint}: no tokenizer (tokenizer_config.json) in "
                              f"{folder.parent / 'tokenizer'} or {folder}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dirs[0]))
    features = None
    for d in (folder.parent / "feature_extractor", folder):
        if (d / "preprocessor_config.json").is_file():
            features = ClapFeatureConfig.from_preprocessor_config(
                json.loads((d / "preprocessor_config.json").read_text()))
            break
    return ClapEmbedder(config, {"params": params}, tokenizer, features, devices=devices)


# ----------------------------------------------------------------------------------------------------------------
# The library call
# ----------------------------------------------------------------------------------------------------------------


def _frechet(gen: np.ndarray, ref: np.ndarray) -> dict:
    r = M.frechet_distance(gen, ref)
    return {"value": r.value, "value_eig": r.value_eig, "eps_retry": r.eps_retry}


def _check_fad_inf(frames: int, clips: int, steps: int, min_n: int) -> None:
    """FAD-inf fits a line through FADs of samples of ``min_n`` .. ``frames`` generated frames: it needs more
    frames than ``min_n`` (fadtk would silently fit sizes that shrink from ``min_n`` to ``frames``, or a vertical
    line when they are equal) and at least 2 sizes."""
    if steps < 2:
        raise ValueError(f"FAD-inf: fad_inf_steps={steps}; the fit needs at least 2 sample sizes")
    if min_n < 2:
        raise ValueError(f"FAD-inf: fad_inf_min_n={min_n}; a covariance needs at least 2 frames")
    if frames <= min_n:
        raise ValueError(f"FAD-inf needs more than fad_inf_min_n={min_n} VGGish frames of generated audio (one per "
                         f"0.96 s of each clip; its smallest sample size), but the {clips} generated clip(s) give "
                         f"{frames}: generate more clips (about {(min_n + 1 - frames) * 0.96:.0f} s more audio) or "
                         f"lower fad_inf_min_n (--fad-inf-min-n)")


def evaluate(generated_dir: str | os.PathLike, reference_dir: str | os.PathLike,
             metrics: Sequence[str] = METRICS, vggish: str | os.PathLike | None = None,
             panns: str | os.PathLike | None = None, clap: Any = None,
             prompts: str | os.PathLike | Mapping[str, str] | None = None,
             cache_dir: str | os.PathLike | None = DEFAULT_CACHE, progress: bool = True,
             batch_size: int = BATCH_SIZE, is_splits: int = M.IS_SPLITS,
             devices: int | Sequence[jax.Device] | BatchMesh | None = None,
             fad_inf_steps: int = M.FAD_INF_STEPS, fad_inf_min_n: int = M.FAD_INF_MIN_N,
             fad_inf_seed: int = FAD_INF_SEED) -> dict:
    """Scores the clips of ``generated_dir`` against those of ``reference_dir``.

    Args:
      metrics: any of ``fad``, ``fd``, ``kl``, ``is``, ``clap`` (the default set) and ``fad_inf``.
      vggish / panns: paths of ``vggish-10086976.pth`` / ``Cnn14_16k_mAP=0.438.pth`` (needed by fad, fad_inf / fd,
        kl, is).
      clap: a CLAP checkpoint folder (pipeline or transformers layout) or a ready ``ClapEmbedder`` (which keeps its
        own devices); needed by clap.
      prompts: ``{name: prompt}`` (or a JSON file of it) for the CLAP score; default: ``NAME.json`` beside clips.
      cache_dir: where the reference set's features are cached (None: no cache).
      batch_size: clips per jitted call, rounded up to a multiple of the device count. is_splits: IS splits (10, as
        audioldm_eval).
      devices: what each batch is split over: None (every local device), a count (the first n local devices), a
        list of devices or a :class:`~audioldm2_jax.eval.placement.BatchMesh`.
      fad_inf_steps / fad_inf_min_n / fad_inf_seed: fadtk's ``score_inf`` settings (25 sample sizes from 500
        frames to all generated frames, drawn with replacement) and the seed of its draws.
    Returns:
      a JSON-ready dict: ``metrics`` (``{name: {"value": ..., ...}}``; ``kl`` has ``softmax`` / ``sigmoid``, ``is``
      ``mean`` / ``std``, ``fad_inf`` ``slope``, ``r2`` and the ``(n, FAD)`` ``points`` of the fit), ``clips``
      (found / used / skipped with names and reasons, per set), ``models`` (file and sha256 prefix), ``settings``.
    """
    metrics = [m.strip().lower() for m in metrics]
    unknown = sorted(set(metrics) - set(KNOWN_METRICS))
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown} (known: {', '.join(KNOWN_METRICS)})" if unknown else
                         "no metrics")
    if "fad_inf" in metrics:
        _check_fad_inf(fad_inf_min_n + 1, 0, fad_inf_steps, fad_inf_min_n)  # the settings, before any work
    mesh = devices if isinstance(devices, BatchMesh) else BatchMesh(devices)
    weights = {"vggish": vggish, "panns": panns}
    needed = sorted({_NEEDS[m] for m in metrics if m in _NEEDS})
    extractors = [load_extractor(name, weights[name]) for name in needed]
    embedder = None
    if "clap" in metrics:
        if clap is None:
            raise ValueError("the CLAP score needs a CLAP checkpoint (--clap PATH: a pipeline or transformers CLAP "
                             "folder)")
        embedder = load_clap(clap, mesh) if isinstance(clap, (str, os.PathLike)) else clap

    gen = (extract_set(generated_dir, extractors, "generated", None, batch_size, progress, mesh)
           if extractors else None)
    if "fad_inf" in metrics:  # before the reference set is read: too few frames is known now
        _check_fad_inf(sum(len(f["vggish"]) for f in gen.features["vggish"]), len(gen.paths), fad_inf_steps,
                       fad_inf_min_n)
    ref = (extract_set(reference_dir, extractors, "reference", cache_dir, batch_size, progress, mesh)
           if extractors else None)

    results: dict[str, dict] = {}
    if "fad" in metrics:
        g = np.concatenate([f["vggish"] for f in gen.features["vggish"]])
        r = np.concatenate([f["vggish"] for f in ref.features["vggish"]])
        results["fad"] = {**_frechet(g, r), "frames_generated": len(g), "frames_reference": len(r)}
    if "fad_inf" in metrics:
        g = np.concatenate([f["vggish"] for f in gen.features["vggish"]])
        r = np.concatenate([f["vggish"] for f in ref.features["vggish"]])
        fit = M.fad_inf(M.gaussian_stats(r), g, steps=fad_inf_steps, min_n=fad_inf_min_n, rng=fad_inf_seed)
        results["fad_inf"] = {"value": fit.score, "slope": fit.slope, "r2": fit.r2,
                              "points": [[n, fad] for n, fad in fit.points], "frames_generated": len(g),
                              "frames_reference": len(r), "steps": fad_inf_steps, "min_n": fad_inf_min_n,
                              "seed": fad_inf_seed}
    if "fd" in metrics:
        results["fd"] = _frechet(gen.stack("panns", "embedding"), ref.stack("panns", "embedding"))
    if "kl" in metrics:
        kl = M.kl_divergence(gen.stack("panns", "logits"), ref.stack("panns", "logits"), gen.paths, ref.paths)
        results["kl"] = {"softmax": kl.softmax, "sigmoid": kl.sigmoid, "pairs": kl.pairs,
                         "pairing_ratio_generated": kl.pairing.ratio_generated,
                         "pairing_ratio_reference": kl.pairing.ratio_reference}
    if "is" in metrics:
        score = M.inception_score(gen.stack("panns", "logits"), splits=is_splits)
        results["is"] = {"mean": score.mean, "std": score.std, "splits": is_splits}

    clips = {}
    if gen is not None:
        clips = {"generated": gen.counts(), "reference": ref.counts()}
    models = {ex.name: ex.describe() for ex in extractors}
    if embedder is not None:
        paths, waves, skipped = [], [], []
        files = list_clips(generated_dir, "generated")
        for path in files:
            try:
                waves.append(read_mono_16k(path))  # as read: CLAP's extractor pads / crops to its window
                paths.append(path)
            except AudioDecodeError as err:
                skipped.append((path.name, err.reason))
        if not paths:
            raise ValueError(f"generated folder {generated_dir}: none of its audio files could be read")
        texts = read_prompts(paths, prompts)
        score = clap_scores(embedder, texts, waves, SAMPLE_RATE, batch_size=embedder.mesh.rows(batch_size))
        results["clap"] = {"value": score.mean, "std": score.std, "clips": len(paths)}
        clips.setdefault("generated", {"found": len(files), "used": len(paths), "skipped": len(skipped),
                                       "skipped_files": [{"file": n, "reason": r} for n, r in skipped]})
        models["clap"] = {"file": os.fspath(clap) if isinstance(clap, (str, os.PathLike)) else type(clap).__name__}
    settings = dict(SETTINGS, batch_size=mesh.rows(batch_size), is_splits=is_splits, **mesh.describe(),
                    cache_dir=None if cache_dir is None else os.fspath(Path(cache_dir).expanduser()))
    return {"metrics": results, "clips": clips, "models": models, "settings": settings,
            "generated_dir": os.fspath(generated_dir), "reference_dir": os.fspath(reference_dir)}


# ----------------------------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------------------------


def format_table(result: Mapping) -> str:
    """The results as a plain-text table: metric, value, detail; then the clip counts and skipped files."""
    rows = []
    m = result["metrics"]
    if "fad" in m:
        rows.append(("FAD (VGGish)", m["fad"]["value"], f"{m['fad']['frames_generated']} / "
                                                        f"{m['fad']['frames_reference']} frames"))
    if "fad_inf" in m:
        f = m["fad_inf"]
        rows.append(("FAD-inf (VGGish)", f["value"], f"slope {f['slope']:.4g}, r2 {f['r2']:.4f}, {f['steps']} sizes "
                                                     f"{f['min_n']}..{f['frames_generated']} frames"))
    if "fd" in m:
        rows.append(("FD (PANNs)", m["fd"]["value"], f"eig cross-check {m['fd']['value_eig']:.6g}"))
    if "kl" in m:
        rows.append(("KL softmax", m["kl"]["softmax"], f"{m['kl']['pairs']} pairs"))
        rows.append(("KL sigmoid", m["kl"]["sigmoid"], f"{m['kl']['pairs']} pairs"))
    if "is" in m:
        rows.append(("IS", m["is"]["mean"], f"std {m['is']['std']:.4g} over {m['is']['splits']} splits"))
    if "clap" in m:
        rows.append(("CLAP score", m["clap"]["value"], f"std {m['clap']['std']:.4g}, {m['clap']['clips']} clips"))
    width = max(len(r[0]) for r in rows) if rows else 6
    lines = [f"{'metric':<{width}}  {'value':>12}  detail", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {value:>12.6g}  {detail}" for name, value, detail in rows]
    for what, c in result.get("clips", {}).items():
        lines.append(f"{what}: {c['used']} of {c['found']} clips used")
        if c["skipped"]:
            lines.append(f"  skipped {c['skipped']} unreadable: " +
                         "; ".join(f"{s['file']} ({s['reason']})" for s in c["skipped_files"]))
    lines.append(f"resampling: {result['settings']['resampling']}")
    return "\n".join(lines)
