"""The parametric law: Epoch AI's reproduction of Chinchilla, synthetic recovery, bad input.

CI uses the cell of Hoffmann et al.'s start grid that holds the optimum (32 of the 4500
starts; `python -m scaling chinchilla` runs the full grid, see the `slow` test) and 200
bootstrap samples instead of 4000: the Monte-Carlo error of a standard error from B samples is
about 1/sqrt(2B) = 5%, so the SEs are checked to 25% instead of the acceptance's 20%.
"""

import csv

import numpy as np
import pytest

from scaling import chinchilla_data, cli, synthetic
from scaling import fit_chinchilla as fc

CELL = fc.start_grid(**cli.LAW_GRIDS["cell"])
PUBLISHED = chinchilla_data.PUBLISHED


@pytest.fixture(scope="module")
def data():
    return chinchilla_data.load()


@pytest.fixture(scope="module")
def summed_fit(data):
    return fc.fit(*data, starts=CELL)


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_data_drops_the_five_highest_losses(data):
    n, d, loss = data
    with open(chinchilla_data.DATA_PATH, newline="") as f:
        rows = list(csv.DictReader(f))
    assert (len(rows), n.size) == (245, 240)
    threshold = sorted(float(r["loss"]) for r in rows)[-5]
    kept = [r for r in rows if float(r["loss"]) < threshold]
    np.testing.assert_array_equal(loss, [float(r["loss"]) for r in kept])
    expected_d = [float(r["Training FLOP"]) / (6 * float(r["Model Size"])) for r in kept]
    np.testing.assert_allclose(d, expected_d, rtol=1e-15)


def test_summed_huber_fit_reproduces_epoch_within_one_percent_except_b(summed_fit, data):
    law = summed_fit.law
    for name in ("E", "A", "alpha", "beta"):
        assert _rel(getattr(law, name), PUBLISHED[name]) < 0.01, name
    # B is poorly identified (bootstrap SE ~1300, 60%): the summed objective's optimum is at
    # B ~ 2143, 2.8% above the published 2085.4, and it is a better minimizer of the stated
    # objective than the published parameters, which came from the Huber likelihood below.
    assert _rel(law.B, PUBLISHED["B"]) < 0.03
    published = fc.ChinchillaLaw(**PUBLISHED).theta
    value, _ = fc.huber_objective(published, *np.log(data))
    assert summed_fit.objective_value < value
    assert summed_fit.num_at_optimum >= 2


def test_huber_likelihood_reproduces_all_published_estimates(data):
    fit = fc.fit(*data, starts=CELL, objective="huber_likelihood")
    for name, value in PUBLISHED.items():
        assert _rel(getattr(fit.law, name), value) < 0.01, name
    assert fit.law.size_exponent == pytest.approx(0.513, abs=5e-4)  # N_opt ~ C^0.513


def test_bootstrap_standard_errors_match_epoch(summed_fit, data):
    boot = fc.bootstrap_fit(*data, summed_fit, samples=200, seed=0)
    summary = boot.summary()
    for name, se in chinchilla_data.PUBLISHED_SE.items():
        assert _rel(summary[name]["se"], se) < 0.25, name
    assert boot.num_failed == 0


def test_recovers_a_known_law_within_its_intervals():
    truth = fc.ChinchillaLaw(E=1.9, A=350.0, B=900.0, alpha=0.32, beta=0.29)
    n, d = np.meshgrid(np.geomspace(5e7, 5e9, 7), np.geomspace(1e9, 3e11, 7))
    loss = synthetic.noisy_losses(truth, n.ravel(), d.ravel(), noise=0.01, seed=1)
    fit = fc.fit(n.ravel(), d.ravel(), loss, starts=CELL[::2])
    summary = fc.bootstrap_fit(n.ravel(), d.ravel(), loss, fit, samples=100, seed=2).summary(0.99)
    for name, value in truth.as_dict().items():
        assert summary[name]["ci_low"] <= value <= summary[name]["ci_high"], name
    assert abs(fit.law.alpha - truth.alpha) < 0.03 and abs(fit.law.beta - truth.beta) < 0.03


def test_compute_optimal_split_minimizes_the_law():
    law = fc.ChinchillaLaw(**PUBLISHED)
    budget = 1e22
    n_opt, d_opt = law.compute_optimal(budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget)
    n_grid = n_opt * np.geomspace(0.5, 2.0, 201)
    losses = law.loss(n_grid, budget / (6 * n_grid))
    assert n_grid[np.argmin(losses)] == pytest.approx(n_opt, rel=0.01)


def test_too_few_or_invalid_runs_are_rejected():
    with pytest.raises(fc.FitError, match="needs more than 5 runs"):
        fc.fit([1e8] * 5, [1e9] * 5, [3.0] * 5, starts=CELL)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fc.fit([1e8, -1, 1e9, 2e9, 3e9, 4e9], [1e9] * 6, [3.0] * 6, starts=CELL)


def test_failed_optimizations_are_never_reported(data, monkeypatch):
    monkeypatch.setattr(fc, "LBFGS_OPTIONS", dict(maxiter=2))
    with pytest.raises(fc.FitError, match="None of 32"):
        fc.fit(*data, starts=CELL)


def test_a_lone_optimum_is_not_trusted(summed_fit, data, monkeypatch):
    # A start near the optimum converges to it; the other fails, as one that runs out of
    # iterations. (Chosen by start: from the optimum itself L-BFGS-B's line search finds no
    # decrease and stops 'ABNORMAL', and how far a small maxiter gets varies with scipy.)
    near = summed_fit.theta * 1.001
    converge = fc._run_lbfgs
    monkeypatch.setattr(fc, "_run_lbfgs", lambda objective, theta0, args, delta: converge(
        objective, theta0, args, delta) if np.allclose(theta0, near) else None)
    starts = np.stack([near, CELL[0]])
    with pytest.raises(fc.FitError, match="Only 1 of 2 starts"):
        fc.fit(*data, starts=starts)


@pytest.mark.slow
def test_full_start_grid_finds_the_same_optimum(summed_fit, data):
    full = fc.fit(*data)
    assert full.num_starts == 4500
    for name, value in summed_fit.law.as_dict().items():
        assert getattr(full.law, name) == pytest.approx(value, rel=1e-4), name


def test_a_start_that_runs_off_to_an_unwritable_law_is_not_converged():
    # Converged in the log-parameters, but exp(log A) overflows: a failed start, not a crash.
    n = np.array([1e6, 2e6, 4e6] * 2)
    d = np.repeat([1e8, 4e8], 3)
    loss = 2 + 300 / n**0.3 + 400 / d**0.3
    starts = np.array([[800.0, 800.0, 800.0, 0.3, 0.3], [5.0, 5.0, 0.5, 0.3, 0.3]])
    with pytest.raises(fc.FitError, match="Only 1 of 2 starts"):
        fc.fit(n, d, loss, starts=starts)
