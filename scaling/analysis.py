"""Turns a runs table into every fit of the package, as plain data for JSON, plus a summary.

Per (model, epoch budget) only the run with the best learning rate counts (Smith et al. 2023
tune the lr per budget). A fit that fails reports its error instead of numbers.
"""

import numpy as np

from scaling import bootstrap, fit_allocation, fit_chinchilla, fit_power_law, learning_rate
from scaling.fit_chinchilla import FitError

SIZE_COLUMNS = ("macs_per_example", "params")


def _plain(value):
    """numpy scalars and arrays to Python numbers and lists (for json)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _section(fn):
    try:
        return fn()
    except FitError as e:
        return {"error": str(e)}


def analyze(
    rows: list[dict],
    *,
    size: str = "macs_per_example",
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    law_starts: np.ndarray | None = None,
    law_objective: str = "huber",
) -> dict:
    """All fits on the best-lr runs of one dataset; `size` is the model-size column.

    With size = MACs per example, compute = 6 x size x examples exactly, so the compute-optimal
    exponents of the parametric law, beta / (alpha + beta) and alpha / (alpha + beta), hold as
    derived; with parameters they assume compute proportional to parameters x examples.
    """
    if size not in SIZE_COLUMNS:
        raise ValueError(f"size must be one of {SIZE_COLUMNS}, got {size!r}.")
    datasets = sorted({(r["dataset"], r["num_train_examples"]) for r in rows})
    if len(datasets) != 1:
        raise ValueError(
            f"The runs mix datasets (name, training examples) {datasets}: fit one at a time."
        )
    tuned = learning_rate.best_runs(rows)
    c = np.array([r["compute_flops"] for r in tuned])
    loss = np.array([r["heldout_loss"] for r in tuned])
    front = fit_power_law.pareto_frontier(c, loss)
    cf, lf = c[front], loss[front]
    sizes = np.array([r[size] for r in tuned], dtype=float)
    epochs = np.array([r["epochs"] for r in tuned])
    out = {
        "num_runs": len(rows),
        "num_tuned_runs": len(tuned),
        "size_column": size,
        "level": level,
        "bootstrap_samples": samples,
        "frontier": [
            dict(
                run=tuned[i]["run"],
                model=tuned[i]["model"],
                epochs=epochs[i],
                compute_flops=c[i],
                heldout_loss=loss[i],
            )
            for i in front
        ],
    }

    def power_law():
        law = fit_power_law.fit_power_law(cf, lf)
        draws, failed = fit_power_law.bootstrap_power_law(cf, lf, law, samples, seed)
        return dict(k=law.k, b=law.b, bootstrap_failed=failed, **_ci(draws, level))

    def saturating():
        law = fit_power_law.fit_saturating(cf, lf)
        draws, failed = fit_power_law.bootstrap_saturating(cf, lf, law, samples, seed)
        return dict(
            a=law.a, b=law.b, c=law.c, d=law.d, bootstrap_failed=failed, **_ci(draws, level)
        )

    def allocation():
        test = fit_allocation.equal_proportion_test(
            cf, sizes[front], epochs[front], samples=samples, seed=seed, level=level
        )
        a = test.allocation
        return dict(
            size_exponent=a.size_exponent,
            epochs_exponent=a.epochs_exponent,
            size_coef=a.size_coef,
            epochs_coef=a.epochs_coef,
            equal_proportion_consistent=test.consistent,
            intervals=test.summary,
        )

    def parametric():
        examples = np.array([r["examples_seen"] for r in tuned], dtype=float)
        fit = fit_chinchilla.fit(sizes, examples, loss, starts=law_starts, objective=law_objective)
        boot = fit_chinchilla.bootstrap_fit(sizes, examples, loss, fit, samples=samples, seed=seed)
        summary = boot.summary(level)
        a_ci = summary["size_exponent"]
        return dict(
            objective=fit.objective,
            objective_value=fit.objective_value,
            starts=fit.num_starts,
            starts_converged=fit.num_converged,
            starts_at_optimum=fit.num_at_optimum,
            **fit.law.as_dict(),
            size_exponent=fit.law.size_exponent,
            data_exponent=fit.law.data_exponent,
            equal_proportion_consistent=a_ci["ci_low"] <= 0.5 <= a_ci["ci_high"],
            bootstrap_failed=boot.num_failed,
            intervals=summary,
        )

    out["power_law"] = _section(power_law)
    out["saturating_power_law"] = _section(saturating)
    out["allocation"] = _section(allocation)
    out["parametric_law"] = _section(parametric)
    return _plain(out)


def _ci(draws: dict, level: float) -> dict:
    return {"intervals": bootstrap.summarize(draws, level)}


def _interval(section: dict, name: str) -> str:
    ci = section["intervals"][name]
    return f"[{ci['ci_low']:.4g}, {ci['ci_high']:.4g}]"


def summary(results: dict) -> str:
    """A readable account of `analyze`'s results."""
    pct = f"{results['level']:.0%}"
    lines = [
        f"{results['num_runs']} runs, {results['num_tuned_runs']} after picking the best lr per "
        f"(model, epoch budget); {len(results['frontier'])} on the compute-optimal frontier.",
        f"Intervals: {pct} bootstrap percentile intervals, {results['bootstrap_samples']} samples.",
    ]
    pl = results["power_law"]
    if "error" in pl:
        lines.append(f"Power law: FAILED: {pl['error']}")
    else:
        lines.append(
            f"Power law on the frontier: L = {pl['k']:.4g} C^-{pl['b']:.4f}, "
            f"b in {_interval(pl, 'b')}."
        )
    sat = results["saturating_power_law"]
    if "error" in sat:
        lines.append(f"Saturating law: FAILED: {sat['error']}")
    else:
        lines.append(
            f"Saturating law: L = {sat['a']:.4g} (C + {sat['d']:.3g})^-{sat['b']:.4f} + "
            f"{sat['c']:.4g}, b in {_interval(sat, 'b')}, c in {_interval(sat, 'c')}."
        )
    al = results["allocation"]
    if "error" in al:
        lines.append(f"Compute-optimal allocation: FAILED: {al['error']}")
    else:
        verdict = "consistent with" if al["equal_proportion_consistent"] else "rejects"
        lines.append(
            f"Frontier allocation: {results['size_column']} ~ C^{al['size_exponent']:.3f} "
            f"{_interval(al, 'size_exponent')}, epochs ~ C^{al['epochs_exponent']:.3f} "
            f"{_interval(al, 'epochs_exponent')}; difference in "
            f"{_interval(al, 'difference')}: {verdict} equal proportion."
        )
    pa = results["parametric_law"]
    if "error" in pa:
        lines.append(f"Parametric law: FAILED: {pa['error']}")
    else:
        verdict = "consistent with" if pa["equal_proportion_consistent"] else "rejects"
        lines.append(
            f"Parametric law L = E + A/N^alpha + B/D^beta (N = {results['size_column']}, "
            f"D = examples): E={pa['E']:.4g} {_interval(pa, 'E')}, A={pa['A']:.4g}, "
            f"B={pa['B']:.4g}, alpha={pa['alpha']:.4f} {_interval(pa, 'alpha')}, "
            f"beta={pa['beta']:.4f} {_interval(pa, 'beta')}; {pa['starts_at_optimum']} of "
            f"{pa['starts']} starts at the optimum. N_opt ~ C^{pa['size_exponent']:.3f} "
            f"{_interval(pa, 'size_exponent')}: {verdict} equal proportion."
        )
    return "\n".join(lines)
