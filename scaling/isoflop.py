"""Compute-optimal allocation from IsoFLOP slices (Hoffmann et al. 2022, Sec. 3.2, approach 2).

Per compute budget C, a parabola of the loss in log model size through the runs of equal
compute; its vertex is the compute-optimal size S_opt(C). Least squares of
    log S_opt = a log C + const   and   log D_opt = b log C + const
over the slices give the size and data (epoch-budget) exponents; "equal proportion" (Smith et
al. 2023, Sec. 2) is a = b = 1/2.

Runs of equal compute. A grid sweep of model size x epoch budget (compute = 6 x MACs x
examples seen) has no two runs at the same compute unless the size ratios happen to be powers
of the budget ratio: the paper's NFNets differ by 1.3-1.9x, the budgets by 2x. Binning by log
compute would mix runs up to a bin width apart, and a 20% compute difference moves the loss
(slope ~0.05 per e-fold) by more than the loss differences near a slice's minimum. Instead
each model's loss-vs-compute curve, which the sweep samples at every epoch budget, is smoothed
by least squares of log L on a quadratic in log C, and evaluated at common compute levels
inside the model's own range (never extrapolated). Levels are spaced by sqrt(2) in compute
(two per epoch doubling; finer levels reuse the same runs). A slice needs MIN_SIZES models; it
is used when its parabola is convex with the vertex inside the slice's sizes (an optimum at a
slice's end is not located by it).

Intervals: residual bootstrap over runs (Davison & Hinkley 1997, Sec. 6.2.3): leverage-adjusted
residuals of the per-model curves, centred and resampled over all runs, are added to the
curves' fitted values and everything above is refitted. The optimal epoch budget reaches 1
where D_opt(C) = the number of training examples (Smith et al. 2023 report ~5k TPU-v4 core
hours).
"""

import dataclasses

import numpy as np

from scaling import bootstrap
from scaling.fit_chinchilla import FitError

MIN_SIZES = 3  # models per slice
MIN_BUDGETS = 4  # epoch budgets per model: a quadratic curve plus one residual degree of freedom
MIN_SLICES = 3  # slices for the power laws of the optima
LEVELS_PER_E_FOLD = 2 / np.log(2)  # levels spaced by a factor sqrt(2) in compute
MAX_FAILED_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class ModelCurve:
    """log L = poly(log C) of one model over its compute range."""

    size: float
    coef: np.ndarray  # np.polyval coefficients, quadratic
    log_c_range: tuple[float, float]
    log_examples_offset: float  # log D - log C of this model's runs (D proportional to C)


@dataclasses.dataclass(frozen=True)
class Slice:
    compute: float
    sizes: tuple[float, ...]
    losses: tuple[float, ...]  # the curves' losses at `compute`
    optimal_size: float | None  # None when the slice is not used
    optimal_examples: float | None
    note: str  # why the slice is not used; "" when it is


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    slices: tuple[Slice, ...]
    size_exponent: float  # a in S_opt = size_coef C^a
    size_coef: float
    data_exponent: float  # b in D_opt = data_coef C^b
    data_coef: float

    @property
    def used(self) -> tuple[Slice, ...]:
        return tuple(s for s in self.slices if s.optimal_size is not None)

    def one_epoch_compute(self, num_train_examples: float) -> float:
        """The compute at which D_opt(C) equals one epoch."""
        return float(np.exp(np.log(num_train_examples / self.data_coef) / self.data_exponent))


def _group_by_size(size, examples, compute, loss):
    groups = {}
    for s, d, c, lo in zip(size, examples, compute, loss, strict=True):
        groups.setdefault(float(s), []).append((c, d, lo))
    return {s: np.array(sorted(v)).T for s, v in sorted(groups.items())}


def _design(log_c: np.ndarray) -> np.ndarray:
    return np.vander(log_c, 3)


