"""Model size and epoch budget of the loss-vs-compute envelope, as power laws of compute.

On the frontier runs (see `fit_power_law.pareto_frontier`), least squares of
    log S = p log C + const   and   log E = q log C + const,
S the model size (MACs per example by default, parameters optionally) and E the epoch budget.
With S in MACs per example, C = 6 S E n_train exactly, so p + q = 1.

This DESCRIBES the envelope of a grid sweep; it is not an estimate of the compute-optimal
allocation. The cheapest and the costliest runs (smallest model at the smallest budget,
largest at the largest) are on the frontier only because they end it, so p is pulled towards
log(size range) / log(compute range) of the grid (`grid_exponent`) whatever the true law: on a
paper-like sweep with equal proportion true (N_opt ~ C^0.5) it gives p ~ 0.37. The allocation
comes from `isoflop` and from the parametric law (`fit_chinchilla`). Intervals: the residual
bootstrap (residual pairs resampled together).
"""

import dataclasses

import numpy as np

from scaling import bootstrap
from scaling.fit_chinchilla import FitError


@dataclasses.dataclass(frozen=True)
class Allocation:
    size_exponent: float  # p in S_opt ~ C^p
    epochs_exponent: float  # q in E_opt ~ C^q
    size_coef: float  # S_opt = size_coef C^p
    epochs_coef: float  # E_opt = epochs_coef C^q

    def size(self, compute):
        return self.size_coef * np.asarray(compute, float) ** self.size_exponent

    def epochs(self, compute):
        return self.epochs_coef * np.asarray(compute, float) ** self.epochs_exponent


def _arrays(compute, size, epochs):
    arrays = [np.asarray(x, dtype=float).ravel() for x in (compute, size, epochs)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("compute, size and epochs need the same length.")
    if not all(np.all(np.isfinite(a) & (a > 0)) for a in arrays):
        raise ValueError("compute, size and epochs must be positive and finite.")
    if arrays[0].size < 3 or np.unique(arrays[1]).size < 2 or np.unique(arrays[2]).size < 2:
        raise FitError(
            "The allocation fit needs at least 3 frontier runs spanning 2 model sizes and 2 epoch "
            f"budgets, got {arrays[0].size} runs, {np.unique(arrays[1]).size} sizes and "
            f"{np.unique(arrays[2]).size} budgets: add runs so the frontier changes model."
        )
    return arrays


def fit_allocation(compute, size, epochs) -> Allocation:
    compute, size, epochs = _arrays(compute, size, epochs)
    log_c = np.log(compute)
    p, log_s0 = np.polyfit(log_c, np.log(size), 1)
    q, log_e0 = np.polyfit(log_c, np.log(epochs), 1)
    return Allocation(float(p), float(q), float(np.exp(log_s0)), float(np.exp(log_e0)))


def grid_exponent(size, compute) -> float:
    """log(largest / smallest size) / log(largest / smallest compute) of a sweep's runs."""
    size, compute = np.asarray(size, float), np.asarray(compute, float)
    return float(np.log(size.max() / size.min()) / np.log(compute.max() / compute.min()))


@dataclasses.dataclass(frozen=True)
class EnvelopeFit:
    allocation: Allocation
    summary: dict[str, dict[str, float]]  # size_exponent, epochs_exponent, difference
    level: float


def envelope_fit(
    compute, size, epochs, *, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> EnvelopeFit:
    """Fits the envelope's power laws and bootstraps p, q and p - q (see module docstring)."""
    bootstrap.check_samples(samples)
    compute, size, epochs = _arrays(compute, size, epochs)
    fit = fit_allocation(compute, size, epochs)
    fit_s, fit_e = np.log(fit.size(compute)), np.log(fit.epochs(compute))
    res_s, res_e = np.log(size) - fit_s, np.log(epochs) - fit_e
    rng = bootstrap.rng(seed)
    draws = {"size_exponent": [], "epochs_exponent": [], "difference": []}
    log_c = np.log(compute)
    for _ in range(samples):
        idx = rng.integers(0, compute.size, compute.size)
        p = np.polyfit(log_c, fit_s + res_s[idx], 1)[0]
        q = np.polyfit(log_c, fit_e + res_e[idx], 1)[0]
        draws["size_exponent"].append(p)
        draws["epochs_exponent"].append(q)
        draws["difference"].append(p - q)
    return EnvelopeFit(fit, bootstrap.summarize(draws, level), level)
