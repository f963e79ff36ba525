"""The parametric law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Eq. 2).

Fit (Hoffmann et al. 2022, Sec. 3.3; Besiroglu et al. 2024): with a = log A, b = log B,
e = log E, minimize the SUM over runs i of

    Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3,

where LSE is log-sum-exp (so LSE(...) = log L(N_i, D_i)) and Huber_delta(r) = r^2 / 2 for
|r| <= delta, delta (|r| - delta / 2) otherwise; run L-BFGS-B from every point of a grid of
starts and keep the lowest objective among the runs that converged. scipy's `ftol` is an
absolute tolerance for objectives below 1 (this one is ~1e-3), so the tolerances here are
tightened until every start that finds the optimum agrees on it to many digits.

`objective="huber_likelihood"` instead minimizes the negative log-likelihood of residuals with
a Huber density of fitted scale sigma = exp(s), sum_i Huber_delta(r_i / sigma) + n s (+ const),
over (a, b, e, alpha, beta, s) from s = 0. This is the Huber-likelihood fit of Besiroglu et
al.'s analysis code, which gives their published point estimates (E 1.817, A 482.0, B 2085.4,
alpha 0.3478, beta 0.3658; reproduced to 4 digits), while their bootstrap standard errors refit
the summed Huber loss. As sigma shrinks to ~5e-6, it is close to least absolute deviations.

Compute-optimal allocation under C = k N D, k = 6 FLOPs per parameter and token (Hoffmann et
al. 2022, Sec. 3.3, Eq. 4): G = (alpha A / (beta B))^(1 / (alpha + beta)),
N_opt = G (C / k)^(beta / (alpha + beta)), D_opt = (C / k)^(alpha / (alpha + beta)) / G.
"""

import dataclasses
import itertools
import math

import numpy as np
from scipy import optimize, special

from scaling import bootstrap
from scaling.blas_threads import single_threaded_blas

HUBER_DELTA = 1e-3
# Hoffmann et al. 2022, App. D.2 / Besiroglu et al. 2024: the grid of initializations.
GRID = dict(
    a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    e=(-1.0, -0.5, 0.0, 0.5, 1.0),
    alpha=(0.0, 0.5, 1.0, 1.5, 2.0),
    beta=(0.0, 0.5, 1.0, 1.5, 2.0),
)
LBFGS_OPTIONS = dict(ftol=1e-13, gtol=1e-9, maxiter=15000)
LBFGS_RESTARTS = 3
# Starts "agree" with the best when their objective is within this relative distance, or within
# an absolute OBJECTIVE_ATOL per run (runs fitted exactly reach objectives of ~1e-23 whose relative
# differences are round-off), and every parameter (E, A, B, alpha, beta) within PARAM_RTOL.
# 1e-12 per run is a log-residual of ~1.4e-6, below any measured loss's precision.
OBJECTIVE_RTOL = 1e-6
OBJECTIVE_ATOL_PER_RUN = 1e-12
PARAM_RTOL = 1e-2
NUM_PARAMS = 5


