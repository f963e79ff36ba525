"""The analogues of Smith et al. 2023's figures, drawn with matplotlib (no pyplot state).

loss_vs_compute: held-out loss against training compute per model, with the fitted frontier
    (Smith et al. 2023, Fig. 2);
optimal_lr: optimal learning rate against epoch budget per model, with the fitted trend;
top1_vs_compute: top-1 error against compute in TPU-v4 core hours, with the ViT reference
    points the paper compares with.
Each function returns a `matplotlib.figure.Figure`; `save` writes it as PNG and/or PDF.
"""

import collections
import dataclasses
import pathlib

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

import hardware
from scaling import compute, learning_rate, paper_models
from scaling.fit_power_law import PowerLaw, SaturatingPowerLaw

LOSS_LABEL = "Held-out loss (cross-entropy, nats)"
FRONTIER_FIT_LABEL = "frontier fit: L = k C^-b"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_PLAIN = ticker.FuncFormatter(lambda value, _: f"{value:g}")
SATURATING_FIT_LABEL = "frontier fit: L = a (C + d)^-b + c"


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


def _markers():
    while True:
        yield from MARKERS


def _by_model(rows):
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["model"]].append(row)
    # Order models by size so colours and legend follow the family's progression.
    return sorted(groups.items(), key=lambda kv: kv[1][0]["macs_per_example"])


def loss_vs_compute(
    rows: list[dict],
    power_law: PowerLaw | None = None,
    saturating: SaturatingPowerLaw | None = None,
    axis: ComputeAxis = ComputeAxis(),
) -> Figure:
    """Best-lr runs per (model, epoch budget) against compute, and the frontier fits."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    tuned = learning_rate.best_runs(rows)
    for (model, group), marker in zip(_by_model(tuned), _markers(), strict=False):
        group.sort(key=lambda r: r["compute_flops"])
        x = axis([r["compute_flops"] for r in group])
        ax.plot(x, [r["heldout_loss"] for r in group], marker=marker, label=model)
    flops = np.geomspace(
        min(r["compute_flops"] for r in tuned), max(r["compute_flops"] for r in tuned), 100
    )
    if power_law is not None:
        ax.plot(axis(flops), power_law.loss(flops), "k-", lw=2, label=FRONTIER_FIT_LABEL)
    if saturating is not None:
        ax.plot(axis(flops), saturating.loss(flops), "k--", lw=1.5, label=SATURATING_FIT_LABEL)
    ax.set(xscale="log", yscale="log", xlabel=axis.label, ylabel=LOSS_LABEL)
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_minor_formatter(_PLAIN)
    ax.set_title("Held-out loss vs compute (best learning rate per budget)")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def optimal_lr(
    choices: list[learning_rate.LrChoice], model: learning_rate.LrModel | None = None
) -> Figure:
    """Optimal lr per (model, epoch budget); hollow markers are optima at a grid's end."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    by_model = collections.defaultdict(list)
    for c in choices:
        by_model[(c.size, c.model)].append(c)
    for ((size, name), group), marker in zip(sorted(by_model.items()), _markers(), strict=False):
        group.sort(key=lambda c: c.epochs)
        (line,) = ax.plot(
            [c.epochs for c in group if c.bracketed],
            [c.best_lr for c in group if c.bracketed],
            marker,
            ms=7,
            alpha=0.8,
            label=name,
        )
        ends = [c for c in group if not c.bracketed]
        if ends:
            ax.plot(
                [c.epochs for c in ends], [c.best_lr for c in ends], marker, ms=7, mfc="none",
                color=line.get_color(), label=f"{name} (at grid end)",
            )  # fmt: skip
        if model is not None:
            budgets = np.geomspace(group[0].epochs, group[-1].epochs, 50)
            ax.plot(
                budgets, model.predict(size, budgets), "-", color=line.get_color(),
                label=f"{name} fit",
            )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted({lr for c in choices for lr in c.lrs}))
    ax.xaxis.set_major_formatter(_PLAIN)
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.set(xlabel="Epoch budget (epochs)", ylabel="Optimal base learning rate")
    ax.set_title("Optimal learning rate vs epoch budget")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def top1_vs_compute(rows: list[dict], axis: ComputeAxis) -> Figure:
    """Top-1 error of the best-lr runs and the paper's ImageNet reference points."""
    if axis.accelerator != paper_models.F7PLUS_CORE_HOURS["accelerator"]:
        raise ValueError("The reference points are in TPU-v4 core hours: use --accelerator tpu_v4.")
    tuned = [r for r in learning_rate.best_runs(rows) if r.get("top1") is not None]
    if not tuned:
        raise ValueError("No run has a top-1 value; collect runs whose evaluation logs eval_top1.")
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for (model, group), marker in zip(_by_model(tuned), _markers(), strict=False):
        group.sort(key=lambda r: r["compute_flops"])
        x = axis([r["compute_flops"] for r in group])
        error = [100 * (1 - r["top1"]) for r in group]
        ax.plot(x, error, marker=marker, label=f"{model} ({group[0]['dataset']})")
    for points, marker in (
        (paper_models.VIT_REFERENCE_POINTS, "s"),
        (paper_models.NFNET_REFERENCE_POINTS, "*"),
    ):
        for label, hours, top1 in points:
            ax.plot([hours], [100 * (1 - top1)], marker, ms=9, label=f"{label}, ImageNet")
    ax.set(xscale="log", yscale="log", xlabel=axis.label, ylabel="Top-1 error (%)")
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.set_title("Top-1 error vs pre-training compute")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def save(fig: Figure, out_dir, stem: str, formats=("png", "pdf")) -> list[pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise ValueError(f"Unsupported figure format {fmt!r}; use png, pdf or svg.")
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths
