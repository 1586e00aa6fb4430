"""Scaling-law fits: Chinchilla's approach 2 (isoFLOP parabolas -> power laws of the optimal size and data in compute)
and approach 3 (the parametric law ``L(N, D) = E + A / N^alpha + B / D^beta``, fitted as Besiroglu et al. 2024 refit
it: Huber loss on log L, summed over runs, L-BFGS from a grid of initialisations), each with bootstrap intervals.

Units are the sweep's: ``N`` trainable parameters (the UNet), ``D`` training examples seen (batch x steps), ``C``
training FLOPs (``flops_per_example x D``). A convolutional UNet does not cost ``6 N`` FLOPs per example (its kernels
run at every latent position), so the compute model is measured, not assumed: ``flops_per_example = k N^gamma``
fitted over the sweep's models (:func:`fit_flops_model`), and the compute-optimal allocation of the parametric law is
solved under that constraint (``gamma = 1`` is Chinchilla's ``C = 6 N D`` with ``k = 6``).

Pure numpy / scipy; every random draw comes from a ``numpy.random.Generator`` seeded by the caller.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize

DEFAULT_LEVEL = 0.9
# Besiroglu et al.'s grid of initialisations (alpha, beta in 0..2; log A, log B in 0..25; log E in -1..1).
DEFAULT_INIT_GRID = dict(alpha=np.linspace(0.0, 2.0, 5), beta=np.linspace(0.0, 2.0, 5),
                         log_a=np.linspace(0.0, 25.0, 6), log_b=np.linspace(0.0, 25.0, 6),
                         log_e=np.linspace(-1.0, 1.0, 5))
HUBER_DELTA = 1e-3  # on log L residuals, as in the refit


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunPoint:
    """One finished run: ``params`` N, ``examples`` D, ``compute`` C (FLOPs), its ``budget`` (the nominal C of its
    isoFLOP group) and final held-out ``loss``."""
    name: str
    params: float
    examples: float
    compute: float
    budget: float
    loss: float

    @property
    def flops_per_example(self) -> float:
        return self.compute / self.examples


def points_from_rows(rows: Iterable[Mapping]) -> list[RunPoint]:
    """RunPoints from result rows (dicts with ``name, params, examples, compute, budget, loss``); rows without a
    finite positive loss are left out. A row missing a field raises a ValueError naming it."""
    out = []
    for row in rows:
        missing = [k for k in ("name", "params", "examples", "compute", "budget", "loss") if k not in row]
        if missing:
            raise ValueError(f"result row {row.get('name', row)!r} lacks {missing}")
        loss = row["loss"]
        if loss is None or not math.isfinite(float(loss)) or float(loss) <= 0:
            continue
        out.append(RunPoint(str(row["name"]), float(row["params"]), float(row["examples"]), float(row["compute"]),
                            float(row["budget"]), float(loss)))
    return out


def _check_points(points: Sequence[RunPoint], what: str) -> None:
    for p in points:
        for key in ("params", "examples", "compute", "budget", "loss"):
            value = getattr(p, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{what}: run {p.name!r} has {key}={value!r}; every value must be finite and > 0")


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite ``samples`` at ``level`` (NaNs when there are none)."""
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


