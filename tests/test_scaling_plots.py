"""Figures: written, non-empty, and drawing exactly the fitted curves."""

import math

import numpy as np
import pytest

from scaling import cli, compute, fit_power_law, learning_rate, plots, runs, synthetic
from scaling.fit_chinchilla import ChinchillaLaw

LAW = ChinchillaLaw(E=1.5, A=500.0, B=60.0, alpha=0.3, beta=0.3)
LR = learning_rate.LrModel(math.log2(1.6), -0.15, -0.05, 1e9, 0.25, 0.0, 0)
MODELS = {"small": (1_000_000_000, 20_000_000), "mid": (4_000_000_000, 80_000_000),
          "big": (16_000_000_000, 320_000_000)}  # fmt: skip


@pytest.fixture(scope="module")
def rows():
    lrs = [1.6 * 2.0**k for k in range(-3, 3)]
    return synthetic.sweep_rows(LAW, MODELS, (0.25, 0.5, 1, 2, 4, 8), lrs, LR, noise=0.002)


def _line(fig, label):
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _frontier_fit(rows):
    tuned = learning_rate.best_runs(rows)
    c = np.array([r["compute_flops"] for r in tuned])
    loss = np.array([r["heldout_loss"] for r in tuned])
    front = fit_power_law.pareto_frontier(c, loss)
    return fit_power_law.fit_power_law(c[front], loss[front])


def test_loss_figure_draws_the_fitted_frontier(rows):
    law = _frontier_fit(rows)
    fig = plots.loss_vs_compute(rows, power_law=law)
    x, y = _line(fig, plots.FRONTIER_FIT_LABEL)
    np.testing.assert_allclose(y, law.loss(x), rtol=1e-12)
    assert fig.axes[0].get_xlabel() == "Training compute (FLOPs)"
    assert "nats" in fig.axes[0].get_ylabel()
    # In core hours, the same curve moves along x only.
    axis = plots.ComputeAxis("tpu_v4", 0.35)
    x_hours, y_hours = _line(
        plots.loss_vs_compute(rows, power_law=law, axis=axis), plots.FRONTIER_FIT_LABEL
    )
    np.testing.assert_allclose(x_hours, [compute.core_hours(f, "tpu_v4", 0.35) for f in x])
    np.testing.assert_allclose(y_hours, y)


def test_lr_figure_draws_the_fitted_trend(rows):
    choices = learning_rate.choose(rows)
    model = learning_rate.fit_model(choices)
    fig = plots.optimal_lr(choices, model)
    x, y = _line(fig, "big fit")
    np.testing.assert_allclose(y, model.predict(MODELS["big"][0], x))
    xs, ys = _line(fig, "big")
    assert sorted(zip(xs, ys, strict=True)) == sorted(
        (c.epochs, c.best_lr) for c in choices if c.model == "big"
    )


def test_top1_figure_has_the_reference_points(rows):
    fig = plots.top1_vs_compute(rows, plots.ComputeAxis("tpu_v4", 0.35))
    x, y = _line(fig, "ViT-g/14, ImageNet")
    assert (x[0], y[0]) == (120e3, pytest.approx(9.8))
    with pytest.raises(ValueError, match="tpu_v4"):
        plots.top1_vs_compute(rows, plots.ComputeAxis("h100_sxm", 0.35))


def test_save_writes_png_and_pdf(rows, tmp_path):
    paths = plots.save(plots.loss_vs_compute(rows), tmp_path, "loss")
    assert [p.name for p in paths] == ["loss.png", "loss.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="format"):
        plots.save(plots.loss_vs_compute(rows), tmp_path, "loss", formats=["bmp"])


def test_plot_command_writes_all_figures(rows, tmp_path, capsys):
    runs.write_csv(rows, tmp_path / "runs.csv")
    out = tmp_path / "figures"
    assert (
        cli.main(["plot", str(tmp_path / "runs.csv"), "--out-dir", str(out), "--core-hours"]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{f}.{ext}" for f in cli.FIGURES for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in out.iterdir())
