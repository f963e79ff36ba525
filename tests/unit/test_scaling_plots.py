"""Figures: written as PNG and PDF, drawing the fitted curves inside their bootstrap bands."""

import math

import numpy as np
import pytest

from scaling import bands, cli, compute, learning_rate, plots, runs, synthetic, synthetic_finetune
from scaling.fit_chinchilla import ChinchillaLaw

LAW = ChinchillaLaw(E=1.5, A=500.0, B=60.0, alpha=0.3, beta=0.3)
LR = learning_rate.LrModel(math.log2(1.6), -0.15, -0.05, 1e9, 0.25, 0.0, 0)
MODELS = {"small": (1_000_000_000, 20_000_000), "mid": (4_000_000_000, 80_000_000),
          "big": (16_000_000_000, 320_000_000)}  # fmt: skip
BOOT = dict(samples=40, seed=0, level=0.9)


@pytest.fixture(scope="module")
def rows():
    lrs = [1.6 * 2.0**k for k in range(-3, 3)]
    return synthetic.sweep_rows(LAW, MODELS, (0.25, 0.5, 1, 2, 4, 8), lrs, LR, noise=0.002)


@pytest.fixture(scope="module")
def paper_rows():
    return synthetic.paper_like_rows()


def _line(ax, label):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _band_polygon(ax, label):
    (fill,) = [c for c in ax.collections if c.get_gid() == f"band:{label}"]
    return fill.get_paths()[0].vertices


def _assert_inside(band: bands.Band):
    assert band.x.shape == band.fit.shape == band.low.shape == band.high.shape
    assert np.all(band.low <= band.fit * (1 + 1e-9)) and np.all(band.fit <= band.high * (1 + 1e-9))
    assert np.all(band.high > band.low)  # a band, not a line


def _frontier(rows):
    return cli._frontier(rows)


def test_frontier_bands_contain_their_fits_and_the_figure_draws_them(rows):
    flops, loss = _frontier(rows)
    power = bands.power_law_band(flops, loss, **BOOT)
    saturating = bands.saturating_band(flops, loss, **BOOT)
    for band in (power, saturating):
        _assert_inside(band)
    ax = plots.loss_vs_compute(rows, power, saturating).axes[0]
    x, y = _line(ax, plots.FRONTIER_FIT_LABEL)
    np.testing.assert_allclose((x, y), (power.x, power.fit))
    polygon = _band_polygon(ax, plots.SATURATING_FIT_LABEL)
    assert polygon[:, 1].min() == pytest.approx(saturating.low.min())
    assert polygon[:, 1].max() == pytest.approx(saturating.high.max())
    assert len(_line(ax, plots.FRONTIER_RUNS_LABEL)[0]) == len(flops)
    assert {ln.get_label() for ln in ax.get_lines()} >= set(MODELS)
    assert ax.get_xlabel() == "Training compute (FLOPs)" and "nats" in ax.get_ylabel()
    # In core hours, the same curve moves along x only.
    axis = plots.ComputeAxis("tpu_v4", 0.35)
    x_hours, y_hours = _line(plots.loss_vs_compute(rows, power, axis=axis).axes[0],
                             plots.FRONTIER_FIT_LABEL)  # fmt: skip
    np.testing.assert_allclose(x_hours, [compute.core_hours(f, "tpu_v4", 0.35) for f in x])
    np.testing.assert_allclose(y_hours, y)


def test_allocation_bands_contain_both_estimators(paper_rows):
    cell = cli._law_starts("cell")
    iso = bands.isoflop_allocation(paper_rows, **BOOT)
    law = bands.parametric_allocation(paper_rows, **BOOT, starts=cell)
    for estimate in (iso, law):
        _assert_inside(estimate.size)
        _assert_inside(estimate.epochs)
        # Sizes in MACs per example: compute = 6 x size x epochs x examples per epoch.
        n = paper_rows[0]["num_train_examples"]
        np.testing.assert_allclose(6 * estimate.size.fit * estimate.epochs.fit * n,
                                   estimate.size.x, rtol=1e-9)  # fmt: skip
    # Equal proportion is the truth: both recover N_opt ~ C^0.5.
    for b in (iso.size, law.size):
        slope = np.polyfit(np.log(b.x), np.log(b.fit), 1)[0]
        assert slope == pytest.approx(0.5, abs=0.05)
    fig = plots.optimal_allocation([iso, law], paper_rows)
    size_ax, epochs_ax = fig.axes
    x, y = _line(epochs_ax, "parametric law")
    np.testing.assert_allclose(y, law.epochs.fit)
    assert _band_polygon(size_ax, "IsoFLOP slices").shape[0] >= 2 * len(iso.size.x)
    assert len(_line(size_ax, "IsoFLOP slices: optima")[0]) == len(iso.points)
    with pytest.raises(ValueError, match="No allocation"):
        plots.optimal_allocation([])


