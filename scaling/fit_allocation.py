"""Compute-optimal model size and epoch budget as power laws of compute.

On the frontier runs (see `fit_power_law.pareto_frontier`), least squares of
    log S_opt = p log C + const   and   log E_opt = q log C + const,
S the model size (MACs per example by default, parameters optionally) and E the epoch budget.
With S in MACs per example, C = 6 S E n_train exactly, so p + q = 1 and "equal proportion"
(Smith et al. 2023, Sec. 2; Hoffmann et al. 2022) means p = q = 1/2.

Test of equal proportion: the residual bootstrap (residual pairs resampled together) gives a
percentile interval for p - q; equal proportion is consistent with the runs when it holds 0.
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


@dataclasses.dataclass(frozen=True)
class EqualProportionTest:
    allocation: Allocation
    summary: dict[str, dict[str, float]]  # size_exponent, epochs_exponent, difference
    level: float

    @property
    def consistent(self) -> bool:
        """Whether the interval for p - q holds 0 (equal proportion not rejected)."""
        d = self.summary["difference"]
        return d["ci_low"] <= 0.0 <= d["ci_high"]


def equal_proportion_test(
    compute, size, epochs, *, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> EqualProportionTest:
    """Fits the allocation and bootstraps p, q and p - q (see module docstring)."""
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
    return EqualProportionTest(fit, bootstrap.summarize(draws, level), level)
