"""Held-out loss as a power law of compute on the compute-optimal frontier.

Frontier: the runs whose loss is lower than that of every run with less or equal compute (the
lower envelope of the loss-vs-compute curves, Smith et al. 2023, Fig. 2).

Two forms, both fitted to log L so that every run weighs by its relative error:
  log-linear (Smith et al. 2023, Sec. 2):  L = k C^-b, least squares of log L on log C;
  saturating (Zhai et al. 2022):           L = a (C + d)^-b + c, with a, b > 0 and c, d >= 0,
  by scipy's trust-region least squares from a grid of starts.
Uncertainty by the residual bootstrap: the compute levels are fixed by the sweep's design, so
resamples add resampled log-space residuals to the fitted curve and refit.
"""

import dataclasses
import itertools

import numpy as np
from scipy import optimize

from scaling import bootstrap
from scaling.fit_chinchilla import FitError


def _validate(compute, loss, min_points: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    compute = np.asarray(compute, dtype=float).ravel()
    loss = np.asarray(loss, dtype=float).ravel()
    if compute.size != loss.size:
        raise ValueError(f"compute and loss need the same length, got {compute.size}, {loss.size}.")
    bad = np.flatnonzero(~(np.isfinite(compute) & np.isfinite(loss) & (compute > 0) & (loss > 0)))
    if bad.size:
        raise ValueError(
            f"compute and loss must be positive and finite; rows {bad.tolist()} are not."
        )
    if np.unique(compute).size < min_points:
        raise FitError(
            f"The {what} needs at least {min_points} distinct compute values on the frontier, got "
            f"{np.unique(compute).size}: add runs at more compute budgets."
        )
    return compute, loss


def pareto_frontier(compute, loss) -> np.ndarray:
    """Indices of the frontier runs, in increasing compute."""
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    order = np.lexsort((loss, compute))
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep, dtype=int)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L = k C^-b."""

    k: float
    b: float

    def loss(self, compute):
        return self.k * np.asarray(compute, float) ** -self.b


@dataclasses.dataclass(frozen=True)
class SaturatingPowerLaw:
    """L = a (C + d)^-b + c (Zhai et al. 2022)."""

    a: float
    b: float
    c: float
    d: float

    def loss(self, compute):
        return self.a * (np.asarray(compute, float) + self.d) ** -self.b + self.c


def fit_power_law(compute, loss) -> PowerLaw:
    """Least squares of log L = log k - b log C (needs 3 distinct compute values)."""
    compute, loss = _validate(compute, loss, 3, "log-linear law")
    slope, intercept = np.polyfit(np.log(compute), np.log(loss), 1)
    return PowerLaw(k=float(np.exp(intercept)), b=float(-slope))


# Starts for the saturating fit, in units where the smallest compute is 1.
_SAT_STARTS = dict(b=(0.05, 0.2, 0.5, 1.0), c_frac=(0.0, 0.5, 0.9), d=(0.0, 1.0))
# Two starts agree when their costs (half the sum of squared log residuals) are within a
# relative 1e-6, or an absolute 1e-12 per run for data fitted to round-off.
_SAT_RTOL, _SAT_ATOL = 1e-6, 1e-12
_LSQ_TOL = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def fit_saturating(compute, loss, *, init: SaturatingPowerLaw | None = None) -> SaturatingPowerLaw:
    """Least squares of log L on log(a (C + d)^-b + c) from a grid of starts (needs 5 points).

    Compute is rescaled by its minimum for conditioning. With `init`, that is the only start
    (bootstrap refits). Raises FitError when no start converges, or when fewer than two
    converged starts of the grid reach the lowest cost.
    """
    compute, loss = _validate(compute, loss, 5, "saturating law")
    scale = compute.min()
    x, log_l = compute / scale, np.log(loss)

    def residuals(p):  # p = (log a', b, c, d') with a' = a scale^-b and d' = d / scale
        return np.log(np.exp(p[0]) * (x + p[3]) ** -p[1] + p[2]) - log_l

    c_max = 0.999 * loss.min()
    bounds = ([-np.inf, 0.0, 0.0, 0.0], [np.inf, 10.0, c_max, np.inf])
    if init is None:
        starts = []
        for b, c_frac, d in itertools.product(*_SAT_STARTS.values()):
            c = c_frac * c_max
            starts.append([np.log(loss[0] - c) + b * np.log(x[0] + d), b, c, d])
    else:
        starts = [[np.log(init.a * scale**init.b), init.b, init.c, init.d / scale]]
    results = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for p0 in starts:
            p0 = np.clip(p0, bounds[0], bounds[1])
            r = optimize.least_squares(
                residuals, p0, bounds=bounds, method="trf", x_scale="jac", **_LSQ_TOL
            )
            if r.status > 0 and np.isfinite(r.cost):
                results.append(r)
    if not results:
        raise FitError("No start of the saturating fit converged; check the frontier runs.")
    best = min(results, key=lambda r: r.cost)
    agree = sum(r.cost <= best.cost * (1 + _SAT_RTOL) + _SAT_ATOL * x.size for r in results)
    if agree < min(2, len(starts)):
        raise FitError(
            f"Only {agree} of {len(starts)} starts reached the lowest cost of the saturating "
            "fit: the optimum is not reproducible; add frontier runs."
        )
    log_a, b, c, d = best.x
    return SaturatingPowerLaw(
        a=float(np.exp(log_a) * scale**b), b=float(b), c=float(c), d=float(d * scale)
    )


def _residual_bootstrap(compute, loss, law, refit, samples: int, seed: int) -> tuple[list, int]:
    bootstrap.check_samples(samples)
    fitted = np.log(law.loss(compute))
    resid = np.log(loss) - fitted
    rng = bootstrap.rng(seed)
    laws, failed = [], 0
    for _ in range(samples):
        resampled = np.exp(fitted + rng.choice(resid, size=resid.size, replace=True))
        try:
            laws.append(refit(compute, resampled))
        except FitError:
            failed += 1
    if failed > 0.01 * samples or len(laws) < 2:
        raise FitError(
            f"{failed} of {samples} bootstrap refits failed, which would bias the intervals; "
            "add frontier runs."
        )
    return laws, failed


def bootstrap_power_law(compute, loss, law: PowerLaw, samples: int = 1000, seed: int = 0):
    """Residual-bootstrap draws of (k, b); returns ({'k': ..., 'b': ...}, num_failed)."""
    compute, loss = _validate(compute, loss, 3, "log-linear law")
    laws, failed = _residual_bootstrap(compute, loss, law, fit_power_law, samples, seed)
    return {f: np.array([getattr(lw, f) for lw in laws]) for f in ("k", "b")}, failed


def bootstrap_saturating(
    compute, loss, law: SaturatingPowerLaw, samples: int = 1000, seed: int = 0
):
    """Residual-bootstrap draws of (a, b, c, d); each refit starts from `law`."""
    compute, loss = _validate(compute, loss, 5, "saturating law")

    def refit(c, l_):
        return fit_saturating(c, l_, init=law)

    laws, failed = _residual_bootstrap(compute, loss, law, refit, samples, seed)
    return {f: np.array([getattr(lw, f) for lw in laws]) for f in ("a", "b", "c", "d")}, failed
