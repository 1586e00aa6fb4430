"""The field's evaluation formulas on precomputed features: Frechet distance (FD on PANNs CNN14 embeddings, FAD on
VGGish frames), paired KL divergence and Inception score on the 527 AudioSet logits, CLAP score, and fadtk's FAD-inf.

Each function follows a named reference tool and says where it departs from it:

- ``audioldm_eval`` (haoheliu/audioldm_eval: ``metrics/fid.py``, ``metrics/fad.py``, ``metrics/kl.py``,
  ``metrics/isc.py``, ``eval.py``): FD, FAD, KL, IS and the pairing rule;
- ``torch-fidelity`` (``metric_isc.py``): the same Inception score (audioldm_eval's is a copy of it);
- ``frechet-audio-distance`` (gudgud96, ``fad.py``, ``clap_score.py``): the same Frechet function, CLAP score;
- ``fadtk`` (microsoft/fadtk, ``fad.py``): the eigendecomposition form of the Frechet trace and FAD-inf.

All arithmetic is NumPy float64. The references feed float32 network outputs: ``np.cov`` promotes them to float64,
but their means (``np.mean``), softmaxes and sigmoids (torch) stay in float32, so they agree with these functions to
float32 rounding (measured on random features: 1e-10 .. 1e-7 relative), and exactly (FD, KL) or to 1e-14 on float64
inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import warnings
from typing import Any, Sequence

import numpy as np
import scipy.linalg

# The references' constants.
FRECHET_EPS = 1e-6  # added to both covariance diagonals when sqrtm of their product is not finite
IMAGINARY_ATOL = 1e-3  # largest |imaginary part| on sqrtm's diagonal that is dropped as rounding
KL_EPS = 1e-6  # added to the generated clip's probabilities inside the log
PAIRING_THRESHOLD = 0.99  # paired KL needs MORE than this share of names in common, in both directions
IS_SPLITS = 10
IS_SEED = 2020  # np.random.RandomState(2020).permutation(N) shuffles the clips before splitting
FAD_INF_STEPS = 25
FAD_INF_MIN_N = 500
CROSS_CHECK_TOLERANCE = 1e-3  # warn when sqrtm and the eigenvalue cross-check differ by more (fadtk: its 2 traces)


def _features(x: Any, what: str) -> np.ndarray:
    """``[N, D]`` finite float64 features, or a ValueError naming ``what`` is wrong."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected features [N, D], got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what}: empty feature set (shape {a.shape})")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: {int((~np.isfinite(a)).sum())} non-finite values")
    return a


# ----------------------------------------------------------------------------------------------------------------
# Frechet distance (FD / FAD)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu [D]`` and covariance ``cov [D, D]`` (float64) of ``count`` feature vectors."""

    mu: np.ndarray
    cov: np.ndarray
    count: int


