"""The evaluation command (``python -m audioldm2_jax.eval`` / :func:`audioldm2_jax.eval.run.evaluate`) on a tiny
corpus of procedural clips, with random-weight VGGish and PANNs saved as the published ``.pth`` files would be.

What is checked: every metric is in the results; FD and FAD equal :func:`metrics.frechet_distance` (FAD-inf
:func:`metrics.fad_inf`) on features computed directly with the model functions on one device from the WAV samples
(so the chain of reading, batching over 2 devices, grouping and caching adds nothing); identical sets score FAD = 0 and KL = 0 (up to the references' 1e-6 inside the log);
the reference cache is reused (the second run extracts only the generated set) and invalidated by an edited file;
an unreadable file is skipped and named; missing weights, an empty folder, mismatched KL pairs and too few frames
for FAD-inf are clear errors.

Where the time goes: each Frechet distance on CNN14's 2048-d embeddings (scipy's sqrtm of a 2048 x 2048 matrix and
the eigenvalue cross-check) costs about 64 s of CPU on the shared 2-core machine; the module computes two (the
command's FD and the direct FD), most of its time. Extraction itself is about 1 s of CPU per
batch of 4 clips.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")

import pipeline_fixtures as pf  # noqa: E402
from reference_init import random_extractor_params, save_pth  # noqa: E402

from audioldm2_jax.audio.clap_features import resample_for_clap  # noqa: E402
from audioldm2_jax.audio.io import write_wav  # noqa: E402
from audioldm2_jax.compilation import compile_lowered  # noqa: E402
from audioldm2_jax.convert import panns as panns_convert  # noqa: E402
from audioldm2_jax.convert import vggish as vggish_convert  # noqa: E402
from audioldm2_jax.convert.weights import CheckpointError  # noqa: E402
from audioldm2_jax.data.procedural import ProceduralSource  # noqa: E402
from audioldm2_jax.eval import metrics  # noqa: E402
from audioldm2_jax.eval import run  # noqa: E402
from audioldm2_jax.eval.__main__ import main  # noqa: E402
from audioldm2_jax.eval.placement import BatchMesh  # noqa: E402
from audioldm2_jax.models.panns import Cnn14, dummy_waveform, panns_outputs  # noqa: E402
from audioldm2_jax.models.vggish import VGGish, vggish_dummy_inputs, vggish_embeddings  # noqa: E402

CLIPS = 4
SECONDS = 2.0  # 32000 samples: audioldm_eval's minimum, so nothing is padded
SPLITS = 2  # IS splits (10 need at least 10 clips)
# Batches split over 2 of the suite's 8 simulated devices: the sharded path end to end against the direct features;
# every run of the module uses the same 2, so the programs compiled by the first are reused.
DEVICES = 2
# FAD-inf on the 8 generated frames: sample sizes 4, 6, 8 (fadtk: 500 .. N in 25 steps, far beyond a tiny corpus).
FAD_INF = {"min_n": 4, "steps": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``generated/`` and ``reference/``: 4 procedural 2 s clips each under the same names (different clips), and
    the two random-weight ``.pth`` files. On teardown the loaded weights (kept by ``run``'s extractor cache, with
    their per-device copies) are let go, so the rest of the suite does not carry 1 GB of them."""
    root = tmp_path_factory.mktemp("eval")
    source = ProceduralSource(num_clips=2 * CLIPS, seed=3, duration=SECONDS)
    for folder, offset in (("generated", 0), ("reference", CLIPS)):
        (root / folder).mkdir()
        for i in range(CLIPS):
            write_wav(root / folder / f"clip{i}.wav", source[offset + i]["waveform"], 16000)
    vggish = random_extractor_params(VGGish(), vggish_dummy_inputs(), seed=0)
    panns = random_extractor_params(Cnn14(), (dummy_waveform(),), seed=1)
    vggish_path = save_pth(vggish_convert.to_torch(vggish), root / "vggish-random.pth")
    panns_state = panns_convert.to_torch(panns)
    torch.save({"iteration": 0, "model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                                         panns_state.items()}}, root / "cnn14-random.pth")
    yield {"root": root, "gen": root / "generated", "ref": root / "reference", "vggish": vggish_path,
           "panns": str(root / "cnn14-random.pth"), "vggish_params": vggish, "panns_params": panns}
    run._load_extractor.cache_clear()


@pytest.fixture(scope="module")
def direct_features(corpus):
    """The features straight from the model functions on one device, without the command's code: samples read
    with soundfile, first channel, mean subtracted (as audioldm_eval), both sets in one batch. ``{"gen" / "ref":
    (VGGish frames [2 * CLIPS, 128], CNN14 embeddings [CLIPS, 2048], logits [CLIPS, 527])}``."""
    waves = []
    for folder in (corpus["gen"], corpus["ref"]):
        for i in range(CLIPS):
            w, rate = soundfile.read(folder / f"clip{i}.wav", dtype="float32")
            assert rate == 16000 and w.shape == (int(SECONDS * 16000),)
            waves.append(w - w.mean())
    x = jnp.asarray(np.stack(waves))
    vggish, panns = (jax.device_put(corpus[k]) for k in ("vggish_params", "panns_params"))
    # compiled with the project's XLA options, as the command compiles (faster on small CPU batches)
    frames = np.asarray(compile_lowered(jax.jit(vggish_embeddings).lower(vggish, x))(vggish, x))  # [2C, E, 128]
    out = compile_lowered(jax.jit(panns_outputs).lower(panns, x))(panns, x)
    emb, logits = np.asarray(out["embedding"]), np.asarray(out["logits"])
    return {"gen": (frames[:CLIPS].reshape(-1, 128), emb[:CLIPS], logits[:CLIPS]),
            "ref": (frames[CLIPS:].reshape(-1, 128), emb[CLIPS:], logits[CLIPS:])}


def _evaluate(c, gen=None, ref=None, **kw):
    kw.setdefault("metrics", ("fad", "fd", "kl", "is"))
    kw.setdefault("cache_dir", None)
    return run.evaluate(gen or c["gen"], ref or c["ref"], vggish=c["vggish"], panns=c["panns"], progress=False,
                        is_splits=SPLITS, batch_size=CLIPS, devices=DEVICES, **kw)


@pytest.fixture(scope="module")
def cli_run(corpus):
    """``main([...])`` on the corpus with a module-wide cache: ``(exit code, printed table, JSON results)``."""
    out = corpus["root"] / "scores.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--generated", str(corpus["gen"]), "--reference", str(corpus["ref"]), "--vggish",
                     corpus["vggish"], "--panns", corpus["panns"], "--metrics", "fad,fd,kl,is,fad_inf", "--json",
                     str(out), "--cache", str(corpus["root"] / "cache"), "--is-splits", str(SPLITS), "--batch-size",
                     str(CLIPS), "--no-progress", "--devices", str(DEVICES), "--fad-inf-min-n",
                     str(FAD_INF["min_n"]), "--fad-inf-steps", str(FAD_INF["steps"])])
    return code, printed.getvalue(), json.loads(out.read_text()) if code == 0 else None