def _validate(size, examples, compute, loss):
    arrays = [np.asarray(x, dtype=float).ravel() for x in (size, examples, compute, loss)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("size, examples, compute and loss need the same length.")
    bad = np.flatnonzero(~np.all([np.isfinite(a) & (a > 0) for a in arrays], axis=0))
    if bad.size:
        raise ValueError(f"size, examples, compute and loss must be positive; rows {bad.tolist()}.")
    return arrays


class _Curves:
    """The per-model quadratic curves: fitted values, adjusted residuals, refits."""

    def __init__(self, size, examples, compute, loss):
        groups = _group_by_size(size, examples, compute, loss)
        kept = {s: g for s, g in groups.items() if np.unique(g[0]).size >= MIN_BUDGETS}
        if len(kept) < MIN_SIZES:
            raise FitError(
                f"IsoFLOP slices need at least {MIN_SIZES} models with {MIN_BUDGETS} or more epoch "
                f"budgets each, got {len(kept)}: add budgets or models to the sweep."
            )
        self.sizes = np.array(list(kept))
        self.log_c = [np.log(g[0]) for g in kept.values()]
        self.offsets = [float(np.mean(np.log(g[1]) - np.log(g[0]))) for g in kept.values()]
        self.log_loss = [np.log(g[2]) for g in kept.values()]
        self.fitted, self.adjusted = [], []
        for x, y in zip(self.log_c, self.log_loss, strict=True):
            design = _design(x)
            coef = np.linalg.lstsq(design, y, rcond=None)[0]
            q = np.linalg.qr(design)[0]
            leverage = np.sum(q**2, axis=1)
            resid = y - design @ coef
            ok = 1 - leverage > 1e-9
            self.fitted.append(design @ coef)
            self.adjusted.append(np.where(ok, resid / np.sqrt(np.where(ok, 1 - leverage, 1)), 0))

    def curves(self, log_loss=None) -> list[ModelCurve]:
        log_loss = self.log_loss if log_loss is None else log_loss
        return [
            ModelCurve(s, np.polyfit(x, y, 2), (x.min(), x.max()), off)
            for s, x, y, off in zip(self.sizes, self.log_c, log_loss, self.offsets, strict=True)
        ]

    def resample(self, rng: np.random.Generator) -> list[np.ndarray]:
        pool = np.concatenate(self.adjusted)
        pool = pool - pool.mean()
        return [f + rng.choice(pool, size=f.size) for f in self.fitted]


def compute_levels(curves: list[ModelCurve]) -> np.ndarray:
    """Levels sqrt(2) apart over the compute covered by at least MIN_SIZES models."""
    lows = np.sort([c.log_c_range[0] for c in curves])
    highs = np.sort([c.log_c_range[1] for c in curves])
    lo, hi = lows[MIN_SIZES - 1], highs[-MIN_SIZES]
    if lo > hi:
        return np.array([])
    n = int(np.floor((hi - lo) * LEVELS_PER_E_FOLD + 1e-9)) + 1
    return np.exp(lo + np.arange(n) / LEVELS_PER_E_FOLD)


def iso_slice(curves: list[ModelCurve], compute: float) -> Slice:
    """The slice at `compute` and its vertex (see module docstring)."""
    log_c = np.log(compute)
    tol = 1e-9
    inside = [c for c in curves if c.log_c_range[0] - tol <= log_c <= c.log_c_range[1] + tol]
    sizes = np.array([c.size for c in inside])
    losses = np.array([np.exp(np.polyval(c.coef, log_c)) for c in inside])
    log_d = np.array([log_c + c.log_examples_offset for c in inside])

    def result(opt_s=None, opt_d=None, note=""):
        return Slice(float(compute), tuple(sizes), tuple(losses), opt_s, opt_d, note)

    if sizes.size < MIN_SIZES:
        return result(note=f"{sizes.size} models (needs {MIN_SIZES})")
    x = np.log(sizes)
    curv, slope, _ = np.polyfit(x, losses, 2)
    if curv <= 0:
        return result(note="not convex in log size")
    vertex = -slope / (2 * curv)
    if not x.min() < vertex < x.max():
        return result(note="minimum outside the slice's sizes")
    # log D is linear in log S across a slice (exactly, when size is MACs per example).
    d_slope, d_icpt = np.polyfit(x, log_d, 1)
    return result(float(np.exp(vertex)), float(np.exp(d_slope * vertex + d_icpt)))


def _fit_optima(slices: list[Slice]) -> IsoFlopFit:
    used = [s for s in slices if s.optimal_size is not None]
    if len(used) < MIN_SLICES:
        notes = "; ".join(f"{s.compute:.3g} FLOPs: {s.note}" for s in slices) or "no slices"
        raise FitError(
            f"Only {len(used)} IsoFLOP slices locate an optimum (needs {MIN_SLICES}; {notes}): "
            "add models around the compute-optimal size or more epoch budgets."
        )
    log_c = np.log([s.compute for s in used])
    a, log_s0 = np.polyfit(log_c, np.log([s.optimal_size for s in used]), 1)
    b, log_d0 = np.polyfit(log_c, np.log([s.optimal_examples for s in used]), 1)
    return IsoFlopFit(
        tuple(slices), float(a), float(np.exp(log_s0)), float(b), float(np.exp(log_d0))
    )


def _fit_curves(curves: list[ModelCurve]) -> IsoFlopFit:
    return _fit_optima([iso_slice(curves, c) for c in compute_levels(curves)])


def fit(size, examples, compute, loss) -> IsoFlopFit:
    """IsoFLOP slices of the runs and the power laws of their optima (needs MACs-exact runs)."""
    return _fit_curves(_Curves(*_validate(size, examples, compute, loss)).curves())


BOOTSTRAP_QUANTITIES = ("size_exponent", "data_exponent", "one_epoch_compute")


def bootstrap_fit(
    size, examples, compute, loss, num_train_examples: float, *, samples: int = 1000, seed: int = 0
) -> tuple[dict[str, np.ndarray], int]:
    """Residual-bootstrap draws of the exponents and the one-epoch compute; (draws, failed)."""
    bootstrap.check_samples(samples)
    curves = _Curves(*_validate(size, examples, compute, loss))
    rng = bootstrap.rng(seed)
    draws, failed = {k: [] for k in BOOTSTRAP_QUANTITIES}, 0
    for _ in range(samples):
        try:
            fitted = _fit_curves(curves.curves(curves.resample(rng)))
        except FitError:
            failed += 1
            continue
        draws["size_exponent"].append(fitted.size_exponent)
        draws["data_exponent"].append(fitted.data_exponent)
        draws["one_epoch_compute"].append(fitted.one_epoch_compute(num_train_examples))
    if failed > MAX_FAILED_FRACTION * samples or samples - failed < 2:
        raise FitError(
            f"{failed} of {samples} IsoFLOP bootstrap refits located too few optima, which would "
            "bias the intervals; add models around the compute-optimal size."
        )
    return {k: np.array(v) for k, v in draws.items()}, failed