class FitError(RuntimeError):
    """An optimization that cannot be trusted; no parameters are reported."""


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta) -> "ChinchillaLaw":
        a, b, e, alpha, beta = (float(v) for v in theta)
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)

    @property
    def theta(self) -> np.ndarray:
        """(a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta)."""
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def loss(self, n, d):
        n, d = np.asarray(n, float), np.asarray(d, float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    @property
    def size_exponent(self) -> float:
        """a in N_opt ~ C^a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def data_exponent(self) -> float:
        """b in D_opt ~ C^b: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    def compute_optimal(self, compute, flops_per_unit: float = 6.0):
        """(N_opt, D_opt) minimizing L(N, D) subject to compute = flops_per_unit x N x D."""
        if self.alpha <= 0 or self.beta <= 0:
            raise FitError(
                f"No compute-optimal allocation: it needs alpha, beta > 0, got alpha="
                f"{self.alpha:.4g}, beta={self.beta:.4g}; check the runs cover enough N and D."
            )
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        budget = np.asarray(compute, float) / flops_per_unit
        return g * budget**self.size_exponent, budget**self.data_exponent / g

    def compute_for_data(self, data, flops_per_unit: float = 6.0):
        """The compute whose optimal D_opt is `data`: inverts `compute_optimal`'s D_opt.

        Elementwise, so a law of arrays (bootstrap draws) gives an array.
        """
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return flops_per_unit * (np.asarray(data, float) * g) ** (1 / self.data_exponent)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LawFit:
    law: ChinchillaLaw
    objective: str  # a key of OBJECTIVES
    objective_value: float
    theta: np.ndarray  # the optimizer's variables (a, b, e, alpha, beta[, log sigma])
    num_starts: int
    num_converged: int  # starts whose L-BFGS-B run reported success
    num_at_optimum: int  # converged starts that agree with the best


def start_grid(**values) -> np.ndarray:
    """All combinations of start values as rows (a, b, e, alpha, beta); defaults from GRID."""
    unknown = set(values) - set(GRID)
    if unknown:
        raise ValueError(f"Unknown start-grid axes {sorted(unknown)}; the axes are {list(GRID)}.")
    axes = [tuple(values.get(k, GRID[k])) for k in GRID]
    if any(len(axis) == 0 for axis in axes):
        raise ValueError("Every start-grid axis needs at least one value.")
    return np.array(list(itertools.product(*axes)), dtype=float)


def _log_prediction(theta, log_n, log_d):
    """log L(N, D) = LSE(a - alpha log N, b - beta log D, e) and its gradient rows over theta."""
    a, b, e, alpha, beta = theta
    t_n = a - alpha * log_n
    t_d = b - beta * log_d
    pred = np.logaddexp(np.logaddexp(t_n, t_d), e)
    # d pred / d t_k are the softmax weights exp(t_k - pred).
    w_n, w_d, w_e = np.exp(t_n - pred), np.exp(t_d - pred), np.exp(e - pred)
    return pred, np.stack([w_n, w_d, w_e, -w_n * log_n, -w_d * log_d])


def huber_objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
    """sum_i Huber_delta(log L(N_i, D_i) - log L_i) and its gradient with respect to theta."""
    pred, jac = _log_prediction(theta, log_n, log_d)
    resid = pred - log_loss
    psi = np.clip(resid, -delta, delta)  # d Huber / d resid
    return float(special.huber(delta, resid).sum()), jac @ psi


def huber_likelihood_objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
    """sum_i Huber_delta(r_i / sigma) + n log sigma, sigma = exp(theta[5]), and its gradient."""
    log_scale = theta[5]
    pred, jac = _log_prediction(theta[:5], log_n, log_d)
    z = (pred - log_loss) * np.exp(-log_scale)
    psi = np.clip(z, -delta, delta)
    value = special.huber(delta, z).sum() + z.size * log_scale
    grad = np.append(jac @ psi * np.exp(-log_scale), z.size - psi @ z)
    return float(value), grad


OBJECTIVES = {"huber": huber_objective, "huber_likelihood": huber_likelihood_objective}


def _validate(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(x, dtype=float).ravel() for x in (n, d, loss)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"N, D and L need the same length, got {[a.size for a in arrays]}.")
    bad = np.flatnonzero(~np.all([np.isfinite(a) & (a > 0) for a in arrays], axis=0))
    if bad.size:
        raise ValueError(
            f"N, D and L must be positive and finite; rows {bad.tolist()} are not: fix or "
            "drop them."
        )
    if arrays[0].size <= NUM_PARAMS:
        raise FitError(
            f"The parametric law has {NUM_PARAMS} parameters and needs more than {NUM_PARAMS} "
            f"runs, got {arrays[0].size}: add runs."
        )
    return arrays[0], arrays[1], arrays[2]


def _agrees(
    law: ChinchillaLaw, value: float, best: ChinchillaLaw, best_value: float, num_runs: int
) -> bool:
    tolerance = max(OBJECTIVE_RTOL * abs(best_value), OBJECTIVE_ATOL_PER_RUN * num_runs)
    if value > best_value + tolerance:
        return False
    mine, ref = np.array(list(law.as_dict().values())), np.array(list(best.as_dict().values()))
    return bool(np.all(np.abs(mine - ref) <= PARAM_RTOL * np.abs(ref)))


def _objective(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name]


def _run_lbfgs(objective, theta0, args, delta):
    """L-BFGS-B from theta0; the converged result, or None.

    A line search can fail at a kink of the Huber loss (its second derivative jumps); such a
    stop restarts L-BFGS-B from the last iterate with fresh curvature pairs, at most
    LBFGS_RESTARTS times. Any other stop (iteration limit, non-finite values) is a failure.
    """
    theta = theta0
    for _ in range(1 + LBFGS_RESTARTS):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = optimize.minimize(
                objective,
                theta,
                args=(*args, delta),
                jac=True,
                method="L-BFGS-B",
                options=LBFGS_OPTIONS,
            )
        # log A, log B, log E beyond a float's range: a law that cannot be written down.
        finite = (np.isfinite(result.fun) and np.all(np.isfinite(result.x))
                  and np.max(result.x[:3]) < np.log(np.finfo(float).max))
        if result.success and finite:
            return result
        if not (finite and result.message.startswith("ABNORMAL")):
            return None
        theta = result.x
    return None


def _initial_thetas(starts: np.ndarray, objective: str) -> np.ndarray:
    starts = np.atleast_2d(np.asarray(starts, float))
    if starts.ndim != 2 or starts.shape[1] != NUM_PARAMS or not len(starts):
        raise ValueError("starts must be rows of (a, b, e, alpha, beta), e.g. start_grid().")
    if objective == "huber_likelihood":  # sigma starts at 1, as in Besiroglu et al.'s code
        starts = np.hstack([starts, np.zeros((len(starts), 1))])
    return starts


def fit(
    n,
    d,
    loss,
    *,
    starts: np.ndarray | None = None,
    objective: str = "huber",
    delta: float = HUBER_DELTA,
) -> LawFit:
    """Fits L(N, D) to runs from every start (default: the full GRID, 4500 starts).

    Raises FitError when no start converges, or when fewer than two (one, for a single start)
    converged starts reach the lowest objective: a lone minimum may be an artefact.
    """
    n, d, loss = _validate(n, d, loss)
    if not delta > 0:
        raise ValueError(f"The Huber delta must be positive, got {delta!r}.")
    fn = _objective(objective)
    thetas = _initial_thetas(start_grid() if starts is None else starts, objective)
    args = (np.log(n), np.log(d), np.log(loss))
    with single_threaded_blas():
        good = [r for r in (_run_lbfgs(fn, t, args, delta) for t in thetas) if r is not None]
    if not good:
        raise FitError(
            f"None of {len(thetas)} L-BFGS-B starts converged: check the runs (are N and D "
            "varied enough?) or widen the start grid."
        )
    best = min(good, key=lambda r: r.fun)
    best_law = ChinchillaLaw.from_theta(best.x[:NUM_PARAMS])
    at_opt = sum(
        _agrees(ChinchillaLaw.from_theta(r.x[:NUM_PARAMS]), r.fun, best_law, best.fun, n.size)
        for r in good
    )
    if at_opt < min(2, len(thetas)):
        raise FitError(
            f"Only {at_opt} of {len(thetas)} starts reached the lowest objective {best.fun:.6g}: "
            "the optimum is not reproducible; widen the start grid or add runs."
        )
    return LawFit(best_law, objective, float(best.fun), best.x, len(thetas), len(good), at_opt)


@dataclasses.dataclass(frozen=True)
class LawBootstrap:
    draws: dict[str, np.ndarray]  # E, A, B, alpha, beta, size_exponent, data_exponent
    num_failed: int

    def summary(self, level: float = 0.95) -> dict[str, dict[str, float]]:
        return bootstrap.summarize(self.draws, level)


BOOTSTRAP_QUANTITIES = ("E", "A", "B", "alpha", "beta", "size_exponent", "data_exponent")


def bootstrap_fit(
    n,
    d,
    loss,
    fitted: LawFit,
    *,
    samples: int = 4000,
    seed: int = 0,
    starts: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    max_failed_fraction: float = 0.01,
) -> LawBootstrap:
    """Refits `fitted.objective` on `samples` resamples of the runs drawn with replacement.

    Each resample starts from the full-data optimum, plus `starts` if given, and keeps its best
    converged result. More than `max_failed_fraction` failed resamples raise FitError.
    """
    bootstrap.check_samples(samples)
    n, d, loss = _validate(n, d, loss)
    fn = _objective(fitted.objective)
    thetas = [fitted.theta]
    if starts is not None:
        thetas += list(_initial_thetas(starts, fitted.objective))
    rng = bootstrap.rng(seed)
    logs = (np.log(n), np.log(d), np.log(loss))
    draws = {k: [] for k in BOOTSTRAP_QUANTITIES}
    failed = 0
    with single_threaded_blas():
        for _ in range(samples):
            idx = rng.integers(0, n.size, n.size)
            args = tuple(x[idx] for x in logs)
            runs = [r for r in (_run_lbfgs(fn, t, args, delta) for t in thetas) if r is not None]
            if not runs:
                failed += 1
                continue
            law = ChinchillaLaw.from_theta(min(runs, key=lambda r: r.fun).x[:NUM_PARAMS])
            for k in BOOTSTRAP_QUANTITIES:
                draws[k].append(getattr(law, k))
    if failed > max_failed_fraction * samples or samples - failed < 2:
        raise FitError(
            f"{failed} of {samples} bootstrap refits did not converge, which would bias the "
            "standard errors; pass bootstrap starts (starts=start_grid(...)) or add runs."
        )
    return LawBootstrap({k: np.array(v) for k, v in draws.items()}, failed)