def test_cli_results_equal_metrics_on_direct_features(corpus, cli_run, direct_features):
    """``main([...])`` (batches split over 2 devices) writes every metric; FAD / FD / KL / IS equal the metric
    functions on the models' features computed directly on one device (tolerance 1e-5 relative: float32 features
    through another code path)."""
    code, printed, result = cli_run
    assert code == 0
    assert "FAD (VGGish)" in printed and "KL softmax" in printed and "soxr" in printed and "FAD-inf" in printed
    assert set(result["metrics"]) == {"fad", "fd", "kl", "is", "fad_inf"}
    assert result["clips"]["generated"] == {"found": CLIPS, "used": CLIPS, "skipped": 0, "skipped_files": []}
    assert result["models"]["panns"]["sha256"] == run.file_sha256(corpus["panns"])[:16]
    assert "soxr" in result["settings"]["resampling"]
    assert result["settings"]["devices"] == DEVICES and result["settings"]["batch_size"] == CLIPS

    g_frames, g_emb, g_logits = direct_features["gen"]
    r_frames, r_emb, r_logits = direct_features["ref"]
    fad = metrics.frechet_distance(g_frames, r_frames).value
    fd = metrics.frechet_distance(g_emb, r_emb).value
    names = [f"clip{i}.wav" for i in range(CLIPS)]
    kl = metrics.kl_divergence(g_logits, r_logits, names, names)
    isc = metrics.inception_score(g_logits, splits=SPLITS)
    m = result["metrics"]
    assert m["fad"]["frames_generated"] == len(g_frames) == 2 * CLIPS  # 2 s: two 0.96 s examples per clip
    np.testing.assert_allclose(m["fad"]["value"], fad, rtol=1e-5)
    np.testing.assert_allclose(m["fd"]["value"], fd, rtol=1e-5)
    np.testing.assert_allclose([m["kl"]["softmax"], m["kl"]["sigmoid"]], [kl.softmax, kl.sigmoid], rtol=1e-5)
    np.testing.assert_allclose([m["is"]["mean"], m["is"]["std"]], [isc.mean, isc.std], rtol=1e-5, atol=1e-7)
    assert fad > 0 and fd > 0


