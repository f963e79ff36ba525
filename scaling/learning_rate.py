"""The optimal learning rate per (model, epoch budget), its trend, and tuning it in two runs.

Selection (Smith et al. 2023, Sec. 2: base lr tuned per epoch budget on a grid spaced by 2x):
runs are grouped by (model, dataset, resolution, classes, epoch budget), losses of repeated
lrs (seeds) averaged; a group's lrs must be at least 3 values spaced by exactly 2x. Its optimal
lr is the grid value with the lowest held-out loss, "bracketed" unless it is an end of the
grid. For a bracketed optimum, the parabola through it and its neighbours in (x = log2 lr, L)
gives a refined optimum and the curvature kappa = (L_- - 2 L_0 + L_+) / 2 per unit x^2.

Trend (Smith et al. 2023, Sec. 2: lr ~ 1.6 for every model at small budgets, falling slowly as
the budget grows, faster for larger models), fitted by least squares to the bracketed optima:
    log2 lr* = c0 + (c1 + c2 log2(S / S0)) log2(E / E0),
S the model size in MACs per example, E the epoch budget, S0 and E0 the smallest in the sweep;
c2 is dropped when the sweep has a single model.

Two runs confirm a prediction lr*: the sweep's neighbouring grid values lr_lo <= lr* < lr_hi =
2 lr_lo. With their losses and the sweep's median curvature kappa, the vertex of the parabola is
x* = (x_lo + x_hi) / 2 - (L_lo - L_hi) / (2 kappa (x_lo - x_hi)); the prediction holds when x*
lies in [x_lo, x_hi].
"""

import collections
import dataclasses
import math

import numpy as np

from scaling.fit_chinchilla import FitError

MIN_GRID_LRS = 3
_LOG2_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class LrChoice:
    model: str
    dataset: str
    epochs: float  # the epoch budget
    size: float  # MACs per example
    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # mean held-out loss at each lr
    best_lr: float
    best_loss: float
    bracketed: bool
    refined_lr: float | None  # parabola vertex, when bracketed
    curvature: float | None  # kappa, when bracketed


def budget_key(row: dict) -> tuple:
    """Runs with the same key differ only in learning rate (and seed)."""
    return (
        row["model"],
        row["dataset"],
        row["train_resolution"],
        row["num_classes"],
        round(float(row["total_epochs"]), 9),
    )


def best_runs(rows: list[dict]) -> list[dict]:
    """For each (model, epoch budget), the run with the lowest held-out loss over lrs."""
    groups = collections.defaultdict(list)
    for row in rows:
        groups[budget_key(row)].append(row)
    return [min(g, key=lambda r: r["heldout_loss"]) for g in groups.values()]


def _is_2x_grid(lrs: list[float]) -> bool:
    steps = np.diff(np.log2(lrs))
    return bool(np.all(np.abs(steps - 1.0) < _LOG2_TOL))


def _groups(rows: list[dict]) -> dict:
    """budget key -> (size, {lr: mean held-out loss over seeds})."""
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    sizes = {}
    for row in rows:
        key = budget_key(row)
        groups[key][float(row["lr"])].append(float(row["heldout_loss"]))
        sizes[key] = float(row["macs_per_example"])
    return {
        key: (sizes[key], {lr: float(np.mean(v)) for lr, v in sorted(by_lr.items())})
        for key, by_lr in groups.items()
    }


def _is_pair(lrs: list[float]) -> bool:
    return len(lrs) == 2 and _is_2x_grid(lrs)


def choose(rows: list[dict]) -> list[LrChoice]:
    """The optimal lr of every (model, epoch budget) with a grid of at least 3 lrs.

    Groups with exactly two lrs a factor 2 apart are two-run confirmations (`confirmations`);
    any other group is an error that lists every such group.
    """
    choices, problems = [], []
    for key, (size, by_lr) in _groups(rows).items():
        lrs, losses = list(by_lr), list(by_lr.values())
        if _is_pair(lrs):
            continue
        if len(lrs) < MIN_GRID_LRS or not _is_2x_grid(lrs):
            problems.append(f"{key[0]} at {key[4]:g} epochs has lrs {lrs}")
            continue
        i = int(np.argmin(losses))
        bracketed = 0 < i < len(lrs) - 1
        refined = kappa = None
        if bracketed:
            lo, mid, hi = losses[i - 1], losses[i], losses[i + 1]
            kappa = (lo - 2 * mid + hi) / 2
            offset = (lo - hi) / (4 * kappa) if kappa > 0 else 0.0
            refined = lrs[i] * 2.0**offset
        choices.append(
            LrChoice(
                key[0],
                key[1],
                key[4],
                size,
                tuple(lrs),
                tuple(losses),
                lrs[i],
                losses[i],
                bracketed,
                refined,
                kappa,
            )  # fmt: skip
        )
    if problems:
        raise FitError(
            f"Each (model, epoch budget) needs at least {MIN_GRID_LRS} learning rates spaced by "
            "exactly 2x (or two, 2x apart, to confirm a prediction); add the missing runs: "
            + "; ".join(problems)
            + "."
        )
    return sorted(choices, key=lambda c: (c.size, c.model, c.epochs))


