"""Sources on small files made here: manifests (CSV with WAV / FLAC / OGG, JSONL, WavCaps JSON, LJSpeech
metadata, AudioCaps / MusicCaps shapes), a TFDS dataset built locally, and the clip transform on good and bad
audio."""

import functools
import json
import os

import numpy as np
import pytest
import soundfile

from audioldm2_jax.audio import mel
from audioldm2_jax.data import sources, testing, transforms


def test_manifest_parsing_and_decoding(tmp_path):
    manifest, files = testing.corpus_manifest(tmp_path)
    source = sources.ManifestSource(manifest)
    by_name = {os.path.basename(entry.path): entry for entry in source.entries}
    assert set(by_name) == set(files)  # the row without a file is left out, duplicates merged
    assert by_name["mono16k.wav"].captions == ("the sound of mono16k.wav", "a second caption for the mono tone")
    assert by_name["stereo44k.flac"].captions == ("a stereo tone", "two channels humming")
    assert by_name["odd_rate.wav"].labels == ("tone", "low hum") and by_name["odd_rate.wav"].captions == ()
    index = {os.path.basename(entry.path): i for i, entry in enumerate(source.entries)}
    stereo = source[index["stereo44k.flac"]]
    assert stereo["sample_rate"] == 44100 and stereo["waveform"].shape == (int(0.9 * 44100), 2)
    assert "error" not in stereo
    for name, what in files.items():
        record = source[index[name]]
        if what in ("missing", "empty", "undecodable", "truncated"):
            assert record["error"] and record["waveform"] is None, name
        else:
            assert "error" not in record, (name, record.get("error"))


def test_clip_transform_good_and_bad(tmp_path):
    manifest, files = testing.corpus_manifest(tmp_path)
    source = sources.ManifestSource(manifest)
    transform = transforms.ClipTransform(clip_samples=16000, compute_fbank=True)
    rng = np.random.default_rng(0)
    expected_reason = {"missing": "no such file", "empty": "empty file", "undecodable": "", "truncated": "",
                       "non-finite": "non-finite", "silent": "silent", "no text": "no caption"}
    for i, entry in enumerate(source.entries):
        name = os.path.basename(entry.path)
        out = transform.random_map(source[i], rng)
        if files[name] == "good":
            assert not transforms.is_skip(out), (name, out)
            assert out["waveform"].shape == (16000,) and out["waveform"].dtype == np.float32
            content = int(out["num_samples"])
            assert abs(np.abs(out["waveform"][:content]).max() - 0.5) < 1e-5
            assert abs(out["waveform"][:content].mean()) < 1e-4
            assert np.all(out["waveform"][content:] == 0)
            assert out["log_mel"].shape == (mel.num_frames(16000), 64) and np.all(np.isfinite(out["log_mel"]))
            assert out["fbank"].shape == (1024, 128) and np.all(np.isfinite(out["fbank"]))
            assert out["caption"] and out["path"] == entry.path
        else:
            assert transforms.is_skip(out), name
            assert expected_reason[files[name]] in out[transforms.SKIP_KEY] and out["path"] == entry.path
    # labels stand in for a missing caption, joined by ", "
    odd = next(i for i, e in enumerate(source.entries) if e.path.endswith("odd_rate.wav"))
    assert transform.random_map(source[odd], rng)["caption"] == "tone, low hum"
    # resampled content keeps its pitch: 0.9 s at 44.1 kHz -> 14400 samples at 16 kHz, 330 Hz peak
    stereo = next(i for i, e in enumerate(source.entries) if e.path.endswith("stereo44k.flac"))
    out = transform.random_map(source[stereo], rng)
    content = int(out["num_samples"])
    assert abs(content - 14400) <= 2
    spectrum = np.abs(np.fft.rfft(out["waveform"][:content]))
    assert abs(np.argmax(spectrum) * 16000 / content - 330.0) < 2.0


def test_random_crop_avoids_silence():
    rng = np.random.default_rng(3)
    wave = np.zeros(16000 * 20, np.float32)
    wave[-16000 * 2:] = testing.tone(2.0, 16000)  # sound only in the last 2 s of 20
    transform = transforms.ClipTransform(clip_samples=16000, crop_retries=50, compute_log_mel=False,
                                         compute_fbank=False)
    record = {"path": "x", "waveform": wave, "sample_rate": 16000, "captions": ["c"], "labels": []}
    outs = [transform.random_map(record, rng) for _ in range(5)]
    assert all(not transforms.is_skip(o) and np.abs(o["waveform"]).max() > 0.49 for o in outs)
    window, peak = transforms.random_crop_avoiding_silence(wave, 16000, rng, retries=1)
    assert window.shape == (16000,)
    eval_transform = transforms.ClipTransform(clip_samples=16000, random_crop=False, compute_log_mel=False,
                                              compute_fbank=False)
    assert transforms.is_skip(eval_transform.random_map(record, rng))  # the first second is silent


