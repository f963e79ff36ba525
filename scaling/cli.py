"""`python -m scaling {compute,collect,fit,chinchilla,lr,sweep,plot,synthetic}`: the commands."""

import argparse
import json
import math
import pathlib
import sys

from modeling import hardware
from scaling import (
    analysis,
    bands,
    chinchilla_data,
    compute,
    fit_chinchilla,
    fit_power_law,
    learning_rate,
    paper_models,
    plots,
    reference_points,
    runs,
    sweep,
    synthetic,
    synthetic_finetune,
)
from scaling.fit_chinchilla import FitError

# Named start grids of the parametric fit: the full grid of Hoffmann et al. (4500 starts), and
# its cell around the optimum of the Chinchilla data (32 starts, for quick looks and tests).
LAW_GRIDS = {
    "full": {},
    # Every other value of each axis of the full grid: 3 x 3 x 3 x 3 x 3 = 243 starts, ~1/20 the
    # time; the default of `fit`.
    "coarse": dict(
        a=(0.0, 10.0, 20.0),
        b=(0.0, 10.0, 20.0),
        e=(-1.0, 0.0, 1.0),
        alpha=(0.0, 1.0, 2.0),
        beta=(0.0, 1.0, 2.0),
    ),
    "cell": dict(a=(5.0, 10.0), b=(5.0, 10.0), e=(0.0, 0.5), alpha=(0.0, 0.5), beta=(0.0, 0.5)),
}
FIGURES = ("loss_vs_compute", "optimal_allocation", "optimal_lr", "finetune_top1_vs_compute")


def _grid_help() -> str:
    return "; ".join(
        f"{name} ({len(fit_chinchilla.start_grid(**axes))} starts)"
        for name, axes in LAW_GRIDS.items()
    )


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
    rows, finetuned, skipped = runs.collect_all(args.workdirs)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not rows and not finetuned:
        raise SystemExit("No finished runs among the work directories; nothing written.")
    if rows:
        runs.write_csv(rows, args.out)
        print(f"Wrote {len(rows)} runs to {args.out}.")
    if finetuned:
        runs.write_finetune_csv(finetuned, args.finetune_out)
        print(
            f"Wrote {len(finetuned)} fine-tuning runs, each with its pre-training run's compute, "
            f"to {args.finetune_out}."
        )
    print(f"{len(skipped)} unfinished or not runs left out.")
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
        accelerator=args.accelerator,
        mfu=_mfu(args)[0],
    )
    print(analysis.summary(results))
    _write_json(results, args.out)
    return 1 if any("error" in results[s] for s in analysis.SECTIONS) else 0


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


def _preset_specs(args) -> tuple[list, list[str]]:
    """The run specs and extra flags of `--preset`, which sets the models, budgets and lrs."""
    given = [f"--{k.replace('_', '-')}" for k in ("models", "epochs", "lrs", "lr_center")]
    given = [flag for flag in given if getattr(args, flag[2:].replace("-", "_"))]
    if given:
        raise SystemExit(f"--preset {args.preset} sets the grid; leave out {', '.join(given)}.")
    preset = sweep.PRESETS[args.preset]()
    sweep.check_configs(list(preset.models), args.configs)
    return preset.specs(), [*preset.extra, *args.extra]


def cmd_sweep(args) -> int:
    if args.preset:
        specs, extra = _preset_specs(args)
        commands = [sweep.command(s, args.configs, args.workdir_root, extra) for s in specs]
        return _write_sweep(args, commands)
    if not args.models or not args.epochs:
        raise SystemExit("sweep needs --models and --epochs, or a --preset.")
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
    return _write_sweep(args, commands)


def _write_sweep(args, commands: list[str]) -> int:
    if args.out:
        path = pathlib.Path(args.out)
        path.write_text(sweep.launch_script(commands))
        path.chmod(0o755)
        print(f"Wrote {len(commands)} runs to {path}")
    else:
        print("\n".join(commands))
    return 0


