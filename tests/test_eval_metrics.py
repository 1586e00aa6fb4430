"""The evaluation formulas (``audioldm2_jax.eval.metrics``) against values derived independently of them: closed forms
of the Frechet distance (commuting covariances, 2 x 2 matrices), hand-computed KL divergences and torch's ``kl_div``
(the reference's own primitive), Inception scores of known distributions and through ``scipy.stats.entropy``, CLAP
cosines of hand-picked vectors, and the CLAP score helper against transformers' ``ClapModel``.

The reference packages themselves (audioldm-eval, frechet-audio-distance, fadtk, torch-fidelity) do not install
here without CUDA builds of torch / torchaudio / torchvision. Their formula functions, loaded from the downloaded
wheels by file path, agreed with these on random features (FD, KL: exactly on float64 features, 1e-10 .. 1e-7
relative on float32 ones; IS: 3e-9; fadtk's FAD-inf with the same draws: 1e-14).
"""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import soxr
import torch

from audioldm2_jax.audio.clap_features import ClapFeatureConfig
from audioldm2_jax.eval import metrics as M
from audioldm2_jax.eval.clap_score import ClapEmbedder, clap_scores


def features_with_covariance(rng, n, mean, cov):
    """``[n, D]`` rows whose sample mean is exactly ``mean`` and whose N-1 sample covariance is exactly ``cov`` (to
    rounding): centred Gaussian draws, orthonormalised (QR), scaled by sqrt(n - 1), coloured by a square root of
    ``cov``."""
    d = len(mean)
    z = rng.normal(size=(n, d))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)  # orthonormal columns, still orthogonal to the ones vector (each column has zero mean)
    w, v = np.linalg.eigh(cov)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return q * math.sqrt(n - 1) @ root + mean