def gaussian_stats(features: Any) -> GaussianStats:
    """``features [N, D]`` (N >= 2) -> :class:`GaussianStats`: ``np.mean`` over rows and ``np.cov(rowvar=False)``,
    the unbiased (N - 1) estimator, as audioldm_eval, frechet-audio-distance and fadtk's ``calc_embd_statistics``.

    Differences: the mean is taken in float64 (the references' ``np.mean`` keeps float32 features in float32;
    fadtk even stores its embeddings as float16); fadtk's directory scorer accumulates the same statistics online
    (Chan et al.'s pairwise update), equal up to rounding.
    """
    x = _features(features, "gaussian_stats")
    if x.shape[0] < 2:
        # np.cov would divide by N - 1 = 0; fadtk asserts the same.
        raise ValueError(f"gaussian_stats: a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    return GaussianStats(mu=x.mean(axis=0), cov=np.atleast_2d(np.cov(x, rowvar=False)), count=x.shape[0])


@dataclasses.dataclass(frozen=True)
class FrechetResult:
    """``value``: the Frechet distance as audioldm_eval computes it (``scipy.linalg.sqrtm``).
    ``value_eig``: the same distance with the trace of the matrix square root taken from eigenvalues
    (:func:`trace_sqrt_product_eig`), an independent cross-check; ``abs(value - value_eig)`` is the numerical
    error of either. ``eps_retry``: sqrtm of the product was not finite, so ``eps * I`` was added to both
    covariances (as the references do). ``max_imaginary``: the largest ``|imag|`` on sqrtm's diagonal that was
    dropped (0.0 when sqrtm returned a real matrix)."""

    value: float
    value_eig: float
    trace_sqrt: float
    trace_sqrt_eig: float
    eps_retry: bool
    max_imaginary: float


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance through ``eigh`` (eigenvalues below 0, rounding, clipped to 0)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product_eig(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr sqrtm(cov1 @ cov2)`` without a general matrix square root: with ``A = cov1^(1/2)`` (symmetric),
    ``cov1 @ cov2 = A (A cov2 A) A^-1`` is similar to the symmetric PSD matrix ``A cov2 A``, so the trace is the sum
    of the square roots of its eigenvalues (``eigvalsh``). Also right for singular covariances (the similarity
    holds by continuity): eigenvalues below ``D * machine eps * largest`` (``np.linalg.matrix_rank``'s rank
    tolerance) are rounding noise around 0 and count as 0, since their square roots (~1e-8 each) would otherwise
    add up to an error of order ``D * 1e-8``."""
    a = _sqrt_psd(np.asarray(cov1, np.float64))
    m = a @ np.asarray(cov2, np.float64) @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tolerance = w.size * np.finfo(np.float64).eps * float(np.abs(w).max())
    return float(np.sqrt(np.where(w > tolerance, w, 0.0)).sum())


def frechet_distance_from_stats(stats1: GaussianStats | tuple, stats2: GaussianStats | tuple,
                                eps: float = FRECHET_EPS) -> FrechetResult:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2):
    ``||mu1 - mu2||^2 + tr cov1 + tr cov2 - 2 tr sqrtm(cov1 @ cov2)``.

    ``stats*``: :class:`GaussianStats` or ``(mu [D], cov [D, D])`` (e.g. fadtk's stored reference statistics).

    As audioldm_eval's ``calculate_fid`` / ``FrechetAudioDistance.calculate_frechet_distance`` (the
    pytorch-fid function): ``scipy.linalg.sqrtm(cov1 @ cov2)``; if that is not finite everywhere, sqrtm again of
    ``(cov1 + eps I) @ (cov2 + eps I)`` (the traces in the formula stay those of the unshifted covariances, as
    there); a complex result whose diagonal has an imaginary part above 1e-3 (``np.allclose(.., 0, atol=1e-3)``)
    is an error, otherwise its real part is kept.

    On rank-deficient covariances (fewer vectors than dimensions) sqrtm's trace carries rounding of order
    ``sqrt(machine eps)`` per zero eigenvalue (about 1e-8 relative; fadtk's eigendecomposition the same), which
    the cross-check avoids; the two differ by that much, far below the 1e-3 warning.

    Differences: a large imaginary part raises ValueError (audioldm_eval's FD asserts, its FAD and
    frechet-audio-distance raise ValueError), and so does a square root still not finite after the retry (the
    references would return NaN); sqrtm is called without the ``disp`` argument (deprecated in SciPy
    1.16, removed in 1.18) and on the real product (frechet-audio-distance casts it to complex first; the square
    root is the same). fadtk uses an eigendecomposition ``V sqrt(D) V^-1`` of the product as its main value and
    warns when sqrtm's trace differs by more than 1e-3; here ``value_eig`` is the cross-check (through the
    symmetric ``A cov2 A``, :func:`trace_sqrt_product_eig`, on the same, possibly shifted, covariances) and the
    same warning is given when the two distances differ by more than 1e-3 of ``max(1, |value|)``.
    """
    mu1, cov1 = _unpack_stats(stats1, "stats1")
    mu2, cov2 = _unpack_stats(stats2, "stats2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two mean vectors have different lengths: {mu1.shape[0]} and {mu2.shape[0]}")
    diff = mu1 - mu2

    covmean = _sqrtm(cov1 @ cov2)
    eps_retry = not np.isfinite(covmean).all()
    s1, s2 = cov1, cov2
    if eps_retry:
        # The product is (near) singular and sqrtm broke down: both covariances get eps on the diagonal.
        offset = np.eye(cov1.shape[0]) * eps
        s1, s2 = cov1 + offset, cov2 + offset
        covmean = _sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            raise ValueError(f"Frechet distance: sqrtm of the covariance product is not finite, even with {eps} "
                             "added to both diagonals")
    max_imaginary = 0.0
    if np.iscomplexobj(covmean):
        diagonal_imag = np.abs(np.diagonal(covmean).imag)
        if not np.allclose(diagonal_imag, 0, atol=IMAGINARY_ATOL):
            raise ValueError(f"Frechet distance: sqrtm of the covariance product has an imaginary component of up to "
                             f"{np.abs(covmean.imag).max():.3g} (diagonal: {diagonal_imag.max():.3g} > "
                             f"{IMAGINARY_ATOL}); are both covariances positive semi-definite?")
        max_imaginary = float(diagonal_imag.max())
        covmean = covmean.real

    trace_sqrt = float(np.trace(covmean))
    trace_sqrt_eig = trace_sqrt_product_eig(s1, s2)
    base = float(diff @ diff + np.trace(cov1) + np.trace(cov2))
    value, value_eig = base - 2 * trace_sqrt, base - 2 * trace_sqrt_eig
    if abs(value - value_eig) > CROSS_CHECK_TOLERANCE * max(1.0, abs(value)):
        warnings.warn(f"Frechet distance: sqrtm gives {value:.6g}, the eigenvalue cross-check {value_eig:.6g}; "
                      "sqrtm is known to be inaccurate on some SciPy versions (scipy/scipy#19415)", RuntimeWarning,
                      stacklevel=2)
    return FrechetResult(value=value, value_eig=value_eig, trace_sqrt=trace_sqrt, trace_sqrt_eig=trace_sqrt_eig,
                         eps_retry=eps_retry, max_imaginary=max_imaginary)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its "Matrix is singular" LinAlgWarning: covariances of fewer vectors than
    dimensions (FD of under 2049 clips on 2048-d embeddings) are singular as a rule, and the references silence it
    too (``disp=False``); the result is checked for finiteness and against the eigenvalue trace instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(matrix)


def _unpack_stats(stats: GaussianStats | tuple, what: str) -> tuple[np.ndarray, np.ndarray]:
    mu, cov = (stats.mu, stats.cov) if isinstance(stats, GaussianStats) else stats
    mu = np.atleast_1d(np.asarray(mu, np.float64))
    cov = np.atleast_2d(np.asarray(cov, np.float64))
    if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{what}: expected mu [D] and cov [D, D], got {mu.shape} and {cov.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise ValueError(f"{what}: non-finite mean or covariance")
    return mu, cov


def frechet_distance(features1: Any, features2: Any, eps: float = FRECHET_EPS) -> FrechetResult:
    """Frechet distance between two feature sets ``[N1, D]`` and ``[N2, D]``: :func:`gaussian_stats` of each, then
    :func:`frechet_distance_from_stats`. FD: one PANNs CNN14 2048-d embedding per clip; FAD: every VGGish 128-d
    frame (one per 0.96 s) of every clip, concatenated."""
    return frechet_distance_from_stats(gaussian_stats(features1), gaussian_stats(features2), eps)


# ----------------------------------------------------------------------------------------------------------------
# FAD-inf (fadtk)
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FadInfResult:
    """``score``: FAD extrapolated to infinitely many frames (intercept of FAD against 1/n); ``slope``; ``r2``
    of the line; ``points``: ``(n, FAD)`` per sample size."""

    score: float
    slope: float
    r2: float
    points: list[tuple[int, float]]


def fad_inf(baseline: GaussianStats | tuple, features: Any, steps: int = FAD_INF_STEPS, min_n: int = FAD_INF_MIN_N,
            rng: Any = 0) -> FadInfResult:
    """fadtk's ``FrechetAudioDistance.score_inf``: ``features [N, D]`` (evaluated frames) against ``baseline``
    statistics. For each of ``steps`` sample sizes ``n = int(v)`` for ``v`` in ``np.linspace(min_n, N, steps)``,
    ``n`` frames drawn with replacement (``rng.choice(N, size=n, replace=True)``), their :func:`gaussian_stats`,
    FAD against the baseline; then ``np.polyfit(1 / n, FAD, 1)``: the intercept is FAD-inf, with the slope and R^2.

    ``rng``: an int seeds ``np.random.RandomState`` (so ``rng=s`` draws what fadtk draws after
    ``np.random.seed(s)``), or any object with ``choice`` (a ``RandomState``, a ``Generator``, ``np.random``).

    Differences: each FAD is :func:`frechet_distance_from_stats`' sqrtm value (fadtk's is its eigendecomposition
    value; they agree to rounding, which the cross-check reports); fadtk draws from NumPy's global generator.
    Like fadtk, N may be below ``min_n`` (the sizes then decrease to N; sampling with replacement allows it).
    """
    x = _features(features, "fad_inf")
    if steps < 2:
        raise ValueError(f"fad_inf: a line needs at least 2 sample sizes, got steps={steps}")
    if min_n < 2:
        raise ValueError(f"fad_inf: min_n={min_n}: a covariance needs at least 2 frames")
    if x.shape[0] < 2:
        raise ValueError(f"fad_inf: at least 2 frames needed, got {x.shape[0]}")
    rng = np.random.RandomState(rng) if isinstance(rng, (int, np.integer)) else rng
    ns = [int(v) for v in np.linspace(min_n, x.shape[0], steps)]
    points = []
    for n in ns:
        sample = x[rng.choice(x.shape[0], size=n, replace=True)]
        points.append((n, frechet_distance_from_stats(baseline, gaussian_stats(sample)).value))
    xs = 1 / np.asarray(ns, np.float64)
    ys = np.asarray([p[1] for p in points])
    slope, intercept = np.polyfit(xs, ys, 1)
    r2 = 1 - np.sum((ys - (slope * xs + intercept)) ** 2) / np.sum((ys - ys.mean()) ** 2)
    return FadInfResult(score=float(intercept), slope=float(slope), r2=float(r2), points=points)


# ----------------------------------------------------------------------------------------------------------------
# KL divergence between paired clips
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Clips paired by file name: ``generated[i]`` with ``reference[i]`` (row indices into the two sets), in the
    order of the reference set; ``names``: the shared names; ``ratio_generated`` / ``ratio_reference``: the shared
    share of each set's names."""

    generated: np.ndarray
    reference: np.ndarray
    names: list[str]
    ratio_generated: float
    ratio_reference: float


def _basenames(paths: Sequence[str | os.PathLike], what: str) -> list[str]:
    names = [os.path.basename(os.fspath(p)) for p in paths]
    if not names:
        raise ValueError(f"{what}: no clips")
    repeated = [n for n, k in collections.Counter(names).items() if k > 1]
    if repeated:
        raise ValueError(f"{what}: {len(repeated)} file names occur more than once (pairing is by name), e.g. "
                         f"{repeated[0]!r}")
    return names


def pair_by_name(generated_paths: Sequence[str | os.PathLike], reference_paths: Sequence[str | os.PathLike],
                 threshold: float = PAIRING_THRESHOLD) -> Pairing:
    """Pairs generated and reference clips by ``os.path.basename``, as audioldm_eval
    (``get_filename_intersection_ratio``, then ``calculate_kl``): the names in common must be MORE than
    ``threshold`` (0.99) of each set's names; pairs come in the reference set's order.

    Differences: below the threshold audioldm_eval silently reports KL = -1; here it is a ValueError that says how
    many names matched. A name occurring twice in one set is an error (audioldm_eval keeps the last such clip).
    """
    gen = _basenames(generated_paths, "generated clips")
    ref = _basenames(reference_paths, "reference clips")
    gen_index = {n: i for i, n in enumerate(gen)}
    shared = [n for n in ref if n in gen_index]
    ratio_gen, ratio_ref = len(shared) / len(gen), len(shared) / len(ref)
    if not (ratio_gen > threshold and ratio_ref > threshold):
        raise ValueError(
            f"KL needs clips paired by file name: only {len(shared)} names are in both sets ({len(gen)} generated, "
            f"{len(ref)} reference: {100 * ratio_gen:.1f} % and {100 * ratio_ref:.1f} %); more than "
            f"{100 * threshold:g} % of each set must match (audioldm_eval reports KL = -1 then)")
    ref_index = {n: i for i, n in enumerate(ref)}
    return Pairing(generated=np.asarray([gen_index[n] for n in shared], np.int64),
                   reference=np.asarray([ref_index[n] for n in shared], np.int64), names=shared,
                   ratio_generated=ratio_gen, ratio_reference=ratio_ref)


@dataclasses.dataclass(frozen=True)
class KLResult:
    """``softmax`` / ``sigmoid``: the two KL variants, means over the ``pairs`` paired clips; ``per_clip_*``
    ``[pairs]``: each pair's value (in ``pairing.names`` order)."""

    softmax: float
    sigmoid: float
    pairs: int
    pairing: Pairing
    per_clip_softmax: np.ndarray
    per_clip_sigmoid: np.ndarray


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # Two branches so that neither exp overflows.
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1 / (1 + e), e / (1 + e))


def _kl_terms(target: np.ndarray, prediction: np.ndarray, eps: float) -> np.ndarray:
    """``torch.nn.functional.kl_div(log(prediction + eps), target, reduction="none")`` summed over classes:
    ``sum_c target * (log target - log(prediction + eps))``, a zero target contributing 0 (torch's xlogy)."""
    safe = np.where(target > 0, target, 1.0)
    return np.sum(np.where(target > 0, target * np.log(safe), 0.0) - target * np.log(prediction + eps), axis=1)


def kl_divergence(generated_logits: Any, reference_logits: Any, generated_paths: Sequence[str | os.PathLike],
                  reference_paths: Sequence[str | os.PathLike], eps: float = KL_EPS,
                  threshold: float = PAIRING_THRESHOLD) -> KLResult:
    """Paired KL divergence between the classifier outputs of generated and reference clips, as audioldm_eval's
    ``calculate_kl`` (PANNs CNN14 logits ``[N, 527]``, before the sigmoid; clips paired by :func:`pair_by_name`):

    - softmax: mean over pairs of ``sum_c p_ref * (log p_ref - log(p_gen + 1e-6))`` with ``p = softmax(logits)``,
      i.e. KL(ref || gen) with the epsilon inside the generated clip's log only;
    - sigmoid: the same expression on element-wise sigmoids (a sum of per-class terms, not a Bernoulli KL: the
      ``1 - p`` terms are absent, as in the reference).

    Differences: float64 throughout (the reference's softmax / sigmoid / log are float32 torch); mismatched sets
    raise (see :func:`pair_by_name`).
    """
    gen = _features(generated_logits, "generated logits")
    ref = _features(reference_logits, "reference logits")
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"generated and reference logits have different class counts: {gen.shape[1]} and "
                         f"{ref.shape[1]}")
    for what, x, paths in (("generated", gen, generated_paths), ("reference", ref, reference_paths)):
        if len(paths) != x.shape[0]:
            raise ValueError(f"{what}: {x.shape[0]} rows of logits but {len(paths)} file names")
    pairing = pair_by_name(generated_paths, reference_paths, threshold)
    g, r = gen[pairing.generated], ref[pairing.reference]
    soft = _kl_terms(_softmax(r), _softmax(g), eps)
    sig = _kl_terms(_sigmoid(r), _sigmoid(g), eps)
    return KLResult(softmax=float(soft.mean()), sigmoid=float(sig.mean()), pairs=len(pairing.names),
                    pairing=pairing, per_clip_softmax=soft, per_clip_sigmoid=sig)


# ----------------------------------------------------------------------------------------------------------------
# Inception score
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InceptionScore:
    """``mean`` and ``std`` (population, ``np.std``) of the per-split scores ``splits [splits]``."""

    mean: float
    std: float
    splits: np.ndarray


def inception_score(logits: Any, splits: int = IS_SPLITS, shuffle: bool = True, seed: int = IS_SEED
                    ) -> InceptionScore:
    """Inception score of generated clips' classifier logits ``[N, C]`` (PANNs CNN14's 527 AudioSet logits), as
    torch-fidelity's ``isc_features_to_metric`` and audioldm_eval's ``calculate_isc`` (the same code, called with
    10 splits, shuffle on, seed 2020): rows permuted by ``np.random.RandomState(seed).permutation(N)``; float64
    softmax; split ``i`` is rows ``i*N//splits .. (i+1)*N//splits``; its score is
    ``exp(mean_rows sum_c p * (log p - log mean_rows(p)))``; mean and ``np.std`` over the splits.

    Difference: fewer clips than splits is an error (the reference would average empty splits into NaN).
    """
    x = _features(logits, "inception_score logits")
    n = x.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"inception_score: {n} clips cannot fill {splits} splits")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    z = x - x.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        q = p[rows].mean(axis=0, keepdims=True)
        scores.append(np.exp(np.sum(p[rows] * (log_p[rows] - np.log(q)), axis=1).mean()))
    scores = np.asarray(scores)
    return InceptionScore(mean=float(scores.mean()), std=float(scores.std()), splits=scores)


