"""Scaling-law fits (audioldm2_jax/scaling/fit.py) against synthetic sweeps drawn from a known law
``L = E + A / N^alpha + B / D^beta`` (the Chinchilla refit's coefficients, Besiroglu et al. 2024) with multiplicative
noise: both fits recover the exponents within 5 %, the optimum's examples per parameter, and their bootstrap
intervals cover the truth at about their level over repeated seeded draws."""

import math

import numpy as np
import pytest
from scipy import optimize

from audioldm2_jax.scaling import fit as F

TRUE = dict(E=1.817, A=482.0, B=2085.4, alpha=0.348, beta=0.366)
FLOPS = F.PowerLaw(6.0, 1.0)  # Chinchilla's C = 6 N D
BUDGETS = np.logspace(18, 21, 4)
# A small grid of starts away from the truth (the default grid has 4500 starts: too slow for a test).
GRID = dict(alpha=[0.1, 1.0], beta=[0.1, 1.0], log_a=[2.0, 12.0], log_b=[2.0, 12.0], log_e=[-0.5, 0.5])


def true_loss(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def true_optimum(compute, flops=FLOPS):
    return F.compute_optimal(TRUE["A"], TRUE["B"], TRUE["alpha"], TRUE["beta"], compute, flops)


def synthetic(seed, budgets=BUDGETS, sizes=5, span=1.0, noise=0.01, jitter=0.3, flops=FLOPS):
    """Runs at ``sizes`` model sizes per budget, log-spaced over +-``span`` decades around the true optimum shifted
    by up to ``jitter`` decades (a sweep's grid is never centred on an optimum it does not know yet), with
    ``exp(noise * z)`` noise on the loss."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        n_opt, _ = true_optimum(c, flops)
        shift = rng.uniform(-jitter, jitter)
        for x in np.linspace(-span, span, sizes):
            n = float(n_opt) * 10 ** (x + shift)
            d = c / (flops.coefficient * n ** flops.exponent)
            loss = true_loss(n, d) * math.exp(noise * rng.standard_normal())
            points.append(F.RunPoint(f"{c:.0e}-{n:.3g}", n, d, float(c), float(c), loss))
    return points


def a_true(gamma=1.0):
    return TRUE["beta"] / (TRUE["alpha"] + gamma * TRUE["beta"])


# ----------------------------------------------------------------------------------------------------------------
# Approach 2
# ----------------------------------------------------------------------------------------------------------------


def test_isoflop_recovers_optimal_allocation():
    fit = F.fit_isoflop(synthetic(0, budgets=np.logspace(18, 22, 5), sizes=7, noise=0.005), bootstrap=500, seed=0)
    a = a_true()
    assert fit.params_opt.exponent == pytest.approx(a, rel=0.05)
    assert fit.examples_opt.exponent == pytest.approx(1 - a, rel=0.05)
    lo, hi = fit.params_opt.exponent_ci
    assert lo <= a <= hi
    assert fit.flops_model.exponent == pytest.approx(1.0, abs=1e-9)  # measured from the runs: exactly 6 N D here
    for budget in fit.budgets:
        n_opt, d_opt = true_optimum(budget.budget)
        assert budget.inside
        assert budget.params_opt == pytest.approx(n_opt, rel=0.25)
        # the optimum's examples per parameter (Chinchilla's ~20 tokens per parameter for this law)
        assert budget.examples_opt / budget.params_opt == pytest.approx(d_opt / n_opt, rel=0.5)
        assert budget.loss_opt == pytest.approx(true_loss(n_opt, d_opt), rel=0.01)


def test_isoflop_interval_coverage():
    """80 % intervals on both exponents cover the truth in 80 % of 150 seeded draws (binomial sd 3.3 %: the window
    is +-3 sd)."""
    level, draws = 0.8, 150
    hits_n = hits_d = 0
    for seed in range(draws):
        fit = F.fit_isoflop(synthetic(seed), bootstrap=300, level=level, seed=seed)
        lo, hi = fit.params_opt.exponent_ci
        hits_n += lo <= a_true() <= hi
        lo, hi = fit.examples_opt.exponent_ci
        hits_d += lo <= 1 - a_true() <= hi
        assert fit.residual_dof == 4 * 2
    for hits in (hits_n, hits_d):
        assert abs(hits / draws - level) <= 0.1, f"coverage {hits / draws:.3f} at level {level}"


def test_isoflop_leaves_out_budgets_with_fewer_than_three_sizes():
    points = synthetic(2)  # 4 budgets x 5 sizes
    partial = points[3:5] + points[5:]  # the first budget keeps two sizes
    fit = F.fit_isoflop(partial, bootstrap=50, seed=0)
    alone = F.fit_isoflop(points[5:], bootstrap=50, seed=0)
    assert fit.left_out == {BUDGETS[0]: "2 model sizes (fewer than three)"}
    assert [b.budget for b in fit.budgets] == list(BUDGETS[1:])
    # the power laws rest on the three full budgets alone (the FLOP model is fitted on every run: the same law here)
    assert fit.params_opt.exponent == pytest.approx(alone.params_opt.exponent, rel=1e-9)
    assert fit.params_opt.exponent_ci == pytest.approx(alone.params_opt.exponent_ci, rel=1e-9)


def test_isoflop_with_three_sizes_per_budget_interpolates_without_intervals():
    points = synthetic(3, sizes=3, span=0.5)
    fit = F.fit_isoflop(points, bootstrap=50, seed=0)
    assert fit.residual_dof == 0 and fit.bootstrap == 0 and np.isnan(fit.params_opt.exponent_ci).all()
    for budget, row in zip(BUDGETS, fit.budgets):
        group = [p for p in points if p.budget == budget]
        x, y = np.log([p.params for p in group]), np.log([p.loss for p in group])
        c2, c1, _ = np.polyfit(x, y, 2)  # the parabola through the three points
        assert row.params_opt == pytest.approx(math.exp(-c1 / (2 * c2)), rel=1e-9)


def test_isoflop_leaves_out_a_budget_without_a_minimum():
    points = synthetic(2)  # 4 budgets x 5 sizes
    first = points[:5]
    # the first budget's loss turned upside down in log N (a curve whose sizes miss the optimum, or noise)
    peak = [F.RunPoint(p.name, p.params, p.examples, p.compute, p.budget, 1.0 / p.loss) for p in first]
    fit = F.fit_isoflop(peak + points[5:], bootstrap=50, seed=0)
    alone = F.fit_isoflop(points[5:], bootstrap=50, seed=0)
    assert list(fit.left_out) == [BUDGETS[0]] and fit.left_out[BUDGETS[0]].startswith("not convex in log N")
    assert [b.budget for b in fit.budgets] == list(BUDGETS[1:])
    assert fit.params_opt.exponent == pytest.approx(alone.params_opt.exponent, rel=1e-9)
    assert fit.examples_opt.exponent_ci == pytest.approx(alone.examples_opt.exponent_ci, rel=1e-9)


def test_isoflop_errors_name_the_problem():
    points = synthetic(1)
    with pytest.raises(ValueError, match="at least two budgets"):
        F.fit_isoflop(points[:5])
    with pytest.raises(ValueError, match="budget .*: 2 model sizes"):
        F.fit_isoflop(points[:2] + points[5:10])
    concave = [F.RunPoint(p.name, p.params, p.examples, p.compute, p.budget, 1.0 / p.loss) for p in points]
    with pytest.raises(ValueError, match="not convex"):
        F.fit_isoflop(concave)
    with pytest.raises(ValueError, match="loss=-1"):
        F.fit_isoflop(points[:-1] + [F.RunPoint("bad", 1e6, 1e6, 6e12, 1e21, -1.0)])


# ----------------------------------------------------------------------------------------------------------------
# Approach 3
# ----------------------------------------------------------------------------------------------------------------


def test_objective_gradient_and_sum():
    """The analytic gradient matches central differences, and the loss is summed over runs: a run counted twice
    (a bootstrap weight of 2) adds its term twice."""
    points = synthetic(2)
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.examples for p in points])
    log_l = np.log([p.loss for p in points])
    ones = np.ones_like(log_n)
    theta = np.array([6.0, 7.5, 0.6, 0.33, 0.37])
    value, grad = F._objective(theta, log_n, log_d, log_l, 0.05, ones)
    numeric = optimize.approx_fprime(theta, lambda t: F._objective(t, log_n, log_d, log_l, 0.05, ones)[0], 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-8)
    twice = ones.copy()
    twice[0] = 2.0
    single, _ = F._objective(theta, log_n[:1], log_d[:1], log_l[:1], 0.05, ones[:1])
    assert F._objective(theta, log_n, log_d, log_l, 0.05, twice)[0] == pytest.approx(value + single, rel=1e-12)


@pytest.fixture(scope="module")
def parametric():
    points = synthetic(3, budgets=np.logspace(18, 22, 5), sizes=7, span=1.2, noise=0.003)
    return F.fit_parametric(points, init_grid=GRID, bootstrap=100, seed=0)


def test_parametric_recovers_law(parametric):
    fit = parametric
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.05)
    assert fit.beta == pytest.approx(TRUE["beta"], rel=0.05)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.02)
    assert fit.params_exponent == pytest.approx(a_true(), rel=0.05)
    for key in ("alpha", "beta", "params_exponent"):  # one draw: coverage is test_parametric_interval_coverage's
        lo, hi = fit.intervals[key]
        estimate = fit.params_exponent if key == "params_exponent" else getattr(fit, key)
        assert lo < estimate < hi and hi - lo < 0.1 * estimate, f"{key}: {estimate} vs ({lo}, {hi})"
    # the compute-optimal examples per parameter at 1e21 FLOPs (about 20 for this law, Chinchilla's figure)
    n_opt, d_opt = true_optimum(1e21)
    assert fit.examples_per_param(1e21) == pytest.approx(d_opt / n_opt, rel=0.15)
    assert 15 < d_opt / n_opt < 30


def test_compute_optimal_with_measured_flops_model():
    """The closed-form optimum under ``C = k N^gamma D`` is the minimum of the law along the budget (numerically)."""
    flops = F.PowerLaw(40.0, 1.15)
    for compute in (1e15, 1e19):
        n_opt, d_opt = true_optimum(compute, flops)
        along = lambda log_n: true_loss(math.exp(log_n), compute / (flops.coefficient * math.exp(log_n) ** 1.15))
        numeric = optimize.minimize_scalar(along, bounds=(0.0, 40.0), method="bounded",
                                           options=dict(xatol=1e-10)).x
        assert math.log(n_opt) == pytest.approx(numeric, abs=1e-5)
        assert d_opt == pytest.approx(compute / (40.0 * n_opt ** 1.15), rel=1e-12)


def test_parametric_interval_coverage():
    """80 % residual-bootstrap intervals on alpha, beta and N_opt's exponent cover the truth in about 80 % of 40
    seeded draws (binomial sd 6.3 %: the window is +-3 sd; measured 72, 65, 70 %), and their width matches the
    estimates' spread (measured ratio 1.02)."""
    level, draws = 0.8, 40
    keys = ("alpha", "beta", "params_exponent")
    hits = dict.fromkeys(keys, 0)
    estimates, widths = [], []
    for seed in range(draws):
        fit = F.fit_parametric(synthetic(100 + seed, sizes=5, noise=0.01), init_grid=GRID, bootstrap=100,
                               level=level, seed=seed, polish=0)
        for key in keys:
            lo, hi = fit.intervals[key]
            hits[key] += lo <= (a_true() if key == "params_exponent" else TRUE[key]) <= hi
        estimates.append(fit.alpha)
        widths.append(fit.intervals["alpha"][1] - fit.intervals["alpha"][0])
    for key, count in hits.items():
        assert abs(count / draws - level) <= 0.19, f"{key}: {count} of {draws} intervals cover the truth"
    # an 80 % interval spans about 2.56 sd of the estimator
    assert 0.7 < np.median(widths) / (2.56 * np.std(estimates)) < 1.4


def test_batched_descent_reaches_the_lbfgs_minimum():
    """The batched Gauss-Newton descent (the bootstrap's and the grid's optimiser) ends at the minimum scipy's L-BFGS-B
    finds from the same start, for a full-weight fit and a resampled one."""
    points = synthetic(5)
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.examples for p in points])
    log_l = np.log([p.loss for p in points])
    counts = np.stack([np.ones(len(points)), np.bincount(np.random.default_rng(0).integers(0, len(points),
                                                                                           len(points)),
                                                         minlength=len(points))]).astype(float)
    start = np.array([4.0, 9.0, 0.0, 0.5, 0.5])
    theta, values = F.minimise_batched(np.stack([start, start]), log_n, log_d, log_l, F.HUBER_DELTA, counts)
    for row in range(2):
        ref = F._minimise(start, (log_n, log_d, log_l, F.HUBER_DELTA, counts[row]))
        assert values[row] <= ref.fun * (1 + 1e-9)
        np.testing.assert_allclose(theta[row], ref.x, rtol=1e-4)