# ----------------------------------------------------------------------------------------------------------------
# Power laws and the compute model
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """``y = coefficient * x ** exponent``; ``exponent_ci`` / ``coefficient_ci`` at ``level`` (NaN without a
    bootstrap)."""
    coefficient: float
    exponent: float
    exponent_ci: tuple[float, float] = (math.nan, math.nan)
    coefficient_ci: tuple[float, float] = (math.nan, math.nan)
    level: float = DEFAULT_LEVEL

    def __call__(self, x):
        return self.coefficient * np.asarray(x, float) ** self.exponent

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_power_law(x, y) -> PowerLaw:
    """Least squares of ``log y`` on ``log x`` (at least two distinct ``x``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError(f"a power law needs at least two distinct x values, got {x.tolist()}")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(math.exp(intercept)), float(slope))


def fit_flops_model(points: Sequence[RunPoint]) -> PowerLaw:
    """``flops_per_example = k N^gamma`` over the distinct models of the sweep (one point per parameter count). With a
    single model size ``gamma`` is taken as 1."""
    per_model: dict[float, float] = {}
    for p in points:
        per_model[p.params] = p.flops_per_example
    n = np.array(sorted(per_model))
    f = np.array([per_model[v] for v in n])
    if n.size < 2:
        return PowerLaw(float(f[0] / n[0]), 1.0)
    return fit_power_law(n, f)


# ----------------------------------------------------------------------------------------------------------------
# Approach 2: isoFLOP parabolas
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IsoFLOPBudget:
    """The parabola ``log L = c2 x^2 + c1 x + c0`` in ``x = log N`` of one budget and its vertex: ``params_opt``
    (N*), ``examples_opt`` (D* = C / flops_per_example(N*)), ``loss_opt``; ``inside``: whether N* lies within the
    sizes trained (outside, the optimum is an extrapolation)."""
    budget: float
    coefficients: tuple[float, float, float]
    params_opt: float
    examples_opt: float
    loss_opt: float
    inside: bool
    runs: int

    def curve(self, params):
        """The fitted loss at parameter counts ``params``."""
        x = np.log(np.asarray(params, float))
        c2, c1, c0 = self.coefficients
        return np.exp(c2 * x * x + c1 * x + c0)


@dataclasses.dataclass(frozen=True)
class IsoFLOPFit:
    """Approach 2's result: per-budget vertices, ``params_opt`` N*(C) and ``examples_opt`` D*(C) power laws with
    bootstrap intervals on their exponents, and the optimum's examples per parameter D*/N* per budget (with its
    power law in C). ``bootstrap``: replicates drawn; ``bootstrap_failed``: those where some budget's parabola had no
    minimum (left out of the intervals); ``residual_dof``: degrees of freedom the residual bootstrap rests on;
    ``left_out``: ``{budget: why}`` for the budgets the power laws do not rest on."""
    budgets: tuple[IsoFLOPBudget, ...]
    params_opt: PowerLaw
    examples_opt: PowerLaw
    examples_per_param: PowerLaw
    flops_model: PowerLaw
    bootstrap: int
    bootstrap_failed: int
    residual_dof: int
    left_out: Mapping[float, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(budgets=[dataclasses.asdict(b) for b in self.budgets], params_opt=self.params_opt.as_dict(),
                    examples_opt=self.examples_opt.as_dict(), examples_per_param=self.examples_per_param.as_dict(),
                    flops_model=self.flops_model.as_dict(), bootstrap=self.bootstrap,
                    bootstrap_failed=self.bootstrap_failed, residual_dof=self.residual_dof,
                    left_out={f"{b:.6g}": why for b, why in self.left_out.items()})


def _group_by_budget(points: Sequence[RunPoint]) -> dict[float, list[RunPoint]]:
    groups: dict[float, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(p.budget, []).append(p)
    return dict(sorted(groups.items()))


def _parabolas(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares parabolas of many curves at once: ``x [n]``, ``y [R, n]`` -> coefficients ``[R, 3]``
    (c2, c1, c0)."""
    design = np.stack([x * x, x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y.T, rcond=None)
    return coef.T


def _vertices(coef: np.ndarray) -> np.ndarray:
    """Vertex x of parabolas ``[R, 3]``; NaN where the parabola has no minimum (c2 <= 0)."""
    c2, c1 = coef[:, 0], coef[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c2 > 0, -c1 / (2 * c2), np.nan)


def _slopes(log_c: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of many ``log_y [R, B]`` on one ``log_c [B]``."""
    xc = log_c - log_c.mean()
    return ((log_y - log_y.mean(axis=1, keepdims=True)) * xc).sum(axis=1) / (xc * xc).sum()


def fit_isoflop(points: Sequence[RunPoint], bootstrap: int = 1000, level: float = DEFAULT_LEVEL,
                seed: int = 0) -> IsoFLOPFit:
    """Approach 2 on ``points`` grouped by ``budget``: a parabola of log L in log N per budget, its vertex N*,
    D* = C / (k N*^gamma) with the measured compute model (fitted on every point), then power laws N*(C) and D*(C)
    across the budgets (at least two). A budget is left out (``IsoFLOPFit.left_out``, with the reason) when it has
    fewer than three model sizes or its parabola opens downwards (no minimum: its sizes do not bracket an optimum,
    or noise hides it), as an isoFLOP analysis drops a curve it cannot read a minimum from.

    Intervals: a residual bootstrap. The parabolas' residuals, pooled over budgets and scaled by
    ``sqrt(n / (n - 3))`` for the fitted coefficients, are resampled onto every fitted curve; each replicate is
    refitted end to end (parabolas, vertices, power laws); percentile intervals at ``level``. A budget of exactly
    three sizes has no residual of its own (its parabola interpolates): with no budget above three sizes the
    intervals are NaN (``residual_dof = 0``)."""
    points = list(points)
    _check_points(points, "isoFLOP fit")
    flops = fit_flops_model(points)
    left_out: dict[float, str] = {}
    budgets, xs, ys, coefs, rows = [], [], [], [], []
    for budget, group in _group_by_budget(points).items():
        x = np.log(np.array([p.params for p in group]))
        if len(set(x)) < 3:
            left_out[budget] = f"{len(set(x))} model sizes (fewer than three)"
            continue
        y = np.log(np.array([p.loss for p in group]))
        c = _parabolas(x, y[None])[0]
        vertex = _vertices(c[None])[0]
        if not np.isfinite(vertex):
            left_out[budget] = f"not convex in log N (parabola coefficient {c[0]:.3g} <= 0: no minimum)"
            continue
        n_opt = math.exp(vertex)
        budgets.append(budget)
        xs.append(x)
        ys.append(y)
        coefs.append(c)
        rows.append(IsoFLOPBudget(float(budget), tuple(float(v) for v in c), n_opt, float(budget / flops(n_opt)),
                                  float(math.exp(np.polyval(c, vertex))), bool(x.min() <= vertex <= x.max()),
                                  len(x)))
    if len(rows) < 2:
        detail = "; ".join(f"budget {b:.3g}: {why}" for b, why in left_out.items())
        raise ValueError(f"isoFLOP fit: needs at least two budgets with a minimum over at least three model sizes, "
                         f"got {len(rows)}" + (f" (left out: {detail}); add smaller and larger models" if detail
                                               else ""))
    budgets = np.array(budgets)
    fitted = [np.polyval(c, x) for c, x in zip(coefs, xs)]
    n_law = fit_power_law(budgets, [r.params_opt for r in rows])
    d_law = fit_power_law(budgets, [r.examples_opt for r in rows])
    ratio_law = fit_power_law(budgets, [r.examples_opt / r.params_opt for r in rows])

    dof = int(sum(len(y) - 3 for y in ys))
    failed = 0
    if bootstrap > 0 and dof > 0:
        residuals = np.concatenate([(y - f) * math.sqrt(len(y) / (len(y) - 3)) for y, f in zip(ys, fitted)
                                    if len(y) > 3])
        rng = np.random.default_rng(seed)
        log_c = np.log(budgets)
        log_n = np.empty((bootstrap, len(budgets)))
        for j, (x, f) in enumerate(zip(xs, fitted)):
            y_star = f[None] + rng.choice(residuals, size=(bootstrap, len(x)), replace=True)
            log_n[:, j] = _vertices(_parabolas(x, y_star))
        ok = np.all(np.isfinite(log_n), axis=1)
        failed = int((~ok).sum())
        log_n = log_n[ok]
        log_d = log_c[None] - math.log(flops.coefficient) - flops.exponent * log_n
        n_law = _with_intervals(n_law, log_c, log_n, level)
        d_law = _with_intervals(d_law, log_c, log_d, level)
        ratio_law = _with_intervals(ratio_law, log_c, log_d - log_n, level)
    return IsoFLOPFit(tuple(rows), n_law, d_law, ratio_law, flops, int(bootstrap if dof > 0 else 0), failed, dof,
                      left_out)


def _with_intervals(law: PowerLaw, log_c: np.ndarray, log_y: np.ndarray, level: float) -> PowerLaw:
    slopes = _slopes(log_c, log_y)
    intercepts = log_y.mean(axis=1) - slopes * log_c.mean()
    lo, hi = _interval(np.exp(intercepts), level)
    return dataclasses.replace(law, exponent_ci=_interval(slopes, level), coefficient_ci=(lo, hi), level=level)


# ----------------------------------------------------------------------------------------------------------------
# Approach 3: the parametric law
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParametricFit:
    """``L(N, D) = E + A / N^alpha + B / D^beta``; ``intervals``: ``{name: (lo, hi)}`` at ``level`` for E, A, B,
    alpha, beta and ``a = beta / (alpha + gamma beta)`` (the exponent of N_opt in C); ``objective``: the summed
    Huber loss at the fit; ``flops_model``: ``flops_per_example = k N^gamma`` used for the compute-optimal
    allocation."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    flops_model: PowerLaw
    intervals: dict
    level: float
    bootstrap: int
    runs: int

    def loss(self, params, examples):
        n, d = np.asarray(params, float), np.asarray(examples, float)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def params_exponent(self) -> float:
        """``a`` in ``N_opt ~ C^a``."""
        return _params_exponent(self.alpha, self.beta, self.flops_model.exponent)

    def optimum(self, compute):
        """``(N_opt, D_opt)`` at ``compute`` FLOPs: minimise L(N, C / (k N^gamma)) over N (closed form:
        ``alpha A N^-alpha = gamma beta B D^-beta`` at the optimum)."""
        return compute_optimal(self.A, self.B, self.alpha, self.beta, compute, self.flops_model)

    def examples_per_param(self, compute):
        n, d = self.optimum(compute)
        return d / n

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("E", "A", "B", "alpha", "beta", "objective", "level", "bootstrap",
                                             "runs")}
        out["params_exponent"] = self.params_exponent
        out["flops_model"] = self.flops_model.as_dict()
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def _params_exponent(alpha, beta, gamma):
    return beta / (alpha + gamma * beta)


def compute_optimal(A, B, alpha, beta, compute, flops_model: PowerLaw):
    """``(N_opt, D_opt)`` of ``E + A/N^alpha + B/D^beta`` at ``compute`` FLOPs with ``C = k N^gamma D``."""
    k, gamma = flops_model.coefficient, flops_model.exponent
    c = np.asarray(compute, float)
    n = (alpha * A / (gamma * beta * B)) ** (1 / (alpha + gamma * beta)) * (c / k) ** _params_exponent(alpha, beta,
                                                                                                       gamma)
    return n, c / (k * n ** gamma)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
               weights: np.ndarray):
    """Summed Huber loss of ``log L_pred - log L`` and its gradient; ``theta = (log A, log B, log E, alpha, beta)``,
    ``log L_pred = logsumexp(log A - alpha log N, log B - beta log D, log E)``; ``weights``: multiplicity of each run
    (a bootstrap's resampling counts)."""
    log_a, log_b, log_e, alpha, beta = theta
    t_n = log_a - alpha * log_n
    t_d = log_b - beta * log_d
    top = np.maximum(np.maximum(t_n, t_d), log_e)  # the log-sum-exp, stable, by hand: scipy's costs 5x more here
    e_n, e_d, e_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(log_e - top)
    total = e_n + e_d + e_e
    value, slope = _huber(top + np.log(total) - log_l, delta)
    scale = slope * weights / total
    w_n, w_d = e_n * scale, e_d * scale
    grad = np.array([w_n.sum(), w_d.sum(), (e_e * scale).sum(), -(w_n @ log_n), -(w_d @ log_d)])
    return float(value @ weights), grad


