"""Compute-optimal allocation on sweeps with a known law: IsoFLOP slices, the parametric law,
the frontier envelope's bias, and exact sweeps.

The sweeps are the paper's grid (six NFNets x epoch budgets 0.25-8 of JFT-4B) with losses
drawn from `synthetic.paper_like_law`, whose optimal epoch budget is 1 at 5k TPU-v4 core hours.
"""

import numpy as np
import pytest

from scaling import (
    bootstrap,
    cli,
    fit_allocation,
    fit_chinchilla,
    fit_power_law,
    isoflop,
    paper_models,
    synthetic,
)

EPOCH = paper_models.JFT_NUM_EXAMPLES
CELL = fit_chinchilla.start_grid(**cli.LAW_GRIDS["cell"])
# alpha = beta: equal proportion (N_opt ~ C^0.5); and a true size exponent of 0.45.
LAWS = {
    "equal": synthetic.paper_like_law(0.3, 0.3),
    "size_0.45": synthetic.paper_like_law(0.33, 0.27),
}


def _grid(law, noise: float, seed: int = 0):
    """(MACs per example, examples, compute, loss) of every model x epoch budget."""
    macs = np.array([m for m, _ in synthetic.paper_like_models().values()], float)
    epochs = np.array(paper_models.EPOCH_BUDGETS, float)
    size, examples = (a.ravel() for a in np.meshgrid(macs, epochs * EPOCH))
    loss = synthetic.noisy_losses(law, size, examples, noise, seed)
    return size, examples, 6 * size * examples, loss


# 99% intervals: with ~100 bootstrap samples the percentiles of a 95% interval are noisy.
LEVEL = 0.99


def _covers(summary: dict, name: str, truth: float) -> bool:
    return summary[name]["ci_low"] <= truth <= summary[name]["ci_high"]


@pytest.mark.parametrize("name", list(LAWS))
def test_isoflop_intervals_cover_the_true_allocation(name):
    law = LAWS[name]
    data = _grid(law, noise=0.003, seed=2)
    fit = isoflop.fit(*data)
    draws, failed = isoflop.bootstrap_fit(*data, EPOCH, samples=100, seed=2)
    summary = bootstrap.summarize(draws, LEVEL)
    assert failed <= 5 and len(fit.used) >= isoflop.MIN_SLICES
    assert _covers(summary, "size_exponent", law.size_exponent)
    assert _covers(summary, "data_exponent", law.data_exponent)
    assert _covers(summary, "one_epoch_compute", float(law.compute_for_data(EPOCH)))
    assert abs(fit.size_exponent - law.size_exponent) < 0.05


@pytest.mark.parametrize("name", list(LAWS))
def test_parametric_intervals_cover_the_true_allocation(name):
    law = LAWS[name]
    size, examples, _, loss = _grid(law, noise=0.003, seed=2)
    fit = fit_chinchilla.fit(size, examples, loss, starts=CELL[::4])
    boot = fit_chinchilla.bootstrap_fit(size, examples, loss, fit, samples=40, seed=2)
    draws = dict(boot.draws)
    drawn = fit_chinchilla.ChinchillaLaw(*(draws[k] for k in ("E", "A", "B", "alpha", "beta")))
    draws["one_epoch_compute"] = drawn.compute_for_data(EPOCH)
    summary = bootstrap.summarize(draws, LEVEL)
    assert _covers(summary, "size_exponent", law.size_exponent)
    assert _covers(summary, "data_exponent", law.data_exponent)
    assert _covers(summary, "one_epoch_compute", float(law.compute_for_data(EPOCH)))


def test_one_epoch_compute_inverts_the_optimal_data():
    law = LAWS["size_0.45"]
    c = law.compute_for_data(EPOCH)
    assert law.compute_optimal(c)[1] == pytest.approx(EPOCH)
    assert c == pytest.approx(synthetic.paper_one_epoch_flops())


def test_slices_need_three_sizes_and_a_bracketed_minimum():
    law = LAWS["equal"]
    size, examples, c, loss = _grid(law, noise=0.0)
    fit = isoflop.fit(size, examples, c, loss)
    assert all(len(s.sizes) >= isoflop.MIN_SIZES for s in fit.slices)
    for s in fit.slices:
        if s.optimal_size is None:
            assert s.note
        else:
            assert min(s.sizes) < s.optimal_size < max(s.sizes)
    small = size <= np.unique(size)[1]  # two models: no slice has three
    with pytest.raises(fit_chinchilla.FitError, match="at least 3 models"):
        isoflop.fit(size[small], examples[small], c[small], loss[small])


def test_frontier_envelope_is_bound_to_the_grid_not_the_law():
    # Equal proportion holds, yet the envelope's size exponent follows the grid's ranges.
    size, examples, c, loss = _grid(LAWS["equal"], noise=0.0)
    front = fit_power_law.pareto_frontier(c, loss)
    env = fit_allocation.fit_allocation(c[front], size[front], examples[front] / EPOCH)
    grid = fit_allocation.grid_exponent(size, c)
    assert env.size_exponent < 0.45 and abs(env.size_exponent - grid) < 0.06


def test_an_exact_sweep_is_a_converged_fit():
    law = LAWS["equal"]
    size, examples, _, loss = _grid(law, noise=0.0)
    fit = fit_chinchilla.fit(size, examples, loss, starts=CELL[::4])
    assert fit.objective_value < 1e-12 and fit.num_at_optimum >= 2
    for name, value in law.as_dict().items():
        assert getattr(fit.law, name) == pytest.approx(value, rel=1e-3), name