def cmd_synthetic(args) -> int:
    law = synthetic.paper_like_law(args.alpha, args.beta)
    rows = synthetic.paper_like_rows(law, noise=args.noise, seed=args.seed)
    runs.write_csv(rows, args.out)
    if args.finetune_out:
        finetuned = synthetic_finetune.finetune_rows(rows, seed=args.seed)
        runs.write_finetune_csv(finetuned, args.finetune_out)
        print(f"Wrote {len(finetuned)} made-up fine-tuning runs to {args.finetune_out}.")
    one_epoch = law.compute_for_data(rows[0]["num_train_examples"])
    print(
        f"Wrote {len(rows)} runs to {args.out}: {law}, noise {args.noise:g}; true N_opt ~ "
        f"C^{law.size_exponent:.3f}, optimal epoch budget 1 at {one_epoch:.4g} FLOPs."
    )
    return 0


def _note(what: str, error: Exception) -> None:
    print(f"note: {what}: {error}", file=sys.stderr)


def _frontier(rows: list[dict]):
    tuned = learning_rate.best_runs(rows)
    flops = [r["compute_flops"] for r in tuned]
    loss = [r["heldout_loss"] for r in tuned]
    front = fit_power_law.pareto_frontier(flops, loss)
    return [flops[i] for i in front], [loss[i] for i in front]


def _try(what: str, make):
    """make(), or None after a note saying why `what` is left out of the figures."""
    try:
        return make()
    except (FitError, ValueError) as e:
        _note(f"no {what}", e)
        return None


def _loss_figure(rows, boot: dict, axis):
    flops, loss = _frontier(rows)
    power = _try("power-law band", lambda: bands.power_law_band(flops, loss, **boot))
    saturating = _try("saturating-law band", lambda: bands.saturating_band(flops, loss, **boot))
    return plots.loss_vs_compute(rows, power, saturating, axis)


def _allocation_figure(rows, boot: dict, args, axis):
    starts = _law_starts(args.law_grid)
    estimates = [
        _try("IsoFLOP allocation", lambda: bands.isoflop_allocation(rows, **boot)),
        _try(
            "parametric allocation",
            lambda: bands.parametric_allocation(rows, **boot, starts=starts),
        ),
    ]
    return plots.optimal_allocation([e for e in estimates if e is not None], rows, axis)


def _lr_figure(rows, boot: dict):
    choices = learning_rate.choose(rows)
    model = learning_rate.fit_model(choices)
    return plots.optimal_lr(choices, model, bands.lr_trend_bands(choices, model, **boot))


def _finetune_figure(args, boot: dict, axis, reference: bool):
    finetuned = runs.read_finetune_csv(args.finetune)
    flops = [r["pretrain_compute_flops"] for r in finetuned]
    error = [100 * (1 - r["top1"]) for r in finetuned]
    trend = _try("top-1 trend", lambda: bands.power_law_band(flops, error, **boot))
    return plots.finetune_top1_vs_compute(finetuned, axis, trend, reference)


def cmd_plot(args) -> int:
    rows = runs.read_csv(args.runs)
    boot = dict(samples=args.samples, seed=args.seed, level=args.band_level)
    mfu, source = _mfu(args)
    hours = plots.ComputeAxis(args.accelerator, mfu)
    axis = hours if args.core_hours else plots.ComputeAxis()
    reference = args.reference_points
    if reference is None:
        reference = args.accelerator == reference_points.ACCELERATOR
    makers = {
        FIGURES[0]: lambda: _loss_figure(rows, boot, axis),
        FIGURES[1]: lambda: _allocation_figure(rows, boot, args, axis),
        FIGURES[2]: lambda: _lr_figure(rows, boot),
    }
    if args.finetune:
        makers[FIGURES[3]] = lambda: _finetune_figure(args, boot, hours, reference)
    written = []
    for name, make in makers.items():
        fig = _try(f"{name} figure", make)
        if fig is not None:
            written += plots.save(fig, args.out_dir, name, args.formats, args.dpi)
    print(f"Core hours at {mfu:.1%} MFU ({source}). Wrote " + ", ".join(map(str, written)))
    return 0