def _grid(init_grid: Mapping[str, Sequence[float]]) -> np.ndarray:
    keys = ("log_a", "log_b", "log_e", "alpha", "beta")
    missing = [k for k in keys if k not in init_grid]
    if missing:
        raise ValueError(f"init_grid lacks {missing} (keys: {keys})")
    return np.array(list(itertools.product(*(np.asarray(init_grid[k], float) for k in keys))))


def _minimise(start: np.ndarray, args) -> optimize.OptimizeResult:
    return optimize.minimize(_objective, start, args=args, jac=True, method="L-BFGS-B",
                             options=dict(maxiter=2000, ftol=1e-15, gtol=1e-12))


def _batched_terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray):
    """``theta [R, 5]`` -> predicted ``log L [R, n]`` and its Jacobian ``[R, n, 5]``."""
    log_a, log_b, log_e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.broadcast_to(log_e, (len(theta), len(log_n)))])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    weights /= total
    jac = np.stack([weights[0], weights[1], weights[2], -weights[0] * log_n, -weights[1] * log_d], axis=-1)
    return top + np.log(total), jac


def _batched_objective(theta, log_n, log_d, log_l, delta, counts):
    pred, _ = _batched_terms(theta, log_n, log_d)
    return (_huber(pred - log_l, delta)[0] * counts).sum(axis=1)