def test_lr_figure_has_a_panel_per_model_with_its_band(rows):
    choices = learning_rate.choose(rows)
    model = learning_rate.fit_model(choices)
    trends = bands.lr_trend_bands(choices, model, **BOOT)
    assert set(trends) == set(MODELS)
    for band in trends.values():
        _assert_inside(band)
    fig = plots.optimal_lr(choices, model, trends)
    big = plots.panel(fig, "big")
    x, y = _line(big, plots.LR_FIT_LABEL)
    np.testing.assert_allclose(y, model.predict(MODELS["big"][0], x))
    labels = {ln.get_label() for ln in big.get_lines()}
    found = [p for label in ("optimum", "optimum at grid end") if label in labels
             for p in zip(*_line(big, label), strict=True)]  # fmt: skip
    assert sorted(found) == sorted((c.epochs, c.best_lr) for c in choices if c.model == "big")


def _finetuned(paper_rows):
    return synthetic_finetune.finetune_rows(paper_rows, seed=0)


def test_finetune_figure_puts_runs_at_their_pretraining_compute(paper_rows):
    finetuned = _finetuned(paper_rows)
    flops = [r["pretrain_compute_flops"] for r in finetuned]
    error = [100 * (1 - r["top1"]) for r in finetuned]
    trend = bands.power_law_band(flops, error, **BOOT)
    _assert_inside(trend)
    axis = plots.ComputeAxis("tpu_v4", 0.35)
    ax = plots.finetune_top1_vs_compute(finetuned, axis, trend).axes[0]
    f7plus = [r for r in finetuned if r["pretrain_model"] == "nfnet_f7plus"]
    x, y = _line(ax, "nfnet_f7plus (synthetic_imagenet)")
    np.testing.assert_allclose(x, axis([r["pretrain_compute_flops"] for r in f7plus]))
    np.testing.assert_allclose(y, [100 * (1 - r["top1"]) for r in f7plus])
    assert _line(ax, "ViT-g/14 (Zhai et al. 2022)") == ([120e3], [pytest.approx(9.8)])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    plain = plots.finetune_top1_vs_compute(finetuned, axis, reference=False).axes[0]
    assert not [ln for ln in plain.get_lines() if "ViT" in ln.get_label()]
    with pytest.raises(ValueError, match="TPU-v4 core hours"):
        plots.finetune_top1_vs_compute(finetuned, plots.ComputeAxis("h100_sxm", 0.35), trend)


def test_save_writes_png_and_pdf(rows, tmp_path):
    paths = plots.save(plots.loss_vs_compute(rows), tmp_path, "loss")
    assert [p.name for p in paths] == ["loss.png", "loss.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="format"):
        plots.save(plots.loss_vs_compute(rows), tmp_path, "loss", formats=["bmp"])


def test_plot_command_writes_every_figure_from_a_synthetic_sweep(tmp_path, capsys):
    sweep, finetuned = tmp_path / "runs.csv", tmp_path / "finetune.csv"
    assert cli.main(["synthetic", "-o", str(sweep), "--finetune-out", str(finetuned)]) == 0
    assert len(runs.read_finetune_csv(finetuned)) == 36
    out = tmp_path / "figures"
    argv = ["plot", str(sweep), "--finetune", str(finetuned), "--out-dir", str(out),
            "--core-hours", "--samples", "20", "--law-grid", "cell", "--dpi", "40"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "note:" not in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{f}.{ext}" for f in cli.FIGURES for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 1000 for p in out.iterdir())
