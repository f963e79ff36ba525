"""`python -m scaling fit / chinchilla / lr` end to end on small inputs."""

import json
import math
import subprocess
import sys

import pytest

from scaling import cli, learning_rate, runs, synthetic
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
    for section in ("power_law", "saturating_power_law", "allocation", "parametric_law"):
        assert "error" not in results[section], section
    law = results["parametric_law"]
    # alpha = beta in the generating law: equal proportion, N_opt ~ C^0.5.
    assert (
        law["equal_proportion_consistent"] and results["allocation"]["equal_proportion_consistent"]
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
    assert "allocation: FAILED: The allocation fit needs at least 3 frontier runs spanning 2" in out
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