# ----------------------------------------------------------------------------------------------------------------
# CLAP score
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClapScore:
    """``mean`` / ``std`` (population) of ``per_clip [N]``, the cosine between each clip's text and audio
    embedding."""

    mean: float
    std: float
    per_clip: np.ndarray


def clap_score(text_embeds: Any, audio_embeds: Any, eps: float = 1e-12) -> ClapScore:
    """CLAP score of ``N`` clips: ``text_embeds [N, P]`` (each clip's prompt) and ``audio_embeds [N, P]``, both
    L2-normalised here (``x / max(||x||, eps)``), cosine per clip, mean over clips, as frechet-audio-distance's
    ``CLAPScore`` and Tango 2 / TangoFlux (mean cosine).

    Differences: frechet-audio-distance normalises with ``x / (||x|| + 1e-8)`` (the same to 1e-8 relative on
    embeddings that CLAP already normalises); float64. Some papers report 100 x this, or CLIPScore's
    ``max(0, w * cos)``: this is the plain mean cosine. Scores depend on the CLAP checkpoint and its audio cropping
    and are not comparable across checkpoints.
    """
    t = _features(text_embeds, "clap_score text embeddings")
    a = _features(audio_embeds, "clap_score audio embeddings")
    if t.shape != a.shape:
        raise ValueError(f"clap_score: one text embedding per clip needed: text {t.shape}, audio {a.shape}")
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), eps)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
    per_clip = np.sum(t * a, axis=1)
    return ClapScore(mean=float(per_clip.mean()), std=float(per_clip.std()), per_clip=per_clip)