def _checked(convert, ok, requirement: str):
    """An argparse type that refuses values outside a range with one sentence."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}.")
        return value

    parse.__name__ = convert.__name__
    return parse


positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
positive_int = _checked(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
bootstrap_samples = _checked(int, lambda v: v >= 2, "an integer >= 2")
open_fraction = _checked(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
mfu_fraction = _checked(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def _subparser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scaling",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def mfu_args(p):
        p.add_argument(
            "--accelerator",
            default="tpu_v4",
            choices=sorted(hardware.ACCELERATORS),
            help="accelerator whose peak FLOP/s per core converts FLOPs to core hours",
        )
        p.add_argument(
            "--mfu",
            type=mfu_fraction,
            help="assumed model FLOPs utilization in (0, 1]; unset: the MFU implied by the "
            "paper's F7+ (110k TPU-v4 core hours)",
        )

    p = _subparser(sub, "compute", "FLOPs and core hours of a training run")
    p.add_argument("--model", help="registry name, e.g. nfnet_f7plus")
    p.add_argument("--epochs", type=positive_float, help="epoch budget")
    p.add_argument("--examples", type=positive_float, help="training examples per epoch, e.g. 4e9")
    p.add_argument("--resolution", type=positive_int, help="training resolution in px")
    p.add_argument("--num-classes", type=positive_int, default=1000, help="classifier classes")
    p.add_argument("--workdir", help="measure the MFU from this run's metrics.jsonl")
    p.add_argument("--table", action="store_true", help="the paper's models x epoch budgets")
    mfu_args(p)
    p.set_defaults(fn=cmd_compute)

    p = _subparser(sub, "collect", "finished runs -> runs CSV")
    p.add_argument(
        "workdirs",
        nargs="+",
        help="train.py work directories; unfinished runs and directories that are not runs are "
        "listed and skipped",
    )
    p.add_argument("--out", "-o", default="runs.csv", help="CSV of the pre-training runs")
    p.add_argument(
        "--finetune-out",
        default="finetune.csv",
        help="CSV of the fine-tuning runs (config.init.path set), each joined to the "
        "pre-training run it started from",
    )
    p.set_defaults(fn=cmd_collect)

    def law_grid_arg(p):
        p.add_argument(
            "--law-grid",
            default="coarse",
            choices=sorted(LAW_GRIDS),
            help="starts of the parametric fit: " + _grid_help(),
        )

    def fit_args(p, samples):
        p.add_argument(
            "--samples", type=bootstrap_samples, default=samples, help="bootstrap samples"
        )
        p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the resampling")
        p.add_argument(
            "--level", type=open_fraction, default=0.95, help="confidence level of the intervals"
        )
        p.add_argument(
            "--objective",
            default="huber",
            choices=sorted(fit_chinchilla.OBJECTIVES),
            help="objective of the parametric law: summed Huber loss, or Huber likelihood",
        )
        p.add_argument("--out", "-o", help="write the results as JSON")

    p = _subparser(sub, "fit", "scaling-law fits and compute-optimal allocation with intervals")
    p.add_argument("runs", help="runs CSV written by collect")
    p.add_argument(
        "--size",
        default="macs_per_example",
        choices=analysis.SIZE_COLUMNS,
        help="model-size column (MACs per example make compute = 6 x size x examples exact)",
    )
    law_grid_arg(p)
    fit_args(p, 1000)
    mfu_args(p)
    p.set_defaults(fn=cmd_fit)

    p = _subparser(sub, "chinchilla", "the parametric fit on Epoch AI's Chinchilla data")
    p.add_argument("data", nargs="?", default=str(chinchilla_data.DATA_PATH), help="Epoch AI's CSV")
    p.add_argument(
        "--drop",
        type=nonnegative_int,
        default=chinchilla_data.DROPPED_HIGHEST_LOSS,
        help="highest-loss points dropped (Besiroglu et al. drop 5)",
    )
    p.add_argument(
        "--grid", default="full", choices=sorted(LAW_GRIDS), help="start grid: " + _grid_help()
    )
    fit_args(p, 4000)
    p.set_defaults(fn=cmd_chinchilla)

    def launch_args(p):
        p.add_argument("--configs", default="configs", help="directory of <model>.py configs")
        p.add_argument("--workdir-root", default="workdirs", help="parent of the work directories")

    p = _subparser(sub, "lr", "optimal learning rates, their trend, two-run confirmation")
    p.add_argument("runs", help="runs CSV written by collect")
    p.add_argument(
        "--predict",
        action="append",
        default=[],
        metavar="MODEL:EPOCHS",
        help="predict the optimal lr of a model at an epoch budget (repeatable)",
    )
    p.add_argument("--refined", action="store_true", help="fit parabola-refined optima")
    launch_args(p)
    p.set_defaults(fn=cmd_lr)

    p = _subparser(sub, "sweep", "train.py commands for models x epochs x lrs x seeds")
    p.add_argument(
        "--preset",
        choices=sorted(sweep.PRESETS),
        help="a named grid instead of --models/--epochs/--lrs: cpu = tiny NFNets and ViTs on "
        "the digits, ~25 minutes on 2 CPU cores (scripts/cpu_scaling_sweep.py runs it)",
    )
    p.add_argument("--models", nargs="+", help="config names, CONFIG or CONFIG:ARGS")
    p.add_argument("--epochs", nargs="+", type=positive_float, help="epoch budgets")
    p.add_argument("--lrs", nargs="+", type=positive_float, help="learning rates")
    p.add_argument("--lr-center", type=positive_float, help="centre of a 2x lr grid")
    p.add_argument(
        "--lr-below", type=nonnegative_int, default=2, help="grid values below the centre"
    )
    p.add_argument(
        "--lr-above", type=nonnegative_int, default=2, help="grid values above the centre"
    )
    p.add_argument("--seeds", nargs="+", type=nonnegative_int, default=[0], help="seeds")
    p.add_argument("--extra", nargs="*", default=[], help="more --config.field=value flags")
    p.add_argument("--out", "-o", help="write a launch script instead of printing")
    launch_args(p)
    p.set_defaults(fn=cmd_sweep)

    p = _subparser(sub, "plot", "the paper's figures for a runs CSV")
    p.add_argument("runs", help="runs CSV written by collect")
    p.add_argument("--out-dir", default="figures", help="directory of the figures")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="file formats")
    p.add_argument("--dpi", type=positive_int, default=150, help="resolution of PNG figures")
    p.add_argument(
        "--core-hours", action="store_true", help="loss and allocation figures in core hours"
    )
    p.add_argument(
        "--finetune",
        help="fine-tuning CSV written by collect: adds Figure 1 (top-1 error vs pre-training "
        "compute, in core hours)",
    )
    p.add_argument(
        "--reference-points",
        action=argparse.BooleanOptionalAction,
        help="overlay the published ViT and NFNet points on Figure 1 (default: on for tpu_v4)",
    )
    p.add_argument(
        "--samples", type=bootstrap_samples, default=1000, help="bootstrap samples of the bands"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the resampling")
    p.add_argument(
        "--band-level",
        type=open_fraction,
        default=bands.DEFAULT_LEVEL,
        help="central fraction of the bootstrap curves that the bands hold (0.9: 5-95%%)",
    )
    law_grid_arg(p)
    mfu_args(p)
    p.set_defaults(fn=cmd_plot)

    p = _subparser(sub, "synthetic", "a paper-like sweep drawn from a known law, as a runs CSV")
    p.add_argument(
        "--alpha", type=positive_float, default=0.3, help="size exponent of the true law"
    )
    p.add_argument("--beta", type=positive_float, default=0.3, help="data exponent of the true law")
    p.add_argument(
        "--noise",
        type=_checked(float, lambda v: v >= 0, "a number >= 0"),
        default=synthetic.PAPER_LIKE_NOISE,
        help="log-std of the multiplicative loss noise",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the noise")
    p.add_argument("--out", "-o", default="runs.csv", help="CSV to write")
    p.add_argument(
        "--finetune-out",
        help="also write made-up fine-tuning runs of the best-lr runs (for Figure 1) to this CSV",
    )
    p.set_defaults(fn=cmd_synthetic)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
