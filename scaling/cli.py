"""`python -m scaling {compute,collect,fit,chinchilla,lr,sweep,plot}`: the package's commands."""

import argparse
import json
import pathlib
import sys

import hardware
from scaling import (
    analysis,
    chinchilla_data,
    compute,
    fit_chinchilla,
    fit_power_law,
    learning_rate,
    paper_models,
    plots,
    runs,
    sweep,
)
from scaling.fit_chinchilla import FitError

# Named start grids of the parametric fit: the full grid of Hoffmann et al. (4500 starts), and
# its cell around the optimum of the Chinchilla data (32 starts, for quick looks and tests).
LAW_GRIDS = {
    "full": {},
    "cell": dict(a=(5.0, 10.0), b=(5.0, 10.0), e=(0.0, 0.5), alpha=(0.0, 0.5), beta=(0.0, 0.5)),
}
FIGURES = ("loss_vs_compute", "optimal_lr", "top1_vs_compute")


def _law_starts(name: str):
    return fit_chinchilla.start_grid(**LAW_GRIDS[name])


def _write_json(data: dict, path: str | None) -> None:
    if path:
        pathlib.Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"Wrote {path}")


def _mfu(args) -> tuple[float, str]:
    if getattr(args, "workdir", None):
        metrics = runs.read_metrics(pathlib.Path(args.workdir) / "metrics.jsonl")
        return compute.measured_mfu(metrics), f"measured in {args.workdir}"
    if args.mfu is not None:
        return args.mfu, "assumed"
    return compute.paper_f7plus_mfu(args.accelerator), "implied by F7+ at 110k TPU-v4 core hours"


def cmd_compute(args) -> int:
    mfu, source = _mfu(args)
    acc = hardware.accelerator(args.accelerator)
    if args.table:
        rows = compute.paper_table(args.accelerator, mfu)
        print(
            f"Pre-training on JFT-4B ({paper_models.JFT_NUM_EXAMPLES:.0e} examples per epoch, "
            f"{paper_models.PRETRAIN_RESOLUTION} px, {paper_models.JFT_NUM_CLASSES} classes): "
            f"{acc.name} core hours at {mfu:.1%} MFU ({source})."
        )
        budgets = paper_models.EPOCH_BUDGETS
        print(f"{'model':<14}{'params':>9}{'GMACs':>9}" + "".join(f"{b:>10g} ep" for b in budgets))
        for model in paper_models.MODELS:
            mine = [r for r in rows if r["model"] == model]
            params, gmacs = mine[0]["params"] / 1e6, mine[0]["macs_per_example"] / 1e9
            cells = "".join(f"{r['core_hours']:>13,.0f}" for r in mine)
            print(f"{model:<14}{params:>8.1f}M{gmacs:>9.2f}{cells}")
        return 0
    needed = ("model", "epochs", "examples", "resolution")
    missing = [f"--{k}" for k in needed if getattr(args, k) is None]
    if missing:
        raise SystemExit(f"compute needs {', '.join(missing)}, or --table.")
    cost = compute.model_cost(args.model, args.resolution, args.num_classes)
    examples = args.epochs * args.examples
    flops = compute.training_flops(cost.macs_per_example, examples)
    hours = compute.core_hours(flops, acc, mfu)
    name = compute.canonical_model_name(args.model)
    print(f"model            {name} at {args.resolution} px, {args.num_classes} classes")
    print(f"parameters       {cost.params:,}")
    print(f"MACs / example   {cost.macs_per_example:,} ({cost.macs_per_example / 1e9:.3f} G)")
    print(f"examples         {examples:.4g} ({args.epochs:g} epochs x {args.examples:.4g})")
    print(f"training FLOPs   {flops:.4g} (6 x MACs x examples)")
    print(f"core hours       {hours:,.0f} {acc.name} core hours at {mfu:.1%} MFU ({source})")
    return 0


def cmd_collect(args) -> int:
    rows, skipped = runs.collect(args.workdirs)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not rows:
        raise SystemExit("No finished runs among the work directories; nothing written.")
    runs.write_csv(rows, args.out)
    print(f"Wrote {len(rows)} runs to {args.out} ({len(skipped)} unfinished left out).")
    return 0


