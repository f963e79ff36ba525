"""Sweep plans and their train.py commands."""

import shlex

import pytest

from scaling import cli, sweep


@pytest.fixture
def configs(tmp_path):
    directory = tmp_path / "configs"
    directory.mkdir()
    for name in ("nfnet_f0", "nfnet_f1", "__init__"):
        (directory / f"{name}.py").write_text("def get_config(arg=None): ...\n")
    return directory


def test_lr_grid_is_spaced_by_two():
    assert sweep.lr_grid(1.6, 2, 1) == pytest.approx([0.4, 0.8, 1.6, 3.2])
    with pytest.raises(ValueError):
        sweep.lr_grid(0.0, 1, 1)


def test_plan_is_the_full_grid():
    specs = sweep.plan(["nfnet_f0", "nfnet_f1"], [0.25, 1], [0.8, 1.6], seeds=[0, 1])
    assert len(specs) == 16
    assert len({(s.model, s.name) for s in specs}) == 16  # every run has its own work directory
    with pytest.raises(ValueError, match="positive"):
        sweep.plan(["nfnet_f0"], [0], [0.8])


def test_command_sets_budget_lr_and_seed(configs):
    spec = sweep.RunSpec("nfnet_f0", 0.25, 1.6 / 8, 3)
    args = shlex.split(sweep.command(spec, configs, "runs", ["--config.data.name=jft"]))
    assert args[:2] == ["python", "train.py"]
    assert f"--config={configs}/nfnet_f0.py" in args
    assert "--workdir=runs/nfnet_f0/ep0.25_lr0.2_seed3" in args
    assert {"--config.total_epochs=0.25", "--config.optimizer.learning_rate=0.2",
            "--config.seed=3", "--config.data.name=jft"} <= set(args)  # fmt: skip


def test_missing_configs_are_named_with_the_available_ones(configs):
    sweep.check_configs(["nfnet_f0"], configs)
    with pytest.raises(ValueError, match=r"\['nfnet_f7plus'\].*\['nfnet_f0', 'nfnet_f1'\]"):
        sweep.check_configs(["nfnet_f0", "nfnet_f7plus"], configs)


def test_sweep_command_writes_a_launch_script(configs, tmp_path, capsys):
    out = tmp_path / "sweep.sh"
    argv = ["sweep", "--models", "nfnet_f0", "nfnet_f1", "--epochs", "0.25", "0.5",
            "--lr-center", "1.6", "--lr-below", "1", "--lr-above", "1",
            "--configs", str(configs), "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    commands = [line for line in lines if line.startswith("python train.py")]
    assert len(commands) == 2 * 2 * 3
    assert sum("learning_rate=0.8 " in c for c in commands) == 4
    assert cli.main(["sweep", "--models", "nfnet_f3", "--epochs", "1", "--lrs", "1.6",
                     "--configs", str(configs)]) == 2  # fmt: skip
    assert "No config for ['nfnet_f3']" in capsys.readouterr().err
