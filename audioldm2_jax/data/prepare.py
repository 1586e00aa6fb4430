"""Converts a manifest into ArrayRecord shards of 16 kHz mono int16 audio plus text, for pod-scale input.

    python -m audioldm2_jax.data.prepare --manifest m.csv --out dir --shards N [--audio-root R]
        [--audio-template "{youtube_id}.wav"] [--max-seconds 30] [--workers 4]

Writes ``dir/clips-00000-of-0000N.array_record`` ... (records in manifest order, consecutive runs per shard,
``group_size:1`` so that any record is one seek away), ``dir/dataset_info.json`` (format, shard list, counts,
sample rate) and ``dir/skipped.jsonl`` (every file left out, with the reason). Files are decoded, mixed down to
mono, resampled to 16 kHz and stored as int16 (scaled down first if their peak exceeds full scale); undecodable,
empty, NaN-bearing or entirely silent files are skipped, never written. Read the result with
:class:`audioldm2_jax.data.sources.ArrayRecordSource` (``data.source="array_record"``, ``data.path=dir``): no
TensorFlow needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from audioldm2_jax.audio import io as audio_io
from audioldm2_jax.data import transforms
from audioldm2_jax.data.sources import RECORD_FORMAT, ManifestEntry, encode_clip, read_manifest

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4


def convert_entry(entry: ManifestEntry, max_seconds: float | None = None) -> tuple[bytes | None, str]:
    """One manifest entry -> (record bytes, "") or (None, reason it was skipped)."""
    try:
        wave, sample_rate = audio_io.read_audio(entry.path)
    except audio_io.AudioDecodeError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001
        return None, f"{type(error).__name__}: {error}"
    if not (entry.captions or entry.labels or entry.transcription):
        return None, "no caption, labels or transcription"
    if not transforms.MIN_SAMPLE_RATE <= sample_rate <= transforms.MAX_SAMPLE_RATE:
        return None, f"implausible sample rate {sample_rate}"
    if wave.ndim > 2:
        return None, f"waveform of shape {wave.shape}"
    wave = transforms.to_mono(wave)
    if not np.all(np.isfinite(wave)):
        return None, f"{int(np.sum(~np.isfinite(wave)))} non-finite samples (NaN/inf)"
    if max_seconds:
        wave = wave[:int(max_seconds * sample_rate)]
    wave = audio_io.resample(wave, sample_rate, SAMPLE_RATE)
    peak = float(np.abs(wave).max(initial=0.0))
    if peak <= SILENCE_PEAK:
        return None, f"silent (peak {peak:.1e})"
    if peak > 1.0:  # float files may exceed full scale: keep the shape, not the clipping
        wave = wave / peak
    pcm = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    return encode_clip(pcm, SAMPLE_RATE, entry.captions, entry.transcription, entry.labels, entry.path), ""


def _convert_star(args):
    return convert_entry(*args)


def _converted(entries: list[ManifestEntry], max_seconds: float | None,
               workers: int) -> Iterator[tuple[bytes | None, str]]:
    if workers <= 1:
        for entry in entries:
            yield convert_entry(entry, max_seconds)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:  # order kept: records follow the manifest
        yield from pool.map(_convert_star, ((entry, max_seconds) for entry in entries), chunksize=8)


def prepare(manifest, out_dir, num_shards: int = 1, audio_root: str | None = None,
            audio_template: str | None = None, max_seconds: float | None = None, workers: int = 1,
            name: str = "clips", log=print) -> dict:
    """Writes the shards; returns the ``dataset_info.json`` contents. Raises ValueError when nothing is usable."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    entries = read_manifest(manifest, audio_root=audio_root, audio_template=audio_template)
    os.makedirs(out_dir, exist_ok=True)
    shard_names = [f"{name}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
    # consecutive manifest entries per shard, as equal as the count allows
    bounds = [len(entries) * i // num_shards for i in range(num_shards + 1)]
    writers = [ArrayRecordWriter(os.path.join(out_dir, shard), "group_size:1") for shard in shard_names]
    counts = [0] * num_shards
    skipped = 0
    start = time.time()
    try:
        with open(os.path.join(out_dir, "skipped.jsonl"), "w", encoding="utf-8") as skipped_file:
            shard = 0
            for index, (record, reason) in enumerate(_converted(entries, max_seconds, workers)):
                while index >= bounds[shard + 1]:
                    shard += 1
                if record is None:
                    skipped += 1
                    skipped_file.write(json.dumps({"path": entries[index].path, "reason": reason}) + "\n")
                    log(f"skipped {entries[index].path}: {reason}")
                    continue
                writers[shard].write(record)
                counts[shard] += 1
    finally:
        for writer in writers:
            writer.close()
    written = sum(counts)
    info = {"format": RECORD_FORMAT, "sample_rate": SAMPLE_RATE, "num_records": written,
            "shards": shard_names, "records_per_shard": counts, "skipped": skipped,
            "manifest": os.path.abspath(os.fspath(manifest)), "seconds": round(time.time() - start, 2)}
    with open(os.path.join(out_dir, "dataset_info.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    log(f"wrote {written} clips into {num_shards} shards in {out_dir} ({skipped} skipped, "
        f"{info['seconds']} s)")
    if written == 0:
        raise ValueError(f"no usable clip in {manifest!r}: all {len(entries)} were skipped "
                         f"(see {os.path.join(out_dir, 'skipped.jsonl')})")
    return info


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="CSV / TSV / JSONL / JSON manifest")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--audio-root", default=None, help="directory relative paths start from")
    parser.add_argument("--audio-template", default=None, help='path from row fields, e.g. "{youtube_id}.wav"')
    parser.add_argument("--max-seconds", type=float, default=None, help="keep at most this much of each file")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--name", default="clips", help="shard file prefix")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        prepare(args.manifest, args.out, args.shards, args.audio_root, args.audio_template, args.max_seconds,
                args.workers, args.name)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
