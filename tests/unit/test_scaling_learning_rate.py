"""Optimal learning rates: selection on 2x grids, the trend, two-run confirmation."""

import math

import pytest

from scaling import learning_rate as lrm
from scaling import synthetic
from scaling.fit_chinchilla import ChinchillaLaw, FitError

LAW = ChinchillaLaw(E=1.5, A=500.0, B=60.0, alpha=0.3, beta=0.3)
TRUE_LR = lrm.LrModel(
    c0=math.log2(1.6), c1=-0.15, c2=-0.05, size0=1e9, epochs0=0.25, residual_std_log2=0.0,
    num_points=0,
)  # fmt: skip
MODELS = {"small": (1_000_000_000, 20_000_000), "mid": (4_000_000_000, 80_000_000),
          "big": (16_000_000_000, 320_000_000)}  # fmt: skip
EPOCHS = (0.25, 0.5, 1, 2, 4, 8)
LRS = [1.6 * 2.0**k for k in range(-3, 3)]
KAPPA = 0.02


@pytest.fixture(scope="module")
def rows():
    return synthetic.sweep_rows(LAW, MODELS, EPOCHS, LRS, TRUE_LR, curvature=KAPPA)


@pytest.fixture(scope="module")
def choices(rows):
    return lrm.choose(rows)


def test_choose_picks_the_grid_optimum_and_refines_it(choices):
    assert len(choices) == len(MODELS) * len(EPOCHS)
    for c in choices:
        truth = float(TRUE_LR.predict(c.size, c.epochs))
        assert c.bracketed
        assert abs(math.log2(c.best_lr / truth)) <= 0.5 + 1e-9  # nearest 2x grid value
        assert c.refined_lr == pytest.approx(truth, rel=1e-9)  # the losses are parabolic
        assert c.curvature == pytest.approx(KAPPA)


def test_trend_is_recovered(choices):
    model = lrm.fit_model(choices, refined=True)
    assert (model.c0, model.c1, model.c2) == (
        pytest.approx(TRUE_LR.c0), pytest.approx(TRUE_LR.c1), pytest.approx(TRUE_LR.c2)
    )  # fmt: skip
    # On the grid optima alone the trend is still within the grid's resolution.
    grid = lrm.fit_model(choices)
    assert grid.residual_std_log2 < 0.5
    assert abs(math.log2(grid.predict(16e9, 16) / TRUE_LR.predict(16e9, 16))) < 0.5


def test_single_model_drops_the_size_term(rows):
    small = [r for r in rows if r["model"] == "small"]
    model = lrm.fit_model(lrm.choose(small), refined=True)
    assert model.c2 is None and model.c1 == pytest.approx(TRUE_LR.c1)


def test_two_runs_bracket_the_prediction_on_the_sweep_grid(choices):
    anchor = lrm.grid_anchor(choices)
    assert anchor == pytest.approx(0.2)
    predicted = float(TRUE_LR.predict(8e9, 16))
    lo, hi = lrm.two_runs(predicted, anchor)
    assert lo <= predicted < hi == 2 * lo
    assert math.log2(lo / anchor) == pytest.approx(round(math.log2(lo / anchor)))


def test_two_runs_place_the_optimum(rows, choices):
    predicted = float(TRUE_LR.predict(4e9, 16))
    lo, hi = lrm.two_runs(predicted, lrm.grid_anchor(choices))
    pair = synthetic.sweep_rows(
        LAW, {"mid": MODELS["mid"]}, [16], [lo, hi], TRUE_LR, curvature=KAPPA
    )
    kappa = lrm.sweep_curvature(choices)
    (conf,) = lrm.confirmations(rows + pair, kappa)
    assert (conf.model, conf.epochs, conf.lr_lo, conf.lr_hi) == ("mid", 16, lo, hi)
    assert conf.optimal_lr == pytest.approx(predicted, rel=1e-9)
    assert len(lrm.choose(rows + pair)) == len(choices)  # the pair is not a grid


def test_malformed_grids_are_listed(rows):
    bad = [dict(rows[0], total_epochs=3.0, lr=0.4), dict(rows[0], total_epochs=3.0, lr=1.6),
           dict(rows[0], total_epochs=5.0, lr=0.4)]  # fmt: skip
    with pytest.raises(FitError) as err:
        lrm.choose(rows + bad)
    assert "small at 3 epochs has lrs [0.4, 1.6]" in str(err.value)
    assert "small at 5 epochs has lrs [0.4]" in str(err.value)


def test_optimum_at_a_grid_end_is_flagged_and_left_out_of_the_trend(rows):
    high = [r for r in rows if r["lr"] >= 0.8]
    choices = lrm.choose(high)
    edge = {(c.model, c.epochs) for c in choices if not c.bracketed}
    # Optima nearer to 0.8 than to 1.6 (in log2) land on the grid's lower end.
    expected = {
        (name, ep)
        for name, (macs, _) in MODELS.items()
        for ep in EPOCHS
        if TRUE_LR.predict(macs, ep) < 0.8 * 2**0.5
    }
    assert edge == expected and 0 < len(edge) < len(choices)
    assert lrm.fit_model(choices).num_points == len(choices) - len(edge)


def test_best_runs_keep_one_run_per_budget(rows):
    best = lrm.best_runs(rows)
    assert len(best) == len(MODELS) * len(EPOCHS)
    assert all(r["heldout_loss"] == min(
        q["heldout_loss"] for q in rows if lrm.budget_key(q) == lrm.budget_key(r)
    ) for r in best)  # fmt: skip


def test_vertex_needs_a_valid_pair():
    with pytest.raises(ValueError, match="positive curvature"):
        lrm.vertex_lr(0.8, 2.0, 1.6, 2.1, curvature=0.0)
