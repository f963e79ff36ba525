"""`python -m scaling fit / chinchilla / lr` end to end on small inputs."""

import json
import math
import subprocess
import sys

import pytest

from scaling import analysis, cli, learning_rate, runs, synthetic
from scaling.fit_chinchilla import ChinchillaLaw

LAW = ChinchillaLaw(E=1.5, A=500.0, B=60.0, alpha=0.3, beta=0.3)
LR = learning_rate.LrModel(math.log2(1.6), -0.15, -0.05, 1e9, 0.25, 0.0, 0)
MODELS = {"small": (1_000_000_000, 20_000_000), "mid": (4_000_000_000, 80_000_000),
          "big": (16_000_000_000, 320_000_000)}  # fmt: skip
LRS = [1.6 * 2.0**k for k in range(-3, 3)]


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    rows = synthetic.sweep_rows(LAW, MODELS, (0.25, 0.5, 1, 2, 4, 8), LRS, LR, noise=0.002)
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    runs.write_csv(rows, path)
    return path


def test_fit_writes_every_section(runs_csv, tmp_path, capsys):
    out = tmp_path / "fit.json"
    argv = ["fit", str(runs_csv), "--samples", "50", "--law-grid", "cell", "-o", str(out)]
    assert cli.main(argv) == 0
    results = json.loads(out.read_text())
    assert (results["num_runs"], results["num_tuned_runs"]) == (108, 18)
    for section in analysis.SECTIONS:
        assert "error" not in results[section], section
    law = results["parametric_law"]
    # alpha = beta in the generating law: equal proportion, N_opt ~ C^0.5.
    iso = results["isoflop_allocation"]
    assert law["equal_proportion_consistent"] and iso["equal_proportion_consistent"]
    assert "equal_proportion_consistent" not in results["envelope"]
    assert all(len(s["sizes"]) >= 3 for s in iso["slices"]) and any(
        s["used"] for s in iso["slices"]
    )
    assert law["beta"] == pytest.approx(LAW.beta, abs=0.03)
    ci = law["intervals"]["size_exponent"]
    assert ci["ci_low"] < 0.5 < ci["ci_high"]
    assert "Power law on the frontier: L = " in capsys.readouterr().out


def test_fit_reports_failed_sections_and_exits_nonzero(runs_csv, tmp_path, capsys):
    few = [r for r in runs.read_csv(runs_csv) if r["model"] == "small" and r["total_epochs"] < 4]
    runs.write_csv(few, tmp_path / "few.csv")
    assert (
        cli.main(["fit", str(tmp_path / "few.csv"), "--samples", "20", "--law-grid", "cell"]) == 1
    )
    out = capsys.readouterr().out
    assert "Power law on the frontier: L = " in out
    assert "Saturating law: FAILED: The saturating law needs at least 5" in out
    assert "envelope: FAILED: The allocation fit needs at least 3 frontier runs spanning 2" in out
    assert "IsoFLOP allocation: FAILED: IsoFLOP slices need at least 3 models" in out
    assert "Parametric law: FAILED: The parametric law has 5 parameters" in out


def test_bad_runs_csv_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("run,model\nx,y\n")
    assert cli.main(["fit", str(tmp_path / "bad.csv")]) == 2
    assert "lacks the column(s)" in capsys.readouterr().err


def test_lr_command_prints_optima_trend_and_two_runs(runs_csv, capsys):
    assert cli.main(["lr", str(runs_csv), "--predict", "mid:16"]) == 0
    out = capsys.readouterr().out
    assert "log2 lr* = " in out and "mid at 16 epochs: predicted lr*" in out
    assert out.count("python train.py --config=configs/mid.py") == 2


def test_chinchilla_command(tmp_path, capsys):
    out = tmp_path / "chinchilla.json"
    argv = ["chinchilla", "--grid", "cell", "--samples", "20", "-o", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["law"]["alpha"] == pytest.approx(0.3473, abs=1e-3)
    assert "published" in capsys.readouterr().out


def test_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "scaling", "sweep", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--lr-center" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "runs.csv", "--samples", "-3"], "--samples: must be an integer >= 2, got '-3'."),
        (["fit", "runs.csv", "--level", "1.5"], "--level: must be a number strictly between 0"),
        (["fit", "runs.csv", "--mfu", "0"], "--mfu: must be a fraction in (0, 1], got '0'."),
        (["chinchilla", "--drop", "-1"], "--drop: must be an integer >= 0, got '-1'."),
        (["sweep", "--models", "m", "--epochs", "-1"], "--epochs: must be a positive number"),
    ],
)
def test_out_of_range_options_are_refused_before_any_fit(argv, message, monkeypatch, capsys):
    def no_fit(*args, **kwargs):
        raise AssertionError("a fit ran")

    monkeypatch.setattr(analysis, "analyze", no_fit)
    monkeypatch.setattr(cli.fit_chinchilla, "fit", no_fit)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["compute", "collect", "fit", "chinchilla", "lr", "sweep", "plot"]
)
def test_every_option_has_help_with_its_default(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, (command, action.dest)
        if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
            assert f"(default: {action.default})" in out, (command, action.dest)


def test_synthetic_command_writes_the_paper_like_sweep(tmp_path, capsys):
    out = tmp_path / "runs.csv"
    assert cli.main(["synthetic", "--alpha", "0.33", "--beta", "0.27", "-o", str(out)]) == 0
    rows = runs.read_csv(out)
    assert len(rows) == 6 * 6 * 5 and rows[0]["num_classes"] == 30000
    assert "true N_opt ~ C^0.450" in capsys.readouterr().out