def commuting_pair(rng, d, rank1=None, rank2=None):
    """Two covariances sharing eigenvectors (a random rotation): ``cov_i = Q diag(l_i) Q^T``, so that
    ``tr sqrtm(cov1 cov2) = sum sqrt(l1 * l2)``. ``rank*`` zeroes trailing eigenvalues (singular covariances)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1, l2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    if rank1 is not None:
        l1[rank1:] = 0
    if rank2 is not None:
        l2[rank2:] = 0
    return (q * l1) @ q.T, (q * l2) @ q.T, l1, l2


# ----------------------------------------------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------------------------------------------


def test_gaussian_stats_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)  # float32 in, float64 statistics out
    s = M.gaussian_stats(x)
    x64 = x.astype(np.float64)
    centred = x64 - x64.sum(axis=0) / 7
    assert s.mu.dtype == s.cov.dtype == np.float64 and s.count == 7
    np.testing.assert_allclose(s.mu, x64.sum(axis=0) / 7, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(s.cov, centred.T @ centred / 6, rtol=1e-13, atol=1e-15)


def test_frechet_distance_commuting_covariances_closed_form():
    """Features built with known mean and covariance; FD = |dmu|^2 + sum (l1 + l2 - 2 sqrt(l1 l2))."""
    rng = np.random.default_rng(1)
    d = 12
    cov1, cov2, l1, l2 = commuting_pair(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a = features_with_covariance(rng, 200, mu1, cov1)
    b = features_with_covariance(rng, 150, mu2, cov2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    r = M.frechet_distance(a, b)
    assert not r.eps_retry and r.max_imaginary == 0.0
    assert abs(r.value - expected) <= 1e-10 * expected, (r.value, expected)
    assert abs(r.value_eig - expected) <= 1e-10 * expected, (r.value_eig, expected)
    assert abs(r.trace_sqrt - np.sum(np.sqrt(l1 * l2))) <= 1e-10 * r.trace_sqrt
    # Identical sets are at distance 0.
    assert abs(M.frechet_distance(a, a).value) < 1e-10


def test_frechet_distance_2x2_non_commuting_closed_form():
    """For a 2 x 2 matrix with non-negative eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))."""
    rng = np.random.default_rng(2)
    for _ in range(5):
        g1, g2 = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
        cov1, cov2 = g1 @ g1.T + 0.1 * np.eye(2), g2 @ g2.T + 0.1 * np.eye(2)
        mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
        product = cov1 @ cov2
        tr_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(cov1) * np.linalg.det(cov2)))
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
        r = M.frechet_distance_from_stats((mu1, cov1), (mu2, cov2))
        assert abs(r.value - expected) <= 1e-12 * max(1, expected)
        assert abs(r.value_eig - expected) <= 1e-12 * max(1, expected)


def test_frechet_distance_singular_covariances():
    """Fewer vectors than dimensions (rank-deficient covariances, as FD on 2048-d PANNs embeddings of fewer than
    2049 clips): the value is still the closed form, from sqrtm and from the eigenvalue cross-check."""
    rng = np.random.default_rng(3)
    d = 16
    cov1, cov2, l1, l2 = commuting_pair(rng, d, rank1=6, rank2=9)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    r = M.frechet_distance_from_stats((mu1, cov1), (mu2, cov2))
    assert abs(r.value - expected) <= 1e-7 * expected, (r.value, expected)
    assert abs(r.value_eig - expected) <= 1e-10 * expected, (r.value_eig, expected)
    # From features: 5 clips in 20 dimensions.
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20)) + 0.5
    r = M.frechet_distance(a, b)
    assert np.isfinite(r.value) and abs(r.value - r.value_eig) <= 1e-7 * r.value


def test_frechet_distance_eps_retry(monkeypatch):
    """When sqrtm of the product is not finite (older SciPy on singular products), both covariances get eps on the
    diagonal and sqrtm runs again on their product; the formula's traces stay the unshifted ones."""
    rng = np.random.default_rng(4)
    d, eps = 6, 1e-6
    cov1, cov2, l1, l2 = commuting_pair(rng, d, rank1=2, rank2=3)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def failing_once(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(M.scipy.linalg, "sqrtm", failing_once)
    r = M.frechet_distance_from_stats((mu1, cov1), (mu2, cov2), eps=eps)
    assert r.eps_retry and len(calls) == 2
    np.testing.assert_allclose(calls[1], (cov1 + eps * np.eye(d)) @ (cov2 + eps * np.eye(d)), rtol=0, atol=1e-15)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(l1 + l2 - 2 * np.sqrt((l1 + eps) * (l2 + eps)))
    assert abs(r.value - expected) <= 1e-9 * expected, (r.value, expected)
    assert abs(r.value_eig - expected) <= 1e-9 * expected, (r.value_eig, expected)

    # Still not finite after the retry: an error, not a NaN distance.
    monkeypatch.setattr(M.scipy.linalg, "sqrtm", lambda m: np.full_like(m, np.inf))
    with pytest.raises(ValueError, match="not finite, even with 1e-06"):
        M.frechet_distance_from_stats((mu1, cov1), (mu2, cov2))


def test_frechet_distance_imaginary_part(monkeypatch):
    """A small imaginary diagonal (<= 1e-3) is rounding: dropped and reported; a large one is an error."""
    rng = np.random.default_rng(5)
    cov1, cov2, l1, l2 = commuting_pair(rng, 4)
    real_sqrtm = scipy.linalg.sqrtm
    monkeypatch.setattr(M.scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 5e-4j * np.eye(4))
    r = M.frechet_distance_from_stats((np.zeros(4), cov1), (np.zeros(4), cov2))
    assert r.max_imaginary == pytest.approx(5e-4, rel=1e-12)
    assert abs(r.value - np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))) < 1e-10
    monkeypatch.undo()
    # Not covariances (negative definite): sqrtm(-I) = iI.
    with pytest.raises(ValueError, match="imaginary component of up to 1"):
        M.frechet_distance_from_stats((np.zeros(3), np.eye(3)), (np.zeros(3), -np.eye(3)))


