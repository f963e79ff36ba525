"""Sweep plans and their train.py commands."""

import json
import pathlib
import shlex

import numpy as np
import pytest

from scaling import cli, isoflop, runs, sweep


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


def test_cpu_preset_is_five_models_per_family_x_four_budgets_x_a_2x_lr_grid():
    from configs import scaling_cpu

    preset = sweep.PRESETS["cpu"]()
    specs = preset.specs()
    assert len(specs) == 10 * 4 * 3 and len({(s.model, s.name) for s in specs}) == len(specs)
    families = {m.split("family=")[1].split(",")[0] for m in preset.models}
    assert families == {"nfnet", "vit"}
    for model, grid in preset.models.items():
        family = model.split("family=")[1].split(",")[0]
        assert len(grid.epochs) == 4  # IsoFLOP slices need 4 budgets per model
        assert np.allclose(np.diff(np.log2(grid.epochs)), 1)
        # A 2x grid of 3 centred on the family's default lr (its pilot optimum).
        assert grid.lrs == pytest.approx([scaling_cpu.DEFAULT_LR[family] * k for k in (0.5, 1, 2)])
    sweep.check_configs(list(preset.models), "configs")


def test_cpu_preset_models_are_distinct_shapes_in_the_runs_table():
    """collect names each model by its registry name and changed fields: ten labels."""
    from configs import scaling_cpu
    from scaling import compute

    labels = set()
    for model in sweep.PRESETS["cpu"]().models:
        config = scaling_cpu.get_config(model.partition(":")[2])
        labels.add(compute.model_label(config.model.name, config.model.overrides.to_dict()))
    assert len(labels) == 10
    assert "nfnet_tiny" in labels  # width 16, depth 1 is the registry's nfnet_tiny


def test_config_with_arguments_gets_its_own_work_directory():
    spec = sweep.RunSpec("scaling_cpu:family=vit,width=32,depth=2", 2.0, 0.002)
    args = shlex.split(sweep.command(spec, "configs", "runs"))
    assert "--config=configs/scaling_cpu.py:family=vit,width=32,depth=2" in args
    assert "--workdir=runs/scaling_cpu-family=vit-width=32-depth=2/ep2_lr0.002_seed0" in args


def test_cpu_preset_command_writes_120_runs_and_refuses_grid_flags(tmp_path, capsys):
    out = tmp_path / "sweep.sh"
    assert cli.main(["sweep", "--preset", "cpu", "--workdir-root", "w", "-o", str(out)]) == 0
    commands = [line for line in out.read_text().splitlines() if line.startswith("python ")]
    assert len(commands) == 120
    assert sum("--config.optimizer.learning_rate=0.8 " in c for c in commands) == 20  # NFNets'
    assert sum("--config.total_epochs=32 " in c for c in commands) == 15  # the ViTs' longest
    with pytest.raises(SystemExit, match="leave out --models"):
        cli.main(["sweep", "--preset", "cpu", "--models", "nfnet_f0"])
    with pytest.raises(SystemExit, match="--models and --epochs, or a --preset"):
        cli.main(["sweep", "--lrs", "0.1"])