@dataclasses.dataclass(frozen=True)
class Confirmation:
    model: str
    epochs: float
    size: float
    lr_lo: float
    loss_lo: float
    lr_hi: float
    loss_hi: float
    optimal_lr: float  # the vertex, from the sweep's curvature


def confirmations(rows: list[dict], curvature: float) -> list[Confirmation]:
    """Groups with exactly two lrs 2x apart, and the optimal lr they imply (`vertex_lr`)."""
    out = []
    for key, (size, by_lr) in _groups(rows).items():
        lrs = list(by_lr)
        if _is_pair(lrs):
            (lo, l_lo), (hi, l_hi) = by_lr.items()
            vertex = vertex_lr(lo, l_lo, hi, l_hi, curvature)
            out.append(Confirmation(key[0], key[4], size, lo, l_lo, hi, l_hi, vertex))
    return out


@dataclasses.dataclass(frozen=True)
class LrModel:
    c0: float
    c1: float
    c2: float | None  # None: single model, no size dependence
    size0: float
    epochs0: float
    residual_std_log2: float  # std of the fit's residuals, in factors of 2
    num_points: int

    def predict(self, size, epochs):
        """lr* = 2^(c0 + (c1 + c2 log2(S / S0)) log2(E / E0))."""
        size, epochs = np.asarray(size, float), np.asarray(epochs, float)
        slope = self.c1 + (0.0 if self.c2 is None else self.c2 * np.log2(size / self.size0))
        return 2.0 ** (self.c0 + slope * np.log2(epochs / self.epochs0))


def fit_model(choices: list[LrChoice], *, refined: bool = False) -> LrModel:
    """Least squares of the trend on the bracketed optima (grid values, or refined ones)."""
    use = [c for c in choices if c.bracketed]
    if not use:
        raise FitError("No optimal lr is bracketed by its grid; extend the lr grids.")
    sizes = np.array([c.size for c in use])
    epochs = np.array([c.epochs for c in use])
    y = np.log2([c.refined_lr if refined else c.best_lr for c in use])
    size0, epochs0 = sizes.min(), epochs.min()
    x_e, x_s = np.log2(epochs / epochs0), np.log2(sizes / size0)
    columns = [np.ones_like(y), x_e]
    if np.unique(sizes).size > 1:
        columns.append(x_s * x_e)
    design = np.stack(columns, axis=1)
    if np.unique(epochs).size < 2 or len(y) <= design.shape[1]:
        raise FitError(
            f"The lr trend has {design.shape[1]} coefficients and needs more bracketed optima "
            f"over at least 2 epoch budgets; got {len(y)} over {np.unique(epochs).size}: "
            "sweep more budgets or models."
        )
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    std = float(np.sqrt(resid @ resid / (len(y) - design.shape[1])))
    c2 = float(coef[2]) if len(coef) == 3 else None
    return LrModel(float(coef[0]), float(coef[1]), c2, float(size0), float(epochs0), std, len(y))


def grid_anchor(choices: list[LrChoice]) -> float:
    """The smallest lr of the sweep; every lr must be anchor x 2^k for an integer k."""
    lrs = sorted({lr for c in choices for lr in c.lrs})
    offsets = np.log2(np.array(lrs) / lrs[0])
    if np.any(np.abs(offsets - np.round(offsets)) > _LOG2_TOL):
        raise FitError(f"The sweep's lrs {lrs} do not share one 2x grid; use one grid throughout.")
    return lrs[0]


def two_runs(predicted_lr: float, anchor: float) -> tuple[float, float]:
    """The grid values lr_lo <= predicted < lr_hi = 2 lr_lo on the grid anchor x 2^k."""
    k = math.floor(math.log2(predicted_lr / anchor) + _LOG2_TOL)
    lo = anchor * 2.0**k
    return lo, 2 * lo


def sweep_curvature(choices: list[LrChoice]) -> float:
    """The median curvature kappa of the bracketed optima."""
    kappas = [c.curvature for c in choices if c.bracketed and c.curvature and c.curvature > 0]
    if not kappas:
        raise FitError("No bracketed optimum with positive curvature; extend the lr grids.")
    return float(np.median(kappas))


def vertex_lr(lr_lo: float, loss_lo: float, lr_hi: float, loss_hi: float, curvature: float):
    """The optimal lr implied by two runs and a known curvature (module docstring)."""
    if not (0 < lr_lo < lr_hi and curvature > 0):
        raise ValueError("Need 0 < lr_lo < lr_hi and a positive curvature.")
    x_lo, x_hi = math.log2(lr_lo), math.log2(lr_hi)
    x = (x_lo + x_hi) / 2 - (loss_lo - loss_hi) / (2 * curvature * (x_lo - x_hi))
    return 2.0**x