def cmd_fit(args) -> int:
    rows = runs.read_csv(args.runs)
    results = analysis.analyze(
        rows,
        size=args.size,
        samples=args.samples,
        seed=args.seed,
        level=args.level,
        law_starts=_law_starts(args.law_grid),
        law_objective=args.objective,
    )
    print(analysis.summary(results))
    _write_json(results, args.out)
    sections = ("power_law", "saturating_power_law", "allocation", "parametric_law")
    return 1 if any("error" in results[s] for s in sections) else 0


def cmd_chinchilla(args) -> int:
    n, d, loss = chinchilla_data.load(args.data, args.drop)
    fit = fit_chinchilla.fit(n, d, loss, starts=_law_starts(args.grid), objective=args.objective)
    boot = fit_chinchilla.bootstrap_fit(n, d, loss, fit, samples=args.samples, seed=args.seed)
    summary = boot.summary(args.level)
    print(
        f"{n.size} runs; objective {fit.objective} = {fit.objective_value:.10g}; "
        f"{fit.num_at_optimum} of {fit.num_starts} starts at the optimum "
        f"({fit.num_converged} converged); {args.samples} bootstrap samples "
        f"({boot.num_failed} failed)."
    )
    print(f"{'':<14}{'estimate':>12}{'SE':>11}{'published':>11}{'pub. SE':>9}")
    for name, value in fit.law.as_dict().items():
        pub = chinchilla_data.PUBLISHED.get(name)
        pub_se = chinchilla_data.PUBLISHED_SE.get(name)
        pub = "" if pub is None else f"{pub:.5g}"
        pub_se = "" if pub_se is None else f"{pub_se:.4g}"
        print(f"{name:<14}{value:>12.5g}{summary[name]['se']:>11.4g}{pub:>11}{pub_se:>9}")
    print(
        f"N_opt ~ C^{fit.law.size_exponent:.4f} (SE {summary['size_exponent']['se']:.4f}), "
        f"D_opt ~ C^{fit.law.data_exponent:.4f}."
    )
    _write_json(
        dict(
            law=fit.law.as_dict(),
            objective=fit.objective,
            objective_value=fit.objective_value,
            starts=fit.num_starts,
            starts_converged=fit.num_converged,
            starts_at_optimum=fit.num_at_optimum,
            size_exponent=fit.law.size_exponent,
            data_exponent=fit.law.data_exponent,
            bootstrap_samples=args.samples,
            bootstrap_failed=boot.num_failed,
            intervals=summary,
        ),
        args.out,
    )
    return 0


def _model_size(name: str, rows: list[dict]) -> float:
    """MACs per example of `name`: from the runs when it is there, else counted."""
    for row in rows:
        if row["model"] == name:
            return float(row["macs_per_example"])
    ref = rows[0]
    cost = compute.model_cost(name, int(ref["train_resolution"]), int(ref["num_classes"]))
    return float(cost.macs_per_example)