def minimise_batched(starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
                     counts: np.ndarray, iterations: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Many fits of the summed Huber objective at once (``starts [R, 5]``, targets ``log_l [n]`` or ``[R, n]``, run
    multiplicities ``counts [R, n]``):
    iteratively reweighted, damped Gauss-Newton (Levenberg-Marquardt). Each iteration solves
    ``(J^T W J + lam diag) step = -J^T W r`` with the Huber weights ``W = counts * min(1, delta / |r|)`` (then
    ``J^T W r`` is the objective's gradient), keeps a step only where it lowers the objective and adapts ``lam`` per
    fit. Returns ``(theta [R, 5], objective [R])``. Used for the bootstrap and to screen the grid of starts, where
    scipy's one-at-a-time L-BFGS costs minutes."""
    theta = np.array(starts, float)
    value = _batched_objective(theta, log_n, log_d, log_l, delta, counts)
    lam = np.full(len(theta), 1e-3)
    done = ~np.isfinite(value)
    eye = np.eye(5)
    for _ in range(iterations):
        pred, jac = _batched_terms(theta, log_n, log_d)
        r = pred - log_l
        w = counts * np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), delta))
        jtw = jac * w[..., None]
        hess = np.einsum("rni,rnj->rij", jtw, jac)
        grad = np.einsum("rni,rn->ri", jtw, r)
        damped = hess + lam[:, None, None] * (hess * eye) + 1e-12 * eye
        step = np.linalg.solve(damped, -grad[..., None])[..., 0]
        trial = theta + step
        trial_value = _batched_objective(trial, log_n, log_d, log_l, delta, counts)
        better = ~done & np.isfinite(trial_value) & (trial_value < value)
        # converged: an accepted step that gains almost nothing, or damping so strong that steps vanish
        done |= better & (value - trial_value <= 1e-13 * value)
        theta = np.where(better[:, None], trial, theta)
        value = np.where(better, trial_value, value)
        lam = np.where(better, np.maximum(lam / 3, 1e-9), lam * 4)
        done |= lam >= 1e9
        if done.all():
            break
    return theta, value