def _fake_finished_run(workdir, model: str, epochs: float, lr: float, loss: float) -> None:
    """A work directory as train.py leaves it after a finished run: config.json and the final
    evaluation in metrics.jsonl."""
    from configs import scaling_cpu

    config = scaling_cpu.get_config(model.partition(":")[2])
    config.total_epochs, config.optimizer.learning_rate = epochs, lr
    config.num_train_examples = 1500
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json())
    seen = int(epochs * 1500)
    record = dict(step=seen // 128, examples_seen=seen, eval_loss=loss, eval_top1=0.9)
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")


def test_driver_chains_collect_fit_and_plot(tmp_path, capsys):
    """On the ViTs' finished runs, with losses L = E + A / N^0.3 + B / D^0.3 (times a parabola
    in log2 lr), --no-train writes the runs table, the family's fit and the figures."""
    from scripts import cpu_scaling_sweep as driver

    preset = sweep.PRESETS["cpu"]()
    for model, grid in [(m, g) for m, g in preset.models.items() if "family=vit" in m]:
        size = float(model.split("width=")[1].split(",")[0]) * int(model[-1])  # width x depth
        lrs = grid.lrs
        for epochs in grid.epochs:
            for lr in lrs:
                loss = 0.2 + 3 / size**0.3 + 30 / (1500 * epochs) ** 0.3
                loss *= 1 + 0.02 * np.log2(lr / lrs[1]) ** 2 + 0.01 * np.log2(lr / lrs[0])
                spec = sweep.RunSpec(model, epochs, lr)
                workdir = tmp_path / "workdirs" / sweep.model_dir(model) / spec.name
                _fake_finished_run(workdir, model, epochs, lr, loss)
    argv = ["--out", str(tmp_path), "--no-train", "--samples", "2", "--law-grid", "cell"]
    assert driver.main(argv) == 0
    rows = runs.read_csv(tmp_path / "runs.csv")
    assert len(rows) == 60 and len({r["model"] for r in rows}) == 5
    assert len(runs.read_csv(tmp_path / "runs_vit.csv")) == 60
    # The ViTs span over 10x in MACs and overlap in compute: 3 or more IsoFLOP levels.
    log_compute = {}
    for row in rows:
        log_compute.setdefault(row["macs_per_example"], []).append(np.log(row["compute_flops"]))
    assert max(log_compute) / min(log_compute) > 10
    curves = [
        isoflop.ModelCurve(s, np.zeros(3), (min(c), max(c)), 0.0) for s, c in log_compute.items()
    ]
    assert isoflop.compute_levels(curves).size >= 3
    assert not (tmp_path / "runs_nfnet.csv").exists()
    assert "Parametric law" in (tmp_path / "fit_vit.txt").read_text()
    assert (tmp_path / "figures" / "vit" / "loss_vs_compute.png").is_file()
    assert (tmp_path / "figures" / "loss_vs_compute.png").is_file()


def test_driver_extends_the_lr_grids_whose_best_lr_is_an_end(tmp_path):
    """One more run 2x beyond the grid's end where the best lr is that end; none where the
    optimum is bracketed, nor where the extra run was tried and failed."""
    from scripts import cpu_scaling_sweep as driver

    model, grid = next((m, g) for m, g in sweep.PRESETS["cpu"]().models.items() if "vit" in m)
    low, _, high = grid.lrs
    losses = {4.0: (0.9, 0.8, 0.7), 8.0: (0.8, 0.7, 0.75), 16.0: (0.5, 0.6, 0.7)}
    for epochs, by_lr in losses.items():
        for lr, loss in zip(grid.lrs, by_lr, strict=True):
            name = sweep.RunSpec(model, epochs, lr).name
            workdir = tmp_path / "workdirs" / sweep.model_dir(model) / name
            _fake_finished_run(workdir, model, epochs, lr, loss)
    rows, _ = runs.collect(driver._workdirs(tmp_path))
    commands = driver.lr_extension_commands(tmp_path, rows)
    config = f"--config={driver.REPO / 'configs' / 'scaling_cpu.py'}:{model.partition(':')[2]}"
    found = set()
    for command in commands:
        flags = dict(a.split("=", 1) for a in shlex.split(command) if a.startswith("--config"))
        assert command.split()[2] == config
        assert flags["--config.compilation_cache_dir"] == str(tmp_path / "compilation_cache")
        epochs, lr = flags["--config.total_epochs"], flags["--config.optimizer.learning_rate"]
        found.add((float(epochs), round(float(lr), 9)))
    assert found == {(4.0, round(2 * high, 9)), (16.0, round(low / 2, 9))}
    assert len(commands) == 2
    tried = driver._workdir(commands[0])
    assert not driver.finished(tried) and driver.finished(pathlib.Path(rows[0]["run"]))
    tried.mkdir(parents=True)  # tried, and failed before finishing
    assert len(driver.lr_extension_commands(tmp_path, rows)) == 1
    config = pathlib.Path(rows[0]["run"]) / "config.json"
    (tried / "config.json").write_text(config.read_text())  # it diverged before any evaluation
    assert not driver.finished(tried)  # a resumed sweep trains it again


def test_collect_counts_the_shape_that_the_overrides_give():
    from scaling import compute

    plain = compute.model_cost("vit_P-tiny", 16, 10)
    assert compute.model_cost("vit_P-tiny", 16, 10, overrides={"depth": 2}) == plain  # its table
    deeper = compute.model_cost("vit_P-tiny", 16, 10, overrides={"depth": 4})
    assert deeper.params > plain.params and deeper.macs_per_example > plain.macs_per_example
    assert compute.model_label("vit_P-tiny", {"depth": 4}) == "vit_P-tiny[depth=4]"