def test_frechet_distance_errors():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="empty feature set"):
        M.frechet_distance(np.zeros((0, 4)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        M.frechet_distance(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="expected features \\[N, D\\]"):
        M.frechet_distance(rng.normal(size=(5,)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="different lengths: 4 and 3"):
        M.frechet_distance(rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        M.frechet_distance(np.full((5, 4), np.nan), rng.normal(size=(5, 4)))


# ----------------------------------------------------------------------------------------------------------------
# FAD-inf
# ----------------------------------------------------------------------------------------------------------------


def test_fad_inf():
    """The sample sizes, draws and fit of fadtk's score_inf, the fit checked with scipy.stats.linregress."""
    rng = np.random.default_rng(7)
    d = 4
    base = M.gaussian_stats(rng.normal(size=(4000, d)))
    frames = rng.normal(size=(900, d)) * 1.2 + 0.3
    r = M.fad_inf(base, frames, steps=6, min_n=100, rng=3)
    ns = [n for n, _ in r.points]
    assert ns == [100, 260, 420, 580, 740, 900]
    draws = np.random.RandomState(3)  # the global generator after np.random.seed(3), as fadtk draws
    for n, fad in r.points:
        sample = frames[draws.choice(900, size=n, replace=True)]
        mu, cov = sample.mean(axis=0), np.cov(sample.T)
        assert fad == pytest.approx(M.frechet_distance_from_stats(base, (mu, cov)).value, rel=1e-12)
    fit = scipy.stats.linregress(1 / np.asarray(ns, float), [f for _, f in r.points])
    assert r.score == pytest.approx(fit.intercept, rel=1e-9, abs=1e-12)
    assert r.slope == pytest.approx(fit.slope, rel=1e-9)
    assert r.r2 == pytest.approx(fit.rvalue ** 2, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 sample sizes"):
        M.fad_inf(base, frames, steps=1)


# ----------------------------------------------------------------------------------------------------------------
# KL divergence
# ----------------------------------------------------------------------------------------------------------------


def logit(p):
    return np.log(p) - np.log1p(-p)


def test_kl_hand_computed():
    """Two clips, three classes; logits chosen so that softmax / sigmoid give known probabilities. Pairs by file
    name (different folders, different order); KL(ref || gen) with 1e-6 inside the generated log, mean over pairs."""
    p_ref = np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    p_gen = np.array([[0.25, 0.5, 0.25], [0.7, 0.2, 0.1]])
    # Softmax: log-probabilities plus a constant per row are logits with exactly these probabilities.
    ref_logits, gen_logits = np.log(p_ref) + 3.0, np.log(p_gen) - 1.0
    r = M.kl_divergence(gen_logits[::-1], ref_logits, ["out/b.wav", "out/a.wav"], ["gt/a.wav", "gt/b.wav"])
    by_hand = [sum(p * math.log(p / (q + 1e-6)) for p, q in zip(pr, pg)) for pr, pg in zip(p_ref, p_gen)]
    assert r.pairs == 2 and r.pairing.names == ["a.wav", "b.wav"]
    assert r.pairing.ratio_generated == r.pairing.ratio_reference == 1.0
    np.testing.assert_allclose(r.per_clip_softmax, by_hand, rtol=1e-12)
    assert r.softmax == pytest.approx(np.mean(by_hand), rel=1e-12)
    # Sigmoid: per-class probabilities, summed without the (1 - p) terms (not a Bernoulli KL), as the reference.
    s_ref, s_gen = np.array([[0.9, 0.02, 0.5]]), np.array([[0.3, 0.6, 0.5]])
    r = M.kl_divergence(logit(s_gen), logit(s_ref), ["x.wav"], ["x.wav"])
    by_hand = sum(p * math.log(p / (q + 1e-6)) for p, q in zip(s_ref[0], s_gen[0]))
    assert r.sigmoid == pytest.approx(by_hand, rel=1e-12)
    # Identical clips: 0 up to the epsilon's effect (-log(1 + 1e-6 / p) per class, weighted).
    assert abs(M.kl_divergence(ref_logits, ref_logits, ["a", "b"], ["a", "b"]).softmax) < 1e-5


def test_kl_matches_torch_kl_div():
    """Random 527-class logits against the reference's expression in torch (float64):
    kl_div(log(softmax(gen) + 1e-6), softmax(ref), reduction="sum") / N, and the same with sigmoids."""
    rng = np.random.default_rng(8)
    gen, ref = rng.normal(size=(40, 527)) * 3, rng.normal(size=(40, 527)) * 3
    names = [f"{i:03d}.wav" for i in range(40)]
    r = M.kl_divergence(gen, ref, names, names)
    g, t = torch.from_numpy(gen), torch.from_numpy(ref)
    soft = torch.nn.functional.kl_div((g.softmax(1) + 1e-6).log(), t.softmax(1), reduction="sum") / 40
    sig = torch.nn.functional.kl_div((g.sigmoid() + 1e-6).log(), t.sigmoid(), reduction="sum") / 40
    assert r.softmax == pytest.approx(float(soft), rel=1e-12)
    assert r.sigmoid == pytest.approx(float(sig), rel=1e-12)


def test_kl_pairing_threshold():
    """More than 99 % of each set's names must match: 199 of 200 pairs, 99 of 100 does not (audioldm_eval's
    strict '>'), nor do sets where one side has extra clips."""
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(200, 5))
    names = [f"c{i}.wav" for i in range(200)]
    r = M.kl_divergence(logits, logits, names[:199] + ["other.wav"], names)
    assert r.pairs == 199 and r.pairing.ratio_generated == r.pairing.ratio_reference == 0.995
    np.testing.assert_array_equal(r.pairing.reference, np.arange(199))
    with pytest.raises(ValueError, match="only 99 names are in both sets \\(100 generated, 100 reference"):
        M.kl_divergence(logits[:100], logits[:100], names[:99] + ["other.wav"], names[:100])
    with pytest.raises(ValueError, match="only 100 names are in both sets \\(100 generated, 200 reference"):
        M.kl_divergence(logits[:100], logits, names[:100], names)


def test_kl_errors():
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="more than once"):
        M.kl_divergence(logits, logits, ["a/x.wav", "b/x.wav", "y.wav"], ["x.wav", "y.wav", "z.wav"])
    with pytest.raises(ValueError, match="3 rows of logits but 2 file names"):
        M.kl_divergence(logits, logits, ["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="different class counts: 4 and 5"):
        M.kl_divergence(logits, np.zeros((3, 5)), ["a", "b", "c"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="empty feature set"):
        M.kl_divergence(np.zeros((0, 4)), logits, [], ["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------------
# Inception score
# ----------------------------------------------------------------------------------------------------------------


def test_inception_score_known_distributions():
    # Each clip certain of its own class, 10 distinct classes per split: every split's marginal is uniform over 10
    # classes, so IS = exp(log 10) = 10 whatever the shuffle.
    logits = np.full((100, 527), -200.0)
    logits[np.arange(100), np.arange(100)] = 0.0
    r = M.inception_score(logits)
    assert r.mean == pytest.approx(10.0, rel=1e-12) and r.std < 1e-10
    # Every clip the same distribution: the KL to the marginal is 0, IS = 1.
    same = np.tile(np.random.default_rng(10).normal(size=527), (30, 1))
    assert M.inception_score(same).mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_splits_and_seed():
    """Random logits, N not divisible by 10, against scipy: rows permuted by RandomState(2020), split i =
    rows i*N//10 .. (i+1)*N//10, exp(mean entropy(p_i, p_bar)), mean and population std."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(57, 527)) * 4
    perm = np.random.RandomState(2020).permutation(57)
    p = scipy.special.softmax(logits[perm], axis=1)
    scores = []
    for i in range(10):
        chunk = p[i * 57 // 10:(i + 1) * 57 // 10]
        scores.append(math.exp(np.mean([scipy.stats.entropy(row, chunk.mean(axis=0)) for row in chunk])))
    r = M.inception_score(logits)
    np.testing.assert_allclose(r.splits, scores, rtol=1e-12)
    assert r.mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert r.std == pytest.approx(np.std(scores), rel=1e-10)
    # The seed matters (the splits differ), the mean of an unshuffled run differs too.
    assert M.inception_score(logits, seed=1).mean != pytest.approx(r.mean, rel=1e-6)
    with pytest.raises(ValueError, match="9 clips cannot fill 10 splits"):
        M.inception_score(logits[:9])


# ----------------------------------------------------------------------------------------------------------------
# CLAP score
# ----------------------------------------------------------------------------------------------------------------


def test_clap_score_cosines():
    text = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    audio = np.array([[1.0, 1.0], [0.0, -5.0], [3.0, 4.0]])
    r = M.clap_score(text, audio)
    np.testing.assert_allclose(r.per_clip, [1 / math.sqrt(2), -1.0, 1.0], rtol=1e-15)
    assert r.mean == pytest.approx((1 / math.sqrt(2)) / 3, rel=1e-14)
    assert r.std == pytest.approx(np.std([1 / math.sqrt(2), -1.0, 1.0]), rel=1e-14)
    with pytest.raises(ValueError, match="one text embedding per clip"):
        M.clap_score(text[:2], audio)


@pytest.mark.slow
def test_clap_scores_helper_against_transformers(tmp_path):
    """Prompts + 16 kHz clips -> per-clip CLAP score with our CLAP, against transformers' ``ClapModel`` (random
    weights perturbed, saved and loaded through our converter) fed by its own ``ClapFeatureExtractor`` on what
    ``librosa.resample`` computes by default (soxr "HQ", called directly: importing librosa costs seconds): the cosine
    of its text_embeds and audio_embeds. fp32 parity: 1e-4 absolute on cosines."""
    import transformers  # deferred: transformers and the fixtures' imports of it cost seconds
    from pipeline_fixtures import CORPUS, roberta_tokenizer
    from test_clap import _small_config, build

    config = _small_config()
    config.text_config.vocab_size = 300
    model, ours_config, variables = build(tmp_path / "clap", config, seed=3)
    tokenizer = roberta_tokenizer(model_max_length=24)
    extractor = transformers.ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480,
                                                  max_length_s=2, fft_window_size=1024, frequency_min=50,
                                                  frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    extractor.save_pretrained(tmp_path / "fe")
    features = ClapFeatureConfig.from_preprocessor_config(
        json.loads((tmp_path / "fe" / "preprocessor_config.json").read_text()))
    prompts = CORPUS[:3]
    waves = [np.random.RandomState(i).randn(n).astype(np.float32) * 0.3 for i, n in enumerate((8000, 12000, 9000))]

    embedder = ClapEmbedder(ours_config, variables, tokenizer, features)
    ours = clap_scores(embedder, prompts, waves, sampling_rate=16000, batch_size=3)  # one compile per tower

    tok = tokenizer(prompts, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    inputs = extractor([soxr.resample(w, 16000, 48000, quality="HQ") for w in waves], sampling_rate=48000,
                       return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                    input_features=inputs["input_features"])
    ref = torch.nn.functional.cosine_similarity(out.text_embeds, out.audio_embeds, dim=-1).double().numpy()
    err = np.abs(ours.per_clip - ref).max()
    print(f"CLAP score per clip: ours {ours.per_clip}, reference {ref}, max error {err:.2e}")
    assert err < 1e-4
    assert ours.mean == pytest.approx(ref.mean(), abs=1e-4)
    assert np.ptp(ref) > 0.03  # the clips score differently: a swapped pairing would show
    with pytest.raises(ValueError, match="2 prompts for 3 clips"):
        clap_scores(embedder, prompts[:2], waves, sampling_rate=16000)
    text_only = {"params": {k: v for k, v in variables["params"].items() if k.startswith("text")}}
    with pytest.raises(ValueError, match="text tower only"):
        ClapEmbedder(ours_config, text_only, tokenizer, features)
