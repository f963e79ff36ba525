"""Bootstrap bands of the fitted curves that the figures draw.

A band holds, at every x, the central `level` of the curves of an estimator's bootstrap draws
(percentiles, as `bootstrap.summarize`), next to the curve fitted to all runs:
- the frontier's power law and saturating law of loss against compute (`fit_power_law`'s
  residual bootstrap);
- the compute-optimal model size and epoch budget of the IsoFLOP slices (`isoflop`) and of the
  parametric law L(N, D) (`fit_chinchilla`), from their bootstrap draws;
- the optimal-lr trend per model (`learning_rate.fit_model`), by a residual bootstrap of the
  bracketed optima (Davison & Hinkley 1997, Alg. 6.3), as `fit_power_law` does for its laws;
- the top-1 error of fine-tuned runs as a power law of pre-training compute.
Sizes are MACs per example, so compute = 6 x size x examples exactly (`compute`).
"""

import dataclasses

import numpy as np

from scaling import bootstrap, compute, fit_chinchilla, fit_power_law, isoflop, learning_rate
from scaling.fit_chinchilla import ChinchillaLaw

DEFAULT_LEVEL = 0.9  # 5-95% bands
GRID_POINTS = 100


@dataclasses.dataclass(frozen=True)
class Band:
    x: np.ndarray
    fit: np.ndarray  # the curve fitted to all runs
    low: np.ndarray
    high: np.ndarray
    level: float


def band(x, fit, curves, level: float = DEFAULT_LEVEL) -> Band:
    """The band of `curves` (one row per bootstrap draw, one column per x) around `fit`."""
    curves = np.atleast_2d(np.asarray(curves, float))
    summary = bootstrap.summarize({i: curves[:, i] for i in range(curves.shape[1])}, level)
    low = np.array([summary[i]["ci_low"] for i in range(curves.shape[1])])
    high = np.array([summary[i]["ci_high"] for i in range(curves.shape[1])])
    return Band(np.asarray(x, float), np.asarray(fit, float), low, high, level)


def compute_grid(flops) -> np.ndarray:
    flops = np.asarray(flops, float)
    return np.geomspace(flops.min(), flops.max(), GRID_POINTS)


def power_law_band(compute_flops, values, *, samples: int, seed: int, level: float) -> Band:
    """values = k C^-b fitted to (compute, values), over the compute range."""
    law = fit_power_law.fit_power_law(compute_flops, values)
    draws, _ = fit_power_law.bootstrap_power_law(compute_flops, values, law, samples, seed)
    x = compute_grid(compute_flops)
    curves = draws["k"][:, None] * x ** -draws["b"][:, None]
    return band(x, law.loss(x), curves, level)


def saturating_band(compute_flops, loss, *, samples: int, seed: int, level: float) -> Band:
    """L = a (C + d)^-b + c (Zhai et al. 2022) over the compute range."""
    law = fit_power_law.fit_saturating(compute_flops, loss)
    draws, _ = fit_power_law.bootstrap_saturating(compute_flops, loss, law, samples, seed)
    x = compute_grid(compute_flops)
    a, b, c, d = (draws[k][:, None] for k in ("a", "b", "c", "d"))
    return band(x, law.loss(x), a * (x + d) ** -b + c, level)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Compute-optimal model size and epoch budget of one estimator, with bands."""

    name: str
    size: Band  # MACs per example
    epochs: Band
    points: tuple[tuple[float, float, float], ...] = ()  # (compute, size, epochs) it rests on


def _tuned_arrays(rows: list[dict]):
    tuned = learning_rate.best_runs(rows)
    cols = ("macs_per_example", "examples_seen", "compute_flops", "heldout_loss")
    return [np.array([r[c] for r in tuned], float) for c in cols]


def _num_train(rows: list[dict]) -> float:
    counts = {r["num_train_examples"] for r in rows}
    if len(counts) != 1:
        raise ValueError(f"The runs mix training-set sizes {sorted(counts)}: plot one at a time.")
    return float(counts.pop())


def isoflop_allocation(rows, *, samples: int, seed: int, level: float) -> Allocation:
    """IsoFLOP slices (Hoffmann et al. 2022, approach 2) over the compute of their slices.

    A draw gives the data exponent b and the one-epoch compute C1, so its optimal epoch budget
    is (C / C1)^b; with sizes in MACs per example, its optimal size is C / (6 n E_opt(C)).
    """
    size, examples, flops, loss = _tuned_arrays(rows)
    n = _num_train(rows)
    fit = isoflop.fit(size, examples, flops, loss)
    draws, _ = isoflop.bootstrap_fit(size, examples, flops, loss, n, samples=samples, seed=seed)
    x = compute_grid([s.compute for s in fit.used])
    epochs_fit = fit.data_coef * x**fit.data_exponent / n
    epoch_curves = (x / draws["one_epoch_compute"][:, None]) ** draws["data_exponent"][:, None]
    per_example = compute.TRAIN_FLOPS_PER_MAC * n
    points = tuple((s.compute, s.optimal_size, s.optimal_examples / n) for s in fit.used)
    return Allocation(
        "IsoFLOP slices",
        band(x, x / (per_example * epochs_fit), x / (per_example * epoch_curves), level),
        band(x, epochs_fit, epoch_curves, level),
        points,
    )


def parametric_allocation(
    rows, *, samples: int, seed: int, level: float, starts=None, objective: str = "huber"
) -> Allocation:
    """N_opt(C), D_opt(C) of the parametric law L(N, D) (Hoffmann et al. 2022, approach 3)."""
    size, examples, flops, loss = _tuned_arrays(rows)
    n = _num_train(rows)
    fit = fit_chinchilla.fit(size, examples, loss, starts=starts, objective=objective)
    boot = fit_chinchilla.bootstrap_fit(size, examples, loss, fit, samples=samples, seed=seed)
    x = compute_grid(flops)
    size_fit, data_fit = fit.law.compute_optimal(x)
    params = zip(*(boot.draws[k] for k in ("E", "A", "B", "alpha", "beta")), strict=True)
    optima = [ChinchillaLaw(*p).compute_optimal(x) for p in params]
    size_curves, data_curves = (np.array(v) for v in zip(*optima, strict=True))
    return Allocation(
        "parametric law",
        band(x, size_fit, size_curves, level),
        band(x, data_fit / n, data_curves / n, level),
    )


def lr_trend_bands(
    choices: list[learning_rate.LrChoice],
    model: learning_rate.LrModel,
    *,
    samples: int,
    seed: int,
    level: float,
) -> dict[str, Band]:
    """{model name: band of its optimal-lr trend over its epoch budgets}."""
    bootstrap.check_samples(samples)
    use = [c for c in choices if c.bracketed]
    fitted = np.log2([float(model.predict(c.size, c.epochs)) for c in use])
    resid = np.log2([c.best_lr for c in use]) - fitted
    rng = bootstrap.rng(seed)
    refits = []
    for _ in range(samples):
        log_lr = fitted + rng.choice(resid, size=resid.size, replace=True)
        resampled = [
            dataclasses.replace(c, best_lr=2.0**y) for c, y in zip(use, log_lr, strict=True)
        ]
        refits.append(learning_rate.fit_model(resampled))
    bands = {}
    for name in dict.fromkeys(c.model for c in choices):
        mine = [c for c in choices if c.model == name]
        size = mine[0].size
        x = np.geomspace(min(c.epochs for c in mine), max(c.epochs for c in mine), GRID_POINTS)
        curves = [m.predict(size, x) for m in refits]
        bands[name] = band(x, model.predict(size, x), curves, level)
    return bands
