"""Turns a runs table into every fit of the package, as plain data for JSON, plus a summary.

Per (model, epoch budget) only the run with the best learning rate counts (Smith et al. 2023
tune the lr per budget). A fit that fails reports its error instead of numbers.

The compute-optimal allocation is estimated twice, as Hoffmann et al. 2022 do: from IsoFLOP
slices (`isoflop`, their approach 2) and from the parametric law L(N, D) (approach 3). Each
gives the size and epoch-budget exponents, the verdict on equal proportion (0.5 inside both
intervals) and the compute above which the optimal epoch budget exceeds 1, with bootstrap
intervals. The frontier's power laws of size and epochs only describe the envelope
(`fit_allocation`).
"""

import numpy as np

from scaling import (
    bootstrap,
    compute,
    fit_allocation,
    fit_chinchilla,
    fit_power_law,
    isoflop,
    learning_rate,
)
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
    accelerator: str = "tpu_v4",
    mfu: float | None = None,
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
    examples = np.array([r["examples_seen"] for r in tuned], dtype=float)
    num_train = float(tuned[0]["num_train_examples"])
    mfu = compute.paper_f7plus_mfu(accelerator) if mfu is None else mfu

    hours_per_flop = compute.core_hours(1.0, accelerator, mfu)

    def core_hours(flops):
        return hours_per_flop * np.asarray(flops, float)

    out = {
        "num_runs": len(rows),
        "num_tuned_runs": len(tuned),
        "size_column": size,
        "level": level,
        "bootstrap_samples": samples,
        "num_train_examples": num_train,
        "accelerator": accelerator,
        "mfu": mfu,
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

    def envelope():
        env = fit_allocation.envelope_fit(
            cf, sizes[front], epochs[front], samples=samples, seed=seed, level=level
        )
        a = env.allocation
        return dict(
            size_exponent=a.size_exponent,
            epochs_exponent=a.epochs_exponent,
            size_coef=a.size_coef,
            epochs_coef=a.epochs_coef,
            grid_exponent=fit_allocation.grid_exponent(sizes, c),
            intervals=env.summary,
        )

    def isoflop_allocation():
        fit = isoflop.fit(sizes, examples, c, loss)
        draws, failed = isoflop.bootstrap_fit(
            sizes, examples, c, loss, num_train, samples=samples, seed=seed
        )
        one_epoch = fit.one_epoch_compute(num_train)
        draws["one_epoch_core_hours"] = core_hours(draws["one_epoch_compute"])
        summary = bootstrap.summarize(draws, level)
        return dict(
            size_exponent=fit.size_exponent,
            data_exponent=fit.data_exponent,
            size_coef=fit.size_coef,
            data_coef=fit.data_coef,
            one_epoch_compute=one_epoch,
            one_epoch_core_hours=core_hours(one_epoch),
            equal_proportion_consistent=_holds_half(summary),
            slices=[_slice(s, num_train) for s in fit.slices],
            bootstrap_failed=failed,
            intervals=summary,
        )

    def parametric():
        fit = fit_chinchilla.fit(sizes, examples, loss, starts=law_starts, objective=law_objective)
        boot = fit_chinchilla.bootstrap_fit(sizes, examples, loss, fit, samples=samples, seed=seed)
        draws = dict(boot.draws)
        drawn = fit_chinchilla.ChinchillaLaw(*(draws[k] for k in ("E", "A", "B", "alpha", "beta")))
        draws["one_epoch_compute"] = drawn.compute_for_data(num_train)
        draws["one_epoch_core_hours"] = core_hours(draws["one_epoch_compute"])
        summary = bootstrap.summarize(draws, level)
        one_epoch = float(fit.law.compute_for_data(num_train))
        return dict(
            objective=fit.objective,
            objective_value=fit.objective_value,
            starts=fit.num_starts,
            starts_converged=fit.num_converged,
            starts_at_optimum=fit.num_at_optimum,
            **fit.law.as_dict(),
            size_exponent=fit.law.size_exponent,
            data_exponent=fit.law.data_exponent,
            one_epoch_compute=one_epoch,
            one_epoch_core_hours=core_hours(one_epoch),
            equal_proportion_consistent=_holds_half(summary),
            bootstrap_failed=boot.num_failed,
            intervals=summary,
        )

    out["power_law"] = _section(power_law)
    out["saturating_power_law"] = _section(saturating)
    out["envelope"] = _section(envelope)
    out["isoflop_allocation"] = _section(isoflop_allocation)
    out["parametric_law"] = _section(parametric)
    return _plain(out)


SECTIONS = ("power_law", "saturating_power_law", "envelope", "isoflop_allocation", "parametric_law")


def _holds_half(summary: dict) -> bool:
    """Equal proportion: 0.5 inside the intervals of both the size and the data exponent."""
    return all(
        summary[k]["ci_low"] <= 0.5 <= summary[k]["ci_high"]
        for k in ("size_exponent", "data_exponent")
    )


def _slice(s: isoflop.Slice, num_train: float) -> dict:
    used = s.optimal_size is not None
    return dict(
        compute_flops=s.compute,
        sizes=list(s.sizes),
        losses=list(s.losses),
        used=used,
        optimal_size=s.optimal_size,
        optimal_epochs=s.optimal_examples / num_train if used else None,
        note=s.note,
    )


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
        f"(model, epoch budget); {len(results['frontier'])} on the loss-vs-compute frontier.",
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
    lines += _envelope_lines(results)
    lines += _isoflop_lines(results)
    lines += _parametric_lines(results)
    return "\n".join(lines)


def _allocation_line(results: dict, section: dict) -> str:
    """Exponents, the equal-proportion verdict and the one-epoch compute of one estimator."""
    verdict = "consistent with" if section["equal_proportion_consistent"] else "rejects"
    ci = section["intervals"]["one_epoch_core_hours"]
    return (
        f"N_opt ~ C^{section['size_exponent']:.3f} {_interval(section, 'size_exponent')}, "
        f"D_opt ~ C^{section['data_exponent']:.3f} {_interval(section, 'data_exponent')}: "
        f"{verdict} equal proportion (a = b = 0.5). The optimal epoch budget exceeds 1 above "
        f"{section['one_epoch_compute']:.3g} FLOPs {_interval(section, 'one_epoch_compute')}: "
        f"{section['one_epoch_core_hours']:,.0f} [{ci['ci_low']:,.0f}, {ci['ci_high']:,.0f}] "
        f"{results['accelerator']} core hours at {results['mfu']:.1%} MFU."
    )


def _envelope_lines(results: dict) -> list[str]:
    env = results["envelope"]
    if "error" in env:
        return [f"Frontier envelope: FAILED: {env['error']}"]
    return [
        f"Frontier envelope (describes the best runs so far; not an allocation estimate, its "
        f"ends are the grid's ends): {results['size_column']} ~ C^{env['size_exponent']:.3f} "
        f"{_interval(env, 'size_exponent')}, epochs ~ C^{env['epochs_exponent']:.3f} "
        f"{_interval(env, 'epochs_exponent')}; the grid's size and compute ranges alone give "
        f"C^{env['grid_exponent']:.3f}."
    ]


def _isoflop_lines(results: dict) -> list[str]:
    iso = results["isoflop_allocation"]
    if "error" in iso:
        return [f"IsoFLOP allocation: FAILED: {iso['error']}"]
    used = [s for s in iso["slices"] if s["used"]]
    unused = [s for s in iso["slices"] if not s["used"]]
    lines = [
        f"IsoFLOP slices (Hoffmann et al. approach 2; {len(used)} of {len(iso['slices'])} used): "
        + _allocation_line(results, iso)
    ]
    lines.append(
        "  used: "
        + ", ".join(
            f"{s['compute_flops']:.3g} ({len(s['sizes'])} models, optimum "
            f"{s['optimal_size']:.3g} x {s['optimal_epochs']:.3g} ep)"
            for s in used
        )
    )
    if unused:
        lines.append(
            "  not used: " + ", ".join(f"{s['compute_flops']:.3g} ({s['note']})" for s in unused)
        )
    return lines


def _parametric_lines(results: dict) -> list[str]:
    pa = results["parametric_law"]
    if "error" in pa:
        return [f"Parametric law: FAILED: {pa['error']}"]
    return [
        f"Parametric law L = E + A/N^alpha + B/D^beta (N = {results['size_column']}, "
        f"D = examples): E={pa['E']:.4g} {_interval(pa, 'E')}, A={pa['A']:.4g}, "
        f"B={pa['B']:.4g}, alpha={pa['alpha']:.4f} {_interval(pa, 'alpha')}, "
        f"beta={pa['beta']:.4f} {_interval(pa, 'beta')}; {pa['starts_at_optimum']} of "
        f"{pa['starts']} starts at the optimum.",
        "Parametric allocation: " + _allocation_line(results, pa),
    ]