def test_manifest_formats(tmp_path):
    soundfile.write(tmp_path / "a.wav", testing.tone(0.5, 16000), 16000)
    soundfile.write(tmp_path / "YT1234.wav", testing.tone(0.5, 16000), 16000)
    os.makedirs(tmp_path / "wavs")
    soundfile.write(tmp_path / "wavs" / "LJ001-0001.wav", testing.tone(0.5, 22050), 22050)
    # JSONL with a caption list and a transcription
    with open(tmp_path / "m.jsonl", "w") as handle:
        handle.write(json.dumps({"path": "a.wav", "captions": ["x", "y"], "transcription": "hello"}) + "\n")
    entry = sources.read_manifest(tmp_path / "m.jsonl")[0]
    assert entry.captions == ("x", "y") and entry.transcription == "hello"
    # WavCaps JSON
    with open(tmp_path / "wavcaps.json", "w") as handle:
        json.dump({"data": [{"id": "a", "file_name": "a.wav", "caption": "a tone", "duration": 0.5}]}, handle)
    assert sources.read_manifest(tmp_path / "wavcaps.json")[0].captions == ("a tone",)
    # AudioCaps: no path column, one caption per row
    audiocaps = testing.write_csv_manifest(tmp_path, [
        {"audiocap_id": 1, "youtube_id": "YT1234", "start_time": 30, "caption": "first"},
        {"audiocap_id": 2, "youtube_id": "YT1234", "start_time": 30, "caption": "second"}], "audiocaps.csv")
    with pytest.raises(ValueError, match="no audio path column"):
        sources.read_manifest(audiocaps)
    [entry] = sources.read_manifest(audiocaps, audio_template="{youtube_id}.wav")
    assert entry.captions == ("first", "second") and entry.path == str(tmp_path / "YT1234.wav")
    # MusicCaps: aspect_list is a Python list literal
    musiccaps = testing.write_csv_manifest(tmp_path, [
        {"ytid": "YT1234", "aspect_list": "['low quality', 'sustained strings']", "caption": "strings"}],
        "musiccaps.csv")
    [entry] = sources.read_manifest(musiccaps, audio_template="{ytid}.wav")
    assert entry.labels == ("low quality", "sustained strings")
    # LJSpeech metadata.csv: pipe-separated, no header, audio under wavs/
    with open(tmp_path / "metadata.csv", "w") as handle:
        handle.write('LJ001-0001|Printing, in the "only" sense|Printing, in the only sense\n')
    source = sources.ManifestSource(tmp_path / "metadata.csv")
    record = source[0]
    assert record["transcription"] == "Printing, in the only sense" and record["sample_rate"] == 22050
    assert record["captions"] == []
    # speech clips pass on their transcription alone
    out = transforms.ClipTransform(clip_samples=8000, compute_fbank=False).random_map(record, np.random.default_rng(0))
    assert not transforms.is_skip(out) and out["caption"] == "" and out["transcription"].startswith("Printing")
    # empty manifests are an error at the start
    (tmp_path / "empty.csv").write_text("audio,caption\n")
    with pytest.raises(ValueError, match="no rows"):
        sources.ManifestSource(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match="does not exist"):
        sources.ManifestSource(tmp_path / "nope.csv")


@functools.lru_cache(maxsize=None)  # TFDS registers a builder class by name, once per process
def _tiny_tfds_builder():
    import tensorflow_datasets as tfds

    class AudioldmTinySpeech(tfds.core.GeneratorBasedBuilder):
        """Four clips with int16 audio stored as a Tensor feature (no TensorFlow needed to read)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "speech": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "text": tfds.features.Text(),
                    "meta": {"genre": tfds.features.ClassLabel(names=["speech", "music"])},
                }),
                metadata=tfds.core.MetadataDict(sample_rate=22050))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                wave = np.round(testing.tone(0.5, 22050, 200.0 + 100 * i) * 32767).astype(np.int16)
                yield i, {"speech": wave, "text": f"clip number {i}", "meta": {"genre": i % 2}}

    return AudioldmTinySpeech


def test_tfds_source_built_locally(tmp_path):
    builder_cls = _tiny_tfds_builder()
    builder_cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = sources.TFDSSource("audioldm_tiny_speech", split="train", data_dir=str(tmp_path), audio="speech",
                                transcription="text", labels=["meta/genre"])
    assert len(source) == 4 and source.sample_rate == 22050
    seen = set()
    for i in range(4):
        record = source[i]
        assert "error" not in record, record
        number = int(record["transcription"].split()[-1])
        seen.add(number)
        assert record["labels"] == [["speech", "music"][number % 2]]
        assert record["waveform"].dtype == np.float32 and np.abs(record["waveform"]).max() <= 1.0
        spectrum = np.abs(np.fft.rfft(record["waveform"]))
        assert abs(np.argmax(spectrum) * 22050 / len(record["waveform"]) - (200 + 100 * number)) < 3
    assert seen == {0, 1, 2, 3}
    import pickle

    clone = pickle.loads(pickle.dumps(source))  # what grain's worker processes receive
    np.testing.assert_array_equal(clone[2]["waveform"], source[2]["waveform"])
    out = transforms.ClipTransform(clip_samples=8000, compute_fbank=False).random_map(source[0],
                                                                                      np.random.default_rng(0))
    assert out["caption"] in ("speech", "music") and out["transcription"].startswith("clip number")
    import sys

    assert "tensorflow" not in sys.modules


def test_tfds_through_the_pipeline(tmp_path):
    from audioldm2_jax.data import pipeline

    _tiny_tfds_builder()(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    config = {"source": "tfds", "path": "audioldm_tiny_speech", "data_dir": str(tmp_path), "clip_seconds": 0.32,
              "global_batch_size": 2, "num_epochs": 1, "compute_fbank": False, "read_threads": 1,
              "tfds_features": {"audio": "speech", "transcription": "text", "labels": ["meta/genre"]}}
    batches = list(pipeline.make_dataset(config, 0, 1, seed=0))
    assert len(batches) == 2
    transcriptions = sorted(t for b in batches for t in b["transcription"].tolist())
    assert transcriptions == [f"clip number {i}" for i in range(4)]
    assert all(b["log_mel"].shape == (2, 32, 64) for b in batches)