def test_fad_inf_equals_the_formula_on_direct_features(cli_run, direct_features):
    """``--metrics ...,fad_inf``: fadtk's extrapolation (:func:`metrics.fad_inf`) of the generated frames against the
    reference frames' statistics, same sample sizes and draws (seed 0); the intercept, slope, R^2 and every
    ``(n, FAD)`` point equal the formula on the directly computed features within 1e-5 relative."""
    got = cli_run[2]["metrics"]["fad_inf"]
    g_frames, r_frames = direct_features["gen"][0], direct_features["ref"][0]
    want = metrics.fad_inf(metrics.gaussian_stats(r_frames), g_frames, steps=FAD_INF["steps"],
                           min_n=FAD_INF["min_n"], rng=run.FAD_INF_SEED)
    assert [n for n, _ in got["points"]] == [n for n, _ in want.points] == [4, 6, 8]
    np.testing.assert_allclose([fad for _, fad in got["points"]], [fad for _, fad in want.points], rtol=1e-5)
    np.testing.assert_allclose([got["value"], got["slope"], got["r2"]], [want.score, want.slope, want.r2],
                               rtol=1e-5)
    assert (got["min_n"], got["steps"], got["frames_generated"]) == (FAD_INF["min_n"], FAD_INF["steps"], 2 * CLIPS)


@pytest.mark.filterwarnings("ignore:Frechet distance. sqrtm gives:RuntimeWarning")  # the sqrtm rounding below
def test_identical_sets_score_zero(corpus, cli_run):
    """The reference set against itself: FAD (eigenvalue cross-check) below 1e-6 of the generated-vs-reference
    value; sqrtm's value below 1e-5 of it (6 clips: a rank-5 covariance, whose zero eigenvalues each leave sqrtm a
    rounding of ~sqrt(machine eps), as the metrics module documents);
    KL 0 up to the 1e-6 the references add inside the generated log (each class contributes about -1e-6)."""
    apart = cli_run[2]["metrics"]
    # FD runs the same function as FAD on CNN14's 2048-d embeddings, a minute of CPU more: FAD stands for both.
    same = _evaluate(corpus, gen=corpus["ref"], cache_dir=corpus["root"] / "cache", metrics=("fad", "kl"))["metrics"]
    for name in ("fad",):
        assert abs(same[name]["value_eig"]) < 1e-6 * apart[name]["value"], name
        assert abs(same[name]["value"]) < 1e-5 * apart[name]["value"], name
    assert abs(same["kl"]["softmax"]) <= 527 * 1e-6 and abs(same["kl"]["sigmoid"]) <= 527 * 1e-6


def test_reference_cache_is_reused_and_invalidated(corpus, tmp_path, monkeypatch):
    """Second run: the reference clips are neither decoded nor extracted; an edited reference file is recomputed
    (and the result equals an uncached run on the edited set)."""
    ref = tmp_path / "reference"
    shutil.copytree(corpus["ref"], ref)
    cache = tmp_path / "cache"
    extracted = []
    real = run._batched
    monkeypatch.setattr(run, "_batched", lambda fn, waves, *a: extracted.append(len(waves)) or real(fn, waves, *a))

    first = _evaluate(corpus, ref=ref, metrics=("fad",), cache_dir=cache)
    assert extracted == [CLIPS, CLIPS]  # generated, reference
    extracted.clear()
    second = _evaluate(corpus, ref=ref, metrics=("fad",), cache_dir=cache)
    assert extracted == [CLIPS]  # generated only
    assert second["metrics"]["fad"]["value"] == first["metrics"]["fad"]["value"]

    wave, _ = soundfile.read(ref / "clip2.wav", dtype="float32")
    write_wav(ref / "clip2.wav", 0.5 * wave[::-1], 16000)
    extracted.clear()
    third = _evaluate(corpus, ref=ref, metrics=("fad",), cache_dir=cache)
    assert extracted == [CLIPS, 1]  # only the edited clip
    uncached = _evaluate(corpus, ref=ref, metrics=("fad",), cache_dir=None)
    assert third["metrics"]["fad"]["value"] != second["metrics"]["fad"]["value"]
    np.testing.assert_allclose(third["metrics"]["fad"]["value"], uncached["metrics"]["fad"]["value"], rtol=1e-6)


def test_unreadable_clip_is_skipped_and_named(corpus, tmp_path, capsys):
    """A file that does not decode is skipped, counted and named in the JSON and in the printed table."""
    gen = tmp_path / "generated"
    shutil.copytree(corpus["gen"], gen)
    (gen / "broken.wav").write_bytes(b"not a RIFF file at all")
    code = main(["--generated", str(gen), "--reference", str(corpus["ref"]), "--vggish", corpus["vggish"],
                 "--metrics", "fad", "--cache", "none", "--no-progress", "--json", str(tmp_path / "r.json"),
                 "--devices", str(DEVICES), "--batch-size", str(CLIPS)])
    assert code == 0
    assert "broken.wav" in capsys.readouterr().out
    counts = json.loads((tmp_path / "r.json").read_text())["clips"]["generated"]
    assert counts["found"] == CLIPS + 1 and counts["used"] == CLIPS and counts["skipped"] == 1
    assert counts["skipped_files"][0]["file"] == "broken.wav"


