"""Loss vs compute on the frontier, and the compute-optimal allocation."""

import numpy as np
import pytest

from scaling import bootstrap, fit_allocation, fit_power_law
from scaling.fit_chinchilla import FitError


def test_pareto_frontier_keeps_runs_better_than_all_cheaper_ones():
    compute = [1, 2, 2, 3, 4, 5]
    loss = [3.0, 2.5, 2.8, 2.6, 2.0, 2.0]
    assert fit_power_law.pareto_frontier(compute, loss).tolist() == [0, 1, 4]


def test_log_linear_law_is_exact_on_exact_data():
    c = np.geomspace(1e18, 1e22, 6)
    law = fit_power_law.fit_power_law(c, 40.0 * c**-0.05)
    assert (law.k, law.b) == (pytest.approx(40.0), pytest.approx(0.05))


def test_saturating_law_recovers_its_parameters():
    truth = fit_power_law.SaturatingPowerLaw(a=300.0, b=0.15, c=1.2, d=3e18)
    c = np.geomspace(1e18, 1e23, 12)
    fit = fit_power_law.fit_saturating(c, truth.loss(c))
    np.testing.assert_allclose(fit.loss(c), truth.loss(c), rtol=1e-6)
    assert (fit.b, fit.c) == (pytest.approx(0.15, rel=0.01), pytest.approx(1.2, rel=0.01))


def test_bootstrap_intervals_hold_the_true_exponent():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e18, 1e22, 10)
    loss = 40.0 * c**-0.05 * np.exp(0.005 * rng.standard_normal(c.size))
    law = fit_power_law.fit_power_law(c, loss)
    draws, failed = fit_power_law.bootstrap_power_law(c, loss, law, samples=300, seed=1)
    ci = bootstrap.summarize(draws)["b"]
    assert failed == 0 and ci["ci_low"] < 0.05 < ci["ci_high"]
    assert ci["ci_high"] - ci["ci_low"] < 0.01


def test_too_few_frontier_points_are_an_error():
    with pytest.raises(FitError, match="at least 3 distinct compute values"):
        fit_power_law.fit_power_law([1e18, 1e19], [3.0, 2.5])
    with pytest.raises(FitError, match="at least 5"):
        fit_power_law.fit_saturating([1e18, 1e19, 1e20, 1e21], [3.0, 2.5, 2.2, 2.0])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fit_power_law.fit_power_law([1e18, 0, 1e20], [3.0, 2.5, 2.2])


def _frontier(p, q, noise, seed=0):
    rng = np.random.default_rng(seed)
    c = np.geomspace(1e18, 1e22, 9)
    jitter = np.exp(noise * rng.standard_normal((2, c.size)))
    return c, 1e-4 * c**p * jitter[0], 1e-5 * c**q * jitter[1]


def test_envelope_exponents_and_their_intervals():
    c, size, epochs = _frontier(0.5, 0.5, noise=0.05)
    env = fit_allocation.envelope_fit(c, size, epochs, samples=300, seed=0)
    assert env.allocation.size_exponent == pytest.approx(0.5, abs=0.05)
    c, size, epochs = _frontier(0.7, 0.3, noise=0.05)
    d = fit_allocation.envelope_fit(c, size, epochs, samples=300, seed=0).summary["difference"]
    assert d["ci_low"] < 0.4 < d["ci_high"]


def test_allocation_needs_the_frontier_to_change_model():
    with pytest.raises(FitError, match="2 model sizes"):
        fit_allocation.fit_allocation([1e18, 1e19, 1e20], [5e9] * 3, [1, 2, 4])
