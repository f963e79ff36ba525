"""The training loop end to end on the tiny NFNet and the bundled digits (CPU, seconds)."""

import glob
import importlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import input_pipeline
import train
from configs import quickstart
from training import checkpoint, metric_logging
from training.metric_logging import WALL_CLOCK_FIELDS, read_lines

REPO = Path(__file__).resolve().parents[2]


def small_config(**changes):
    """The quickstart run, cut to a dozen steps with frequent logs, evals and checkpoints."""
    c = quickstart.get_config()
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.total_steps = 12
    c.optimizer.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 4
    c.ema_decay = 0.99
    for key, value in changes.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def metrics(workdir):
    lines = read_lines(Path(workdir) / "metrics.jsonl")
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS}
            for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    state = train.train_and_evaluate(small_config(), workdir)
    return workdir, state


def test_run_writes_metrics_config_and_checkpoints(uninterrupted):
    workdir, state = uninterrupted
    records = metrics(workdir)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    assert {"eval_loss", "eval_top1", "eval_top5", "ema_eval_loss"} <= set(records[2])
    assert records[-1]["examples_seen"] == 12 * 32
    assert int(state.step) == 12
    saved = json.loads((Path(workdir) / "config.json").read_text())
    assert saved["model"]["name"] == "nfnet_tiny"
    steps = sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir())
    assert steps[-1] == 12 and len(steps) <= 3


