"""The figures of Smith et al. 2023, drawn with matplotlib (no pyplot state), with bootstrap bands
(`bands`) around every fitted line.

loss_vs_compute (Fig. 2): held-out loss against compute, one curve per model through its epoch
    budgets, the frontier runs circled, the frontier's power laws;
optimal_allocation: compute-optimal model size and epoch budget against compute from the
    IsoFLOP slices and the parametric law;
optimal_lr (Fig. 3): optimal learning rate against epoch budget, one panel per model;
finetune_top1_vs_compute (Fig. 1): ImageNet top-1 error of fine-tuning runs against their
    pre-training compute, with the published ViT and NFNet points (`reference_points`).
Compute is in FLOPs or in core hours (`ComputeAxis`). Each function returns a
`matplotlib.figure.Figure`; `save` writes it as PNG and/or PDF.
"""

import collections
import dataclasses
import pathlib

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from modeling import hardware
from scaling import bands, compute, fit_power_law, learning_rate, reference_points

LOSS_LABEL = "Held-out loss (cross-entropy, nats)"
FRONTIER_FIT_LABEL = "frontier fit: L = k C^-b"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_PLAIN = ticker.FuncFormatter(lambda value, _: f"{value:g}")
SATURATING_FIT_LABEL = "frontier fit: L = a (C + d)^-b + c"
FRONTIER_RUNS_LABEL = "frontier runs"
LR_FIT_LABEL = "trend fit"
TOP1_FIT_LABEL = "trend: error = k C^-b"
SIZE_LABEL = "Model size (MACs per example)"


@dataclasses.dataclass(frozen=True)
class ComputeAxis:
    """Compute in FLOPs, or in core hours of `accelerator` at `mfu` (both or neither)."""

    accelerator: str | None = None
    mfu: float | None = None

    def __post_init__(self):
        if (self.accelerator is None) != (self.mfu is None):
            raise ValueError(
                "Give both an accelerator and an MFU for a core-hours axis, or neither."
            )
        if self.accelerator is not None:
            hardware.accelerator(self.accelerator)

    def __call__(self, flops):
        flops = np.asarray(flops, float)
        if self.accelerator is None:
            return flops
        return np.array([compute.core_hours(f, self.accelerator, self.mfu) for f in flops.ravel()])

    @property
    def label(self) -> str:
        if self.accelerator is None:
            return "Training compute (FLOPs)"
        name = hardware.accelerator(self.accelerator).name
        return f"Training compute ({name} core hours at {self.mfu:.1%} MFU)"


def _IDENTITY(x):
    return np.asarray(x, float)


def _markers():
    while True:
        yield from MARKERS


def _by_model(rows):
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["model"]].append(row)
    # Order models by size so colours and legend follow the family's progression.
    return sorted(groups.items(), key=lambda kv: kv[1][0]["macs_per_example"])


def _draw_band(ax, axis, fitted: bands.Band, label: str, **line_kw):
    """The fitted curve, labelled `label`, over its bootstrap band (gid 'band:<label>')."""
    x = axis(fitted.x)
    (line,) = ax.plot(x, fitted.fit, label=label, **line_kw)
    fill = ax.fill_between(x, fitted.low, fitted.high, color=line.get_color(), alpha=0.18, lw=0)
    fill.set_gid(f"band:{label}")
    return line


def _band_note(ax, *fits) -> None:
    levels = sorted({f.level for f in fits if f is not None})
    if levels:
        pct = "/".join(f"{lv:.0%}" for lv in levels)
        ax.text(0.01, 0.01, f"shaded: {pct} bootstrap bands", transform=ax.transAxes,
                fontsize="x-small", color="0.35", va="bottom")  # fmt: skip