def fit_parametric(points: Sequence[RunPoint], init_grid: Mapping[str, Sequence[float]] | None = None,
                   delta: float = HUBER_DELTA, bootstrap: int = 200, level: float = DEFAULT_LEVEL, seed: int = 0,
                   flops_model: PowerLaw | None = None, polish: int = 8,
                   resample: str = "residuals") -> ParametricFit:
    """Approach 3: minimises the summed (not averaged: an averaged loss stops L-BFGS early, the refit's finding)
    Huber loss of log-space residuals from every point of ``init_grid`` (default: the refit's grid, 4500 starts):
    all starts descend together (:func:`minimise_batched`), then L-BFGS-B polishes the ``polish`` best end points
    (0: none) and the lowest objective wins.

    Intervals: percentile at ``level`` over ``bootstrap`` refits, each from the full fit's optimum, of resampled
    data: ``resample="residuals"`` (default) keeps the sweep's design and adds the fit's log residuals, scaled by
    ``sqrt(n / (n - 5))``, drawn with replacement, to the fitted curve; ``"pairs"`` resamples whole runs, which
    drops model sizes from some replicates and, on a sweep of a few sizes, gives intervals wider than their level
    (measured: 80 % intervals covering 90-95 % of draws; tests/test_scaling_fit.py). ``flops_model`` defaults to
    :func:`fit_flops_model` of the points."""
    points = list(points)
    _check_points(points, "parametric fit")
    if len(points) < 6:
        raise ValueError(f"parametric fit: five parameters need more than five runs, got {len(points)}")
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.examples for p in points])
    log_l = np.log([p.loss for p in points])
    ones = np.ones_like(log_n)
    args = (log_n, log_d, log_l, float(delta), ones)
    starts = _grid(init_grid or DEFAULT_INIT_GRID)
    with np.errstate(over="ignore", invalid="ignore"):
        ends, values = minimise_batched(starts, log_n, log_d, log_l, float(delta), np.broadcast_to(ones, (len(starts),
                                                                                                       len(ones))))
    order = np.argsort(np.where(np.isfinite(values), values, np.inf))
    if not np.isfinite(values[order[0]]):
        raise RuntimeError("parametric fit: no start converged to a finite point")
    theta, objective = ends[order[0]], float(values[order[0]])
    for index in order[:max(0, int(polish))]:
        result = _minimise(ends[index], args)
        if np.all(np.isfinite(result.x)) and result.fun < objective:
            theta, objective = result.x, float(result.fun)
    flops = flops_model or fit_flops_model(points)

    names = ("E", "A", "B", "alpha", "beta", "params_exponent")
    intervals = {k: (math.nan, math.nan) for k in names}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        starts = np.repeat(theta[None], bootstrap, axis=0)
        if resample == "pairs":
            counts = np.stack([np.bincount(rng.integers(0, len(points), len(points)), minlength=len(points))
                               for _ in range(bootstrap)]).astype(float)
            targets = log_l
        elif resample == "residuals":
            fitted = _batched_terms(theta[None], log_n, log_d)[0][0]
            residuals = (log_l - fitted) * math.sqrt(len(points) / (len(points) - 5))
            targets = fitted[None] + rng.choice(residuals, size=(bootstrap, len(points)), replace=True)
            counts = np.ones((bootstrap, len(points)))
        else:
            raise ValueError(f"resample={resample!r} is not 'residuals' or 'pairs'")
        with np.errstate(over="ignore", invalid="ignore"):
            draws, _ = minimise_batched(starts, log_n, log_d, targets, float(delta), counts)
        log_a, log_b, log_e, alpha, beta = draws.T
        table = np.stack([np.exp(log_e), np.exp(log_a), np.exp(log_b), alpha, beta,
                          _params_exponent(alpha, beta, flops.exponent)], axis=1)
        intervals = {k: _interval(table[:, i], level) for i, k in enumerate(names)}
    log_a, log_b, log_e, alpha, beta = (float(v) for v in theta)
    return ParametricFit(math.exp(log_e), math.exp(log_a), math.exp(log_b), alpha, beta, objective, flops,
                         intervals, level, int(bootstrap), len(points))


__all__ = ["DEFAULT_INIT_GRID", "DEFAULT_LEVEL", "HUBER_DELTA", "IsoFLOPBudget", "IsoFLOPFit", "ParametricFit",
           "PowerLaw", "RunPoint", "compute_optimal", "fit_flops_model", "fit_isoflop", "fit_parametric",
           "fit_power_law", "minimise_batched", "points_from_rows"]