def cmd_lr(args) -> int:
    rows = runs.read_csv(args.runs)
    choices = learning_rate.choose(rows)
    print(f"{'model':<16}{'epochs':>8}{'best lr':>10}{'refined':>10}  grid")
    for c in choices:
        refined = "" if c.refined_lr is None else f"{c.refined_lr:.3g}"
        edge = "" if c.bracketed else "  (at grid end: extend the grid)"
        lrs = ", ".join(f"{lr:g}" for lr in c.lrs)
        print(f"{c.model:<16}{c.epochs:>8g}{c.best_lr:>10g}{refined:>10}  [{lrs}]{edge}")
    model = learning_rate.fit_model(choices, refined=args.refined)
    size_term = "" if model.c2 is None else f" {model.c2:+.4f} log2(S / {model.size0:.4g})"
    print(
        f"log2 lr* = {model.c0:.4f} + ({model.c1:.4f}{size_term}) log2(E / {model.epochs0:g}); "
        f"lr* at the smallest budget {2**model.c0:.3g}; residual std {model.residual_std_log2:.3f} "
        f"(factors of 2) over {model.num_points} optima."
    )
    anchor = learning_rate.grid_anchor(choices)
    kappa = learning_rate.sweep_curvature(choices)
    for item in args.predict:
        name, _, epochs = item.partition(":")
        if not epochs:
            raise SystemExit(f"--predict takes MODEL:EPOCHS, e.g. nfnet_f3:4, got {item!r}.")
        size, budget = _model_size(name, rows), float(epochs)
        lr = float(model.predict(size, budget))
        lo, hi = learning_rate.two_runs(lr, anchor)
        print(
            f"{name} at {budget:g} epochs: predicted lr* {lr:.3g}. Confirm it with the two runs "
            "below, then rerun `collect` and this command: the pair's losses place the optimum."
        )
        for lr_run in (lo, hi):
            spec = sweep.RunSpec(name, budget, lr_run, 0)
            print("  " + sweep.command(spec, args.configs, args.workdir_root))
    for c in learning_rate.confirmations(rows, kappa):
        predicted = float(model.predict(c.size, c.epochs))
        verdict = "confirms" if c.lr_lo <= c.optimal_lr <= c.lr_hi else "does not confirm"
        print(
            f"{c.model} at {c.epochs:g} epochs: losses {c.loss_lo:.4f} at lr {c.lr_lo:g} and "
            f"{c.loss_hi:.4f} at lr {c.lr_hi:g} put the optimum at {c.optimal_lr:.3g} (sweep "
            f"curvature {kappa:.3g} per (log2 lr)^2); predicted {predicted:.3g}: the pair "
            f"{verdict} that the optimum lies between them."
        )
    return 0


def cmd_sweep(args) -> int:
    if args.lrs and args.lr_center:
        raise SystemExit("Give either --lrs or --lr-center (with --lr-below/--lr-above), not both.")
    if args.lrs:
        lrs = args.lrs
    elif args.lr_center:
        lrs = sweep.lr_grid(args.lr_center, args.lr_below, args.lr_above)
    else:
        raise SystemExit("sweep needs learning rates: --lrs 0.4 0.8 1.6 or --lr-center 1.6.")
    sweep.check_configs(args.models, args.configs)
    specs = sweep.plan(args.models, args.epochs, lrs, args.seeds)
    commands = [sweep.command(s, args.configs, args.workdir_root, args.extra) for s in specs]
    if args.out:
        path = pathlib.Path(args.out)
        path.write_text(sweep.launch_script(commands))
        path.chmod(0o755)
        print(f"Wrote {len(commands)} runs to {path}")
    else:
        print("\n".join(commands))
    return 0