def test_loss_decreases_on_a_learnable_task(uninterrupted):
    records = metrics(uninterrupted[0])
    first, last = records[0], records[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["eval_loss"] < np.log(10)  # below chance level for 10 classes
    assert last["eval_top1"] > 0.15  # chance: 0.1, after only 12 steps of batch 32


# Scanned blocks (the deep variants' layout), with per-block random draws.
SCANNED = {"model.overrides.scan": True, "model.overrides.stochastic_depth": 0.1}


@pytest.fixture(scope="module")
def uninterrupted_scanned(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted_scanned"))
    return workdir, train.train_and_evaluate(small_config(**SCANNED), workdir)


@pytest.mark.parametrize("layout", ["unrolled", "scanned"])
def test_killed_and_resumed_run_is_bit_identical(layout, request, workdir, monkeypatch):
    """Kill after step 7 (last checkpoint: 4; steps 6 logged and evaluated past it), resume.
    The scanned run writes its logs in parts, as on an object store."""
    changes = SCANNED if layout == "scanned" else {}
    uninterrupted = request.getfixturevalue(
        "uninterrupted_scanned" if layout == "scanned" else "uninterrupted")
    logged_at_save = {}  # Checkpoint step -> the last step in the log when its save began.
    if layout == "scanned":
        monkeypatch.setattr(metric_logging, "writes_in_parts", lambda path: True)
        real_save = checkpoint.Checkpointer.save

        def save(self, step, state):
            lines = read_lines(self.workdir / "metrics.jsonl")
            logged_at_save[step] = json.loads(lines[-1])["step"]
            real_save(self, step, state)

        monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    real = input_pipeline.create_train_iterator

    def dies_after(n):
        def create(*args, **kwargs):
            iterator = real(*args, **kwargs)
            for _ in range(n):
                yield next(iterator)
            raise KeyboardInterrupt("killed")

        return create

    monkeypatch.setattr(input_pipeline, "create_train_iterator", dies_after(8))
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(small_config(**changes), workdir)
    assert max(r["step"] for r in metrics(workdir)) == 8  # logged beyond the checkpoint
    monkeypatch.setattr(input_pipeline, "create_train_iterator", real)
    state = train.train_and_evaluate(small_config(**changes), workdir)

    assert metrics(workdir) == metrics(uninterrupted[0])
    in_parts = layout == "scanned"
    if in_parts:  # The lines up to a checkpoint are written before it can commit.
        assert logged_at_save and all(logged == step for step, logged in logged_at_save.items())
    assert bool(list(Path(workdir).glob("metrics.jsonl.part-*"))) == in_parts
    assert (Path(workdir) / "metrics.jsonl").exists() == (not in_parts)
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                        state, uninterrupted[1])
    assert all(jax.tree.leaves(same))


def test_preemption_checkpoints_and_exits_then_resumes(uninterrupted, workdir, monkeypatch):
    monkeypatch.setattr(checkpoint.Checkpointer, "preempted", lambda self, step: step == 5)
    state = train.train_and_evaluate(small_config(), workdir)
    assert int(state.step) == 5
    assert (Path(workdir) / "checkpoints" / "5").is_dir()
    monkeypatch.undo()
    train.train_and_evaluate(small_config(), workdir)
    assert metrics(workdir) == metrics(uninterrupted[0])


def test_workdir_of_another_run_is_refused(uninterrupted):
    workdir = uninterrupted[0]
    before = (Path(workdir) / "config.json").read_text()
    with pytest.raises(checkpoint.RunMismatchError, match="global_batch_size: saved 32, now 64"):
        train.train_and_evaluate(small_config(global_batch_size=64), workdir)
    assert (Path(workdir) / "config.json").read_text() == before


def diverging_config(policy):
    """Overflows to Inf/NaN within a few steps (both policies share one compiled step)."""
    return small_config(**{"optimizer.learning_rate": 1e38, "optimizer.agc_clip": None,
                           "optimizer.warmup_steps": 0, "checkpoint_every_steps": 1,
                           "nonfinite_policy": policy})


def test_nan_halts_with_the_step_and_checkpoints_nothing_from_it(workdir):
    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step \d+") as info:
        train.train_and_evaluate(diverging_config("halt"), workdir)
    first_bad = int(str(info.value).split("at step ")[1].split(";")[0])
    saved = [int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()]
    # Checkpoint k holds the state after k updates: none may include the bad step's.
    assert all(k <= first_bad for k in saved)


def test_nan_skip_policy_counts_skipped_steps(workdir):
    state = train.train_and_evaluate(diverging_config("skip"), workdir)
    assert int(state.nonfinite_count) > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"grad_accum_steps": 5}, "divisible by devices"),
        ({"nonfinite_policy": "ignore"}, "'halt' or 'skip'"),
        ({"compute_dtype": "int8"}, "compute_dtype"),
        ({"optimizer.warmup_steps": 50}, "Warm-up"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"data.auto_augment": "rand-x9"}, "Unknown augmentation policy 'rand-x9'"),
        ({"data.crop_area_range": (0.5, 0.1)}, "crop_area_range"),
    ],
)
def test_bad_config_values_are_clear_errors(changes, message, workdir):
    with pytest.raises(train.ConfigError, match=message):
        train.train_and_evaluate(small_config(**changes), workdir)
    assert not os.path.exists(workdir)  # nothing written


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = train.train_and_evaluate(small_config(total_steps=3), str(tmp_path / "a"))
    accum = train.train_and_evaluate(small_config(total_steps=3, grad_accum_steps=4),
                                     str(tmp_path / "b"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 full.params, accum.params)


def test_dry_run_prints_sizes_and_exits(capsys, monkeypatch):
    config = importlib.import_module("configs.nfnet_f0").get_config("imagenet")
    config.num_train_examples = 1_281_167
    # As on the command line: no --workdir, no compilation cache chosen beforehand.
    monkeypatch.setattr(train, "enable_compilation_cache",
                        _without_preset_cache(train.enable_compilation_cache))
    train.train_and_evaluate(config, None, dry_run=True)
    out = capsys.readouterr().out
    assert "71,489,284" in out
    assert "112,602 (1,564 warm-up)" in out  # 360 epochs at batch 4096, rounded down
    assert "stem_conv0/kernel" in out


def _without_preset_cache(enable):
    """`enable` run with JAX's compilation cache directory unset, then restored."""
    def wrapped(config, workdir):
        preset = jax.config.jax_compilation_cache_dir
        jax.config.update("jax_compilation_cache_dir", None)
        try:
            return enable(config, workdir)
        finally:
            jax.config.update("jax_compilation_cache_dir", preset)
    return wrapped


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs" / "*.py"))))
def test_every_config_file_builds(path):
    name = Path(path).stem
    module = importlib.import_module(f"configs.{name}")
    if hasattr(module, "get_config"):
        config = module.get_config()
        assert config.model.name and config.global_batch_size > 0


def test_config_arguments():
    from configs import nfnet_f7plus

    c = nfnet_f7plus.get_config("epochs=8,lr=0.8,classes=30000")
    assert (c.total_epochs, c.optimizer.learning_rate, c.data.num_classes) == (8.0, 0.8, 30000)
    assert c.model.name == "nfnet_F7+"
    with pytest.raises(ValueError, match="Unknown config argument 'epoch'"):
        nfnet_f7plus.get_config("epoch=8")


def test_batchnorm_model_trains_through_the_same_loop(workdir):
    """ViT with a convolutional stem keeps BatchNorm statistics in the train state."""
    config = small_config(**{"model.name": "vit_C-tiny", "total_steps": 3,
                             "eval_every_steps": 3, "checkpoint_every_steps": 3})
    config.model.overrides = {}
    state = train.train_and_evaluate(config, workdir)
    stats = jax.tree.leaves(state.batch_stats)
    assert stats and any(np.any(np.asarray(s) != 0) for s in stats)
    assert np.isfinite(metrics(workdir)[-1]["eval_loss"])


def test_compilation_cache_defaults_to_the_workdir(tmp_path):
    """A restart reuses the compiled steps from WORKDIR/compilation_cache unless the config
    says 'none'; a directory chosen through JAX_COMPILATION_CACHE_DIR wins."""
    chosen = jax.config.jax_compilation_cache_dir  # the test run's (conftest.py)
    assert train.enable_compilation_cache(small_config(), str(tmp_path)) == chosen
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        off = small_config(compilation_cache_dir="none")
        assert train.enable_compilation_cache(off, str(tmp_path)) is None
        assert not jax.config.jax_compilation_cache_dir
        expected = os.path.join(str(tmp_path), "compilation_cache")
        assert train.enable_compilation_cache(small_config(), str(tmp_path)) == expected
        assert jax.config.jax_compilation_cache_dir == expected
    finally:
        jax.config.update("jax_compilation_cache_dir", chosen)