def test_clear_errors(corpus, tmp_path, capsys):
    """Missing weights name the file to download; an empty folder, mismatched KL names and an unknown metric are
    ValueErrors; the command exits with 2 and the message."""
    with pytest.raises(CheckpointError, match="Cnn14_16k_mAP=0.438.pth"):
        run.evaluate(corpus["gen"], corpus["ref"], ("fd",), panns=tmp_path / "missing.pth", progress=False)
    with pytest.raises(CheckpointError, match="vggish-10086976.pth"):
        run.evaluate(corpus["gen"], corpus["ref"], ("fad",), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        _evaluate(corpus, gen=tmp_path / "empty", metrics=("fad",))
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i in range(CLIPS):
        shutil.copy(corpus["gen"] / f"clip{i}.wav", renamed / f"other{i}.wav")
    with pytest.raises(ValueError, match="paired by file name"):
        _evaluate(corpus, gen=renamed, metrics=("kl",))
    with pytest.raises(ValueError, match="unknown metrics"):
        _evaluate(corpus, metrics=("fid",))
    # FAD-inf at fadtk's default smallest sample (500 frames) on 8 generated frames; a one-point "fit"
    with pytest.raises(ValueError, match=r"more than fad_inf_min_n=500 VGGish frames .* 4 generated clip\(s\) give 8"):
        _evaluate(corpus, metrics=("fad_inf",))
    with pytest.raises(ValueError, match="fad_inf_steps=1"):
        _evaluate(corpus, metrics=("fad", "fad_inf"), fad_inf_steps=1)
    assert main(["--generated", str(corpus["gen"]), "--reference", str(corpus["ref"]), "--metrics", "fad"]) == 2
    assert "vggish-10086976.pth" in capsys.readouterr().err


def test_clap_score_from_a_pipeline_folder(tmp_path, monkeypatch):
    """``--clap`` on a pipeline-layout folder (``text_encoder/``, ``tokenizer/``, ``feature_extractor/``) with the
    prompts from ``sample.py``'s ``NAME.json`` files: the score equals the mean cosine of transformers' own
    ``ClapModel`` text and audio features (the same 48 kHz audio; clips under the 2 s window, so no random crop)
    within 1e-4, with both towers' batches (3 clips padded to 4 rows) split over 2 devices; a clip without a prompt
    is an error naming it."""
    model, tokenizer, extractor = pf._clap(), pf.roberta_tokenizer(), pf.clap_feature_extractor()
    model.save_pretrained(tmp_path / "ckpt" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "ckpt" / "tokenizer")
    extractor.save_pretrained(tmp_path / "ckpt" / "feature_extractor")
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    prompts = [f"a dog barks {i} times" for i in range(3)]
    for i, prompt in enumerate(prompts):
        write_wav(gen / f"c{i}.wav", 0.3 * rng.standard_normal(16000 + 4000 * i), 16000)
        (gen / f"c{i}.json").write_text(json.dumps({"prompt": prompt}))
    placed = []  # per call of a CLAP tower: (rows, devices holding the batch, rows per device)
    real_call = BatchMesh.call

    def spy(mesh, fn, variables, batch, *rest):
        placed.append((batch.shape[0], len(batch.addressable_shards), batch.sharding.shard_shape(batch.shape)[0]))
        return real_call(mesh, fn, variables, batch, *rest)

    monkeypatch.setattr(BatchMesh, "call", spy)
    result = run.evaluate(gen, gen, ("clap",), clap=tmp_path / "ckpt", progress=False, batch_size=3,
                          devices=DEVICES)
    assert placed == [(4, DEVICES, 2)] * 2  # text, audio
    assert result["settings"]["devices"] == DEVICES

    cosines = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            wave, _ = soundfile.read(gen / f"c{i}.wav", dtype="float32")
            feats = extractor(resample_for_clap(wave, 16000, 48000), sampling_rate=48000, return_tensors="pt")
            audio = model.get_audio_features(input_features=feats["input_features"])
            text = model.get_text_features(**tokenizer([prompt], return_tensors="pt"))
            audio, text = (getattr(x, "pooler_output", x) for x in (audio, text))
            cosines.append(float(torch.nn.functional.cosine_similarity(audio, text)[0]))
    np.testing.assert_allclose(result["metrics"]["clap"]["value"], np.mean(cosines), atol=1e-4)

    (gen / "c1.json").unlink()
    with pytest.raises(ValueError, match="c1.wav"):
        run.evaluate(gen, gen, ("clap",), clap=tmp_path / "ckpt", progress=False)