def cmd_plot(args) -> int:
    rows = runs.read_csv(args.runs)
    tuned = learning_rate.best_runs(rows)
    c = [r["compute_flops"] for r in tuned]
    loss = [r["heldout_loss"] for r in tuned]
    front = fit_power_law.pareto_frontier(c, loss)
    cf, lf = [c[i] for i in front], [loss[i] for i in front]
    fits = {}
    for name, fit in (
        ("power law", fit_power_law.fit_power_law),
        ("saturating", fit_power_law.fit_saturating),
    ):
        try:
            fits[name] = fit(cf, lf)
        except FitError as e:
            print(f"note: no {name} frontier fit in the figure: {e}", file=sys.stderr)
    mfu, source = _mfu(args)
    axis = plots.ComputeAxis(args.accelerator, mfu) if args.core_hours else plots.ComputeAxis()
    written = plots.save(
        plots.loss_vs_compute(rows, fits.get("power law"), fits.get("saturating"), axis),
        args.out_dir,
        FIGURES[0],
        args.formats,
    )
    try:
        choices = learning_rate.choose(rows)
        written += plots.save(
            plots.optimal_lr(choices, learning_rate.fit_model(choices)),
            args.out_dir,
            FIGURES[1],
            args.formats,
        )
    except FitError as e:
        print(f"note: no learning-rate figure: {e}", file=sys.stderr)
    try:
        top_axis = plots.ComputeAxis(args.accelerator, mfu)
        written += plots.save(
            plots.top1_vs_compute(rows, top_axis), args.out_dir, FIGURES[2], args.formats
        )
    except ValueError as e:
        print(f"note: no top-1 figure: {e}", file=sys.stderr)
    print(f"Core hours at {mfu:.1%} MFU ({source}). Wrote " + ", ".join(map(str, written)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scaling", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def mfu_args(p):
        p.add_argument("--accelerator", default="tpu_v4", choices=sorted(hardware.ACCELERATORS))
        p.add_argument(
            "--mfu", type=float, help="assumed MFU in (0, 1]; default: F7+'s in the paper"
        )

    p = sub.add_parser("compute", help="FLOPs and core hours of a training run")
    p.add_argument("--model", help="registry name, e.g. nfnet_f7plus")
    p.add_argument("--epochs", type=float)
    p.add_argument("--examples", type=float, help="training examples per epoch, e.g. 4e9")
    p.add_argument("--resolution", type=int, help="training resolution in px")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--workdir", help="measure the MFU from this run's metrics.jsonl")
    p.add_argument("--table", action="store_true", help="the paper's models x epoch budgets")
    mfu_args(p)
    p.set_defaults(fn=cmd_compute)

    p = sub.add_parser("collect", help="finished runs -> runs CSV")
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", "-o", default="runs.csv")
    p.set_defaults(fn=cmd_collect)

    def fit_args(p, samples):
        p.add_argument("--samples", type=int, default=samples, help="bootstrap samples")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--level", type=float, default=0.95, help="confidence level of intervals")
        p.add_argument("--objective", default="huber", choices=sorted(fit_chinchilla.OBJECTIVES))
        p.add_argument("--out", "-o", help="write the results as JSON")

    p = sub.add_parser("fit", help="scaling-law fits with bootstrap intervals")
    p.add_argument("runs", help="runs CSV written by collect")
    p.add_argument("--size", default="macs_per_example", choices=analysis.SIZE_COLUMNS)
    p.add_argument("--law-grid", default="full", choices=sorted(LAW_GRIDS))
    fit_args(p, 1000)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("chinchilla", help="the parametric fit on Epoch AI's Chinchilla data")
    p.add_argument("data", nargs="?", default=str(chinchilla_data.DATA_PATH))
    p.add_argument("--drop", type=int, default=chinchilla_data.DROPPED_HIGHEST_LOSS)
    p.add_argument("--grid", default="full", choices=sorted(LAW_GRIDS))
    fit_args(p, 4000)
    p.set_defaults(fn=cmd_chinchilla)

    def launch_args(p):
        p.add_argument("--configs", default="configs", help="directory of <model>.py configs")
        p.add_argument("--workdir-root", default="workdirs")

    p = sub.add_parser("lr", help="optimal learning rates, their trend, two-run confirmation")
    p.add_argument("runs")
    p.add_argument("--predict", action="append", default=[], metavar="MODEL:EPOCHS")
    p.add_argument("--refined", action="store_true", help="fit parabola-refined optima")
    launch_args(p)
    p.set_defaults(fn=cmd_lr)

    p = sub.add_parser("sweep", help="train.py commands for models x epochs x lrs x seeds")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--epochs", nargs="+", type=float, required=True)
    p.add_argument("--lrs", nargs="+", type=float)
    p.add_argument("--lr-center", type=float)
    p.add_argument("--lr-below", type=int, default=2)
    p.add_argument("--lr-above", type=int, default=2)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--extra", nargs="*", default=[], help="more --config.field=value flags")
    p.add_argument("--out", "-o", help="write a launch script instead of printing")
    launch_args(p)
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("plot", help="the paper's figures for a runs CSV")
    p.add_argument("runs")
    p.add_argument("--out-dir", default="figures")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"])
    p.add_argument("--core-hours", action="store_true", help="loss figure in core hours")
    mfu_args(p)
    p.set_defaults(fn=cmd_plot)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
