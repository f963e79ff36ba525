"""Bootstrap summaries: standard errors and percentile confidence intervals."""

import numpy as np


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def check_samples(samples: int) -> None:
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(
            f"The number of bootstrap samples must be an integer >= 2, got {samples!r}."
        )


def summarize(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, dict[str, float]]:
    """For each quantity: the bootstrap standard error (std, ddof=1) and the percentile interval.

    The interval holds the central `level` of the draws: quantiles (1 - level)/2 and (1 + level)/2.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")
    lo, hi = (1 - level) / 2, (1 + level) / 2
    out = {}
    for name, values in draws.items():
        values = np.asarray(values, dtype=float)
        out[name] = dict(
            se=float(np.std(values, ddof=1)),
            ci_low=float(np.quantile(values, lo)),
            ci_high=float(np.quantile(values, hi)),
        )
    return out
