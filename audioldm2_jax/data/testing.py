"""Small audio corpora made on the spot, good and bad files, for the data tests and the input benchmark."""

import json
import os

import numpy as np
import soundfile

SR = 16000


def tone(seconds: float, sample_rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3.1 * freq * t)
    if channels > 1:
        wave = np.stack([wave * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return wave.astype(np.float32)


def make_audio_corpus(root) -> dict:
    """Writes good and bad files under ``root``; returns {name: (path, what it is)}."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    files = {}

    def path(name):
        return os.path.join(root, name)

    soundfile.write(path("mono16k.wav"), tone(1.2, 16000), 16000, subtype="PCM_16")
    files["mono16k.wav"] = "good"
    soundfile.write(path("stereo44k.flac"), tone(0.9, 44100, 330.0, channels=2), 44100, subtype="PCM_16")
    files["stereo44k.flac"] = "good"
    soundfile.write(path("odd_rate.wav"), tone(1.0, 11111, 220.0), 11111, subtype="PCM_16")
    files["odd_rate.wav"] = "good"
    soundfile.write(path("vorbis.ogg"), tone(0.8, 22050, 550.0), 22050, format="OGG", subtype="VORBIS")
    files["vorbis.ogg"] = "good"
    soundfile.write(path("six_channels.wav"), tone(0.5, 48000, 262.0, channels=6), 48000, subtype="FLOAT")
    files["six_channels.wav"] = "good"
    nan_wave = tone(0.5, 16000)
    nan_wave[100:110] = np.nan
    soundfile.write(path("nan.wav"), nan_wave, 16000, subtype="FLOAT")
    files["nan.wav"] = "non-finite"
    soundfile.write(path("silent.wav"), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    files["silent.wav"] = "silent"
    open(path("empty.wav"), "wb").close()
    files["empty.wav"] = "empty"
    with open(path("junk.flac"), "wb") as handle:
        handle.write(b"fLaC" + os.urandom(64))
    files["junk.flac"] = "undecodable"
    # a WAV cut in its header: the data chunk is gone
    soundfile.write(path("full.wav"), tone(1.0, 16000), 16000, subtype="PCM_16")
    with open(path("full.wav"), "rb") as handle:
        data = handle.read()
    with open(path("truncated.wav"), "wb") as handle:
        handle.write(data[:30])
    os.remove(path("full.wav"))
    files["truncated.wav"] = "truncated"
    soundfile.write(path("no_caption.wav"), tone(0.5, 16000), 16000, subtype="PCM_16")
    files["no_caption.wav"] = "no text"
    files["missing.wav"] = "missing"
    return files


def write_csv_manifest(root, rows: list[dict], name: str = "manifest.csv") -> str:
    import csv

    path = os.path.join(str(root), name)
    fields = sorted({key for row in rows for key in row})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def corpus_manifest(root) -> tuple[str, dict]:
    """A CSV manifest over :func:`make_audio_corpus`: captions, multi-caption cells, labels-only rows, a row with
    no text, a missing file; returns (manifest path, files)."""
    files = make_audio_corpus(root)
    rows = []
    for name in files:
        row = {"audio": name, "caption": f"the sound of {name}", "labels": ""}
        if name == "stereo44k.flac":
            row["caption"] = json.dumps(["a stereo tone", "two channels humming"])
        if name == "odd_rate.wav":
            row["caption"] = ""
            row["labels"] = "tone; low hum"
        if name == "no_caption.wav":
            row["caption"] = ""
        rows.append(row)
    rows.append({"audio": "mono16k.wav", "caption": "a second caption for the mono tone", "labels": ""})
    rows.append({"audio": "", "caption": "a row without a file", "labels": ""})
    return write_csv_manifest(root, rows), files