def loss_vs_compute(
    rows: list[dict],
    power_law: bands.Band | None = None,
    saturating: bands.Band | None = None,
    axis: ComputeAxis = ComputeAxis(),
) -> Figure:
    """Smith et al. 2023, Fig. 2: held-out loss of each model through its epoch budgets (best
    lr per budget), the frontier runs circled, and the frontier fits with their bands."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    tuned = learning_rate.best_runs(rows)
    for (model, group), marker in zip(_by_model(tuned), _markers(), strict=False):
        group.sort(key=lambda r: r["compute_flops"])
        x = axis([r["compute_flops"] for r in group])
        ax.plot(x, [r["heldout_loss"] for r in group], marker=marker, ms=5, label=model)
    flops = np.array([r["compute_flops"] for r in tuned])
    loss = np.array([r["heldout_loss"] for r in tuned])
    front = fit_power_law.pareto_frontier(flops, loss)
    ax.plot(axis(flops[front]), loss[front], "o", ms=11, mfc="none", mec="k", mew=1.2,
            label=FRONTIER_RUNS_LABEL)  # fmt: skip
    if power_law is not None:
        _draw_band(ax, axis, power_law, FRONTIER_FIT_LABEL, color="k", lw=2)
    if saturating is not None:
        _draw_band(ax, axis, saturating, SATURATING_FIT_LABEL, color="0.4", ls="--", lw=1.5)
    _band_note(ax, power_law, saturating)
    ax.set(xscale="log", yscale="log", xlabel=axis.label, ylabel=LOSS_LABEL)
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(_PLAIN)
    ax.set_title("Held-out loss vs compute (best learning rate per budget)")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def optimal_allocation(
    estimates: list[bands.Allocation], rows: list[dict] | None = None,
    axis: ComputeAxis = ComputeAxis(),
) -> Figure:  # fmt: skip
    """Compute-optimal model size and epoch budget against compute, one line and band per
    estimator; the sweep's model sizes and one epoch are drawn for reference."""
    if not estimates:
        raise ValueError("No allocation estimate to draw; `fit` says why each one failed.")
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    size_ax, epochs_ax = fig.subplots(1, 2, sharex=True)
    for estimate, color in zip(estimates, ("C0", "C3", "C2"), strict=False):
        _draw_band(size_ax, axis, estimate.size, estimate.name, color=color, lw=2)
        _draw_band(epochs_ax, axis, estimate.epochs, estimate.name, color=color, lw=2)
        if estimate.points:
            c, s, e = (np.array(v) for v in zip(*estimate.points, strict=True))
            label = f"{estimate.name}: optima"
            size_ax.plot(axis(c), s, "o", color=color, mfc="none", label=label)
            epochs_ax.plot(axis(c), e, "o", color=color, mfc="none", label=label)
    for name, group in _by_model(rows or []):
        size_ax.axhline(group[0]["macs_per_example"], color="0.6", lw=0.8, ls=":")
        where = (1, group[0]["macs_per_example"])
        size_ax.annotate(name, where, xycoords=("axes fraction", "data"), ha="right", va="bottom",
                         fontsize="x-small", color="0.4")  # fmt: skip
    epochs_ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    size_ax.set(ylabel=SIZE_LABEL, title="Compute-optimal model size")
    epochs_ax.set(ylabel="Epoch budget (epochs)", title="Compute-optimal epoch budget")
    for ax in (size_ax, epochs_ax):
        ax.set(xscale="log", yscale="log", xlabel=axis.label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    epochs_ax.yaxis.set_major_formatter(_PLAIN)
    epochs_ax.yaxis.set_minor_formatter(_PLAIN)
    _band_note(size_ax, *(e.size for e in estimates))
    return fig


def _grid_shape(count: int) -> tuple[int, int]:
    cols = min(3, count)
    return -(-count // cols), cols


def optimal_lr(
    choices: list[learning_rate.LrChoice],
    model: learning_rate.LrModel | None = None,
    trend_bands: dict[str, bands.Band] | None = None,
) -> Figure:
    """Smith et al. 2023, Fig. 3, one panel per model (small multiples on shared axes): the lr
    grid tried at each budget (grey), the optimum (filled; hollow at a grid's end), and the
    fitted trend with its band."""
    by_model = collections.defaultdict(list)
    for c in choices:
        by_model[(c.size, c.model)].append(c)
    rows, cols = _grid_shape(len(by_model))
    fig = Figure(figsize=(3.2 * cols, 2.7 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, ((size, name), group) in zip(axes, sorted(by_model.items()), strict=False):
        group.sort(key=lambda c: c.epochs)
        tried = [(c.epochs, lr) for c in group for lr in c.lrs]
        ax.plot(*zip(*tried, strict=True), ".", color="0.75", ms=4, label="lr grid")
        for bracketed, style in ((True, dict(mfc="C0")), (False, dict(mfc="none"))):
            picked = [c for c in group if c.bracketed == bracketed]
            if picked:
                label = "optimum" if bracketed else "optimum at grid end"
                ax.plot([c.epochs for c in picked], [c.best_lr for c in picked], "o", ms=7,
                        mec="C0", label=label, **style)  # fmt: skip
        if trend_bands is not None and name in trend_bands:
            _draw_band(ax, _IDENTITY, trend_bands[name], LR_FIT_LABEL, color="C1")
        elif model is not None:
            budgets = np.geomspace(group[0].epochs, group[-1].epochs, 50)
            ax.plot(budgets, model.predict(size, budgets), "-", color="C1", label=LR_FIT_LABEL)
        ax.set_title(name, fontsize="medium")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(by_model) :]:
        ax.set_visible(False)
    axes[0].set_yticks(sorted({lr for c in choices for lr in c.lrs}))
    axes[0].xaxis.set_major_formatter(_PLAIN)
    axes[0].yaxis.set_major_formatter(_PLAIN)
    axes[0].legend(fontsize="x-small")
    if trend_bands:
        _band_note(axes[0], *trend_bands.values())
    fig.supxlabel("Epoch budget (epochs)")
    fig.supylabel("Optimal base learning rate")
    fig.suptitle("Optimal learning rate vs epoch budget")
    return fig


def panel(fig: Figure, title: str):
    """The axes of `fig` titled `title` (a model's panel of `optimal_lr`)."""
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def finetune_top1_vs_compute(
    finetuned: list[dict],
    axis: ComputeAxis,
    trend: bands.Band | None = None,
    reference: bool = True,
) -> Figure:
    """Smith et al. 2023, Fig. 1: ImageNet top-1 error of each fine-tuning run against the
    compute of the pre-training run it started from (log-log), the trend of error against
    compute with its band, and optionally the published points of `reference_points`."""
    if reference and axis.accelerator != reference_points.ACCELERATOR:
        raise ValueError(
            "The published points are in TPU-v4 core hours: use --accelerator tpu_v4, or leave "
            "them out with --no-reference-points."
        )
    if not finetuned:
        raise ValueError("No fine-tuning runs; collect finished runs with config.init.path set.")
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    groups = collections.defaultdict(list)
    for row in finetuned:
        groups[(row["pretrain_macs_per_example"], row["pretrain_model"])].append(row)
    for ((_, model), group), marker in zip(sorted(groups.items()), _markers(), strict=False):
        x = axis([r["pretrain_compute_flops"] for r in group])
        error = [100 * (1 - r["top1"]) for r in group]
        ax.plot(x, error, marker, ms=7, label=f"{model} ({group[0]['dataset']})")
    if trend is not None:
        _draw_band(ax, axis, trend, TOP1_FIT_LABEL, color="k", lw=1.5)
        _band_note(ax, trend)
    if reference:
        for point in reference_points.REFERENCE_POINTS:
            marker = "s" if point.family == "ViT" else "*"
            ax.plot([point.tpu_v4_core_hours], [100 * (1 - point.imagenet_top1)], marker, ms=9,
                    mfc="none" if point.label.endswith("RA") else None,
                    label=f"{point.label} ({point.source.split(';')[0]})")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=axis.label.replace("Training", "Pre-training"))
    ax.set_ylabel("ImageNet top-1 error after fine-tuning (%)")
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(_PLAIN)
    ax.set_title("Fine-tuned top-1 error vs pre-training compute")
    ax.legend(fontsize="x-small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def save(
    fig: Figure, out_dir, stem: str, formats=("png", "pdf"), dpi: int = 150
) -> list[pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise ValueError(f"Unsupported figure format {fmt!r}; use png, pdf or svg.")
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths
