"""The runs table: collecting train.py work directories, CSV round trip, bad input."""

import json

import pytest
from etils import epath

from scaling import cli, compute, runs

NUM_TRAIN = 1000
BATCH = 64


def make_workdir(root, name, *, lr=0.8, epochs=2.0, loss=2.5, ema=False, finished=True,
                 reads_per_trained=None, **cfg):
    workdir = root / name
    workdir.mkdir()
    config = {
        "model": {"name": "nfnet_f0"},
        "data": {"name": "imagenet2012", "num_classes": 1000, "train_resolution": 224,
                 "eval_resolution": 256},
        "optimizer": {"learning_rate": lr, **({"ema_decay": 0.9999} if ema else {})},
        "total_epochs": epochs,
        "global_batch_size": BATCH,
        "num_train_examples": NUM_TRAIN,
        "seed": 0,
    }  # fmt: skip
    config.update(cfg)
    (workdir / "config.json").write_text(json.dumps(config))
    steps = int(epochs * NUM_TRAIN) // BATCH
    last = steps if finished else steps // 2
    lines = []
    for step in range(1, last + 1):
        seen = step * BATCH
        line = {"step": step, "epoch": seen / NUM_TRAIN, "examples_seen": seen, "lr": lr,
                "train_loss": 3.0}  # fmt: skip
        if reads_per_trained:  # train.py logs it; runs before it did trained on every read
            line["examples_trained"] = seen // reads_per_trained
        if step in (last // 2, last):
            line.update(eval_loss=loss + (step != last), eval_top1=0.7, eval_top5=0.9)
            if ema:
                line.update(ema_eval_loss=loss - 0.1, ema_eval_top1=0.72)
        lines.append(json.dumps(line))
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return workdir


def test_collect_reads_finished_runs(tmp_path):
    make_workdir(tmp_path, "a", lr=0.8, loss=2.5)
    make_workdir(tmp_path, "b", lr=0.4, loss=2.4, ema=True)
    make_workdir(tmp_path, "c", finished=False)
    rows, skipped = runs.collect(sorted(tmp_path.iterdir()))
    assert [r["run"] for r in rows] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert len(skipped) == 1 and "unfinished" in skipped[0] and "/c" in skipped[0]
    a, b = rows
    cost = compute.model_cost("nfnet_f0", 224, 1000)
    seen = (2 * NUM_TRAIN // BATCH) * BATCH
    assert a["examples_seen"] == seen and a["epochs"] == pytest.approx(seen / NUM_TRAIN)
    assert a["compute_flops"] == pytest.approx(6 * cost.macs_per_example * seen)
    assert (a["params"], a["macs_per_example"]) == (cost.params, cost.macs_per_example)
    assert (a["heldout_loss"], a["top1"], a["lr"]) == (2.5, 0.7, 0.8)  # the last eval line
    assert (b["heldout_loss"], b["top1"]) == (pytest.approx(2.3), 0.72)  # EMA values


def test_compute_counts_examples_trained_where_each_mixes_two(tmp_path):
    (row,), _ = runs.collect([make_workdir(tmp_path, "halves", reads_per_trained=2)])
    cost = compute.model_cost("nfnet_f0", 224, 1000)
    seen = (2 * NUM_TRAIN // BATCH) * BATCH
    assert row["examples_seen"] == seen and row["epochs"] == pytest.approx(seen / NUM_TRAIN)
    assert row["compute_flops"] == pytest.approx(6 * cost.macs_per_example * seen / 2)


def test_csv_round_trip(tmp_path):
    make_workdir(tmp_path, "a")
    rows, _ = runs.collect([tmp_path / "a"])
    runs.write_csv(rows, tmp_path / "runs.csv")
    assert runs.read_csv(tmp_path / "runs.csv") == rows


def test_missing_config_fields_are_named(tmp_path):
    workdir = make_workdir(tmp_path, "a")
    config = json.loads((workdir / "config.json").read_text())
    del config["data"]["num_classes"]
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(runs.RunsError, match="data.num_classes"):
        runs.collect([workdir])


def test_bad_config_values_are_named(tmp_path):
    workdir = make_workdir(tmp_path, "a", total_epochs=0)
    with pytest.raises(runs.RunsError, match="`total_epochs` = 0 must be a positive number"):
        runs.collect([workdir])
    (workdir / "config.json").write_text("{")
    with pytest.raises(runs.RunsError, match="config.json is not valid JSON"):
        runs.collect([workdir])


def test_corrupt_metrics_name_the_line(tmp_path):
    workdir = make_workdir(tmp_path, "a")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(runs.RunsError, match=r"metrics.jsonl:32 is not valid JSON"):
        runs.collect([workdir])
    with pytest.raises(runs.RunsError, match="config.json is missing"):
        runs.read_workdir(tmp_path)


def test_bad_rows_are_listed_with_what_they_need(tmp_path):
    make_workdir(tmp_path, "a")
    rows, _ = runs.collect([tmp_path / "a"])
    bad = [dict(rows[0], lr=-0.1), dict(rows[0], heldout_loss=None), dict(rows[0], top1=71.0)]
    runs.write_csv(rows + bad, tmp_path / "runs.csv")
    with pytest.raises(runs.RunsError) as err:
        runs.read_csv(tmp_path / "runs.csv")
    message = str(err.value)
    assert "line 3: lr=-0.1 must be positive" in message
    assert "line 4: heldout_loss is empty" in message
    assert "line 5: top1=71.0 must be a fraction" in message
    assert "line 2" not in message


def test_ragged_rows_are_named_by_line(tmp_path):
    make_workdir(tmp_path, "a")
    rows, _ = runs.collect([tmp_path / "a"])
    runs.write_csv(rows * 2, tmp_path / "runs.csv")
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    width = len(runs.COLUMNS)
    lines[1] = lines[1].rsplit(",", 2)[0]  # two fields short
    lines[2] += ",surplus"
    (tmp_path / "runs.csv").write_text("\n".join(lines) + "\n\n")  # a blank line is ignored
    with pytest.raises(runs.RunsError) as err:
        runs.read_csv(tmp_path / "runs.csv")
    message = str(err.value)
    assert f"line 2: {width - 2} fields where the header has {width}" in message
    assert f"line 3: {width + 1} fields where the header has {width}" in message


def test_collect_command_writes_the_csv(tmp_path, capsys):
    make_workdir(tmp_path, "a")
    make_workdir(tmp_path, "c", finished=False)
    out = tmp_path / "runs.csv"
    assert cli.main(["collect", str(tmp_path / "a"), str(tmp_path / "c"), "-o", str(out)]) == 0
    assert len(runs.read_csv(out)) == 1
    captured = capsys.readouterr()
    assert "1 unfinished or not runs left out" in captured.out and "skipped" in captured.err


def test_collect_lists_paths_that_are_not_runs(tmp_path, capsys):
    make_workdir(tmp_path, "a")
    (tmp_path / "logs").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    paths = [str(tmp_path / name) for name in ("a", "logs", "notes.txt")]
    assert cli.main(["collect", *paths, "-o", str(tmp_path / "runs.csv")]) == 0
    err = capsys.readouterr().err
    assert "logs: not a run (no config.json)" in err
    assert "notes.txt: not a run (not a directory)" in err
    assert len(runs.read_csv(tmp_path / "runs.csv")) == 1


def _finetune(root, name, pretrain, *, step=-1, report_step=None, top1=0.85):
    workdir = make_workdir(root, name, epochs=1.0, init={"path": str(pretrain), "step": step})
    if report_step is not None:
        report = {"source": {"format": "workdir", "path": str(pretrain), "step": report_step}}
        (workdir / "init_report.json").write_text(json.dumps(report))
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    lines[-1] = json.dumps(dict(last, eval_top1=top1))
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return workdir


def test_collect_joins_finetuning_runs_to_their_pretraining_compute(tmp_path):
    pre = make_workdir(tmp_path, "pre", epochs=2.0, loss=2.4)
    _finetune(tmp_path, "ft_end", pre)  # init.step -1: the pre-training run's end
    _finetune(tmp_path, "ft_step", pre, report_step=10, top1=0.8)  # the step the report names
    workdirs = sorted(tmp_path.iterdir())
    rows, finetuned, skipped = runs.collect_all(workdirs)
    assert [r["run"] for r in rows] == [str(pre)] and not skipped
    end, early = finetuned
    assert (end["pretrain_run"], end["top1"], early["top1"]) == (str(pre), 0.85, 0.8)
    assert end["pretrain_compute_flops"] == rows[0]["compute_flops"]
    cost = compute.model_cost("nfnet_f0", 224, 1000)
    assert early["pretrain_examples_seen"] == 10 * BATCH
    assert early["pretrain_compute_flops"] == pytest.approx(6 * cost.macs_per_example * 10 * BATCH)
    runs.write_finetune_csv(finetuned, tmp_path / "finetune.csv")
    assert runs.read_finetune_csv(tmp_path / "finetune.csv") == finetuned
    # The runs table leaves the fine-tuning runs out, and says so.
    assert len(runs.collect(workdirs)[1]) == 2


def test_collect_says_when_the_pretraining_run_is_missing(tmp_path, capsys):
    pre = make_workdir(tmp_path, "pre")
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"")
    _finetune(tmp_path, "ft_gone", tmp_path / "gone")
    _finetune(tmp_path, "ft_file", weights)
    _finetune(tmp_path, "ft_unfinished", make_workdir(tmp_path, "pre_half", finished=False))
    _finetune(tmp_path, "ft_ok", pre)
    paths = [str(p) for p in sorted(tmp_path.iterdir()) if p.name.startswith("ft")]
    out, ft_out = tmp_path / "runs.csv", tmp_path / "finetune.csv"
    assert cli.main(["collect", *paths, "-o", str(out), "--finetune-out", str(ft_out)]) == 0
    err = capsys.readouterr().err
    gone = f"ft_gone: fine-tuned from {tmp_path / 'gone'} (config.init.path), which does not exist"
    assert gone in err
    assert "ft_file: fine-tuned from" in err and "a checkpoint file rather than a work dir" in err
    assert "ft_unfinished: fine-tuned from" in err and "an unfinished pre-training run" in err
    assert [r["run"] for r in runs.read_finetune_csv(ft_out)] == [str(tmp_path / "ft_ok")]
    assert not out.exists()  # no pre-training run among the paths


def test_collect_reads_work_directories_on_an_object_store(tmp_path, monkeypatch):
    # train.py writes workdirs to gs://...; epath's backends are redirected to tmp_path here
    # (epath.testing.mock_epath replaces the backend table, which epath skips for TensorFlow's
    # gfile backend when TensorFlow is installed).
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)
    make_workdir(tmp_path, "a", loss=2.5)
    make_workdir(tmp_path, "b", reads_per_trained=2)
    (tmp_path / "b" / "metrics.jsonl").rename(tmp_path / "b" / "metrics.jsonl.part-000000")

    def local(original, path, *args, **kwargs):
        return original(str(path).replace("gs://bucket", str(tmp_path)), *args, **kwargs)

    calls = ("open", "exists", "isdir", "glob", "listdir", "stat", "walk")
    with epath.testing.mock_epath(**dict.fromkeys(calls, local)):
        rows, skipped = runs.collect(["gs://bucket/a", "gs://bucket/b", "gs://bucket/c"])
    assert [r["run"] for r in rows] == ["gs://bucket/a", "gs://bucket/b"]
    assert rows[0]["heldout_loss"] == 2.5 and rows[1]["examples_seen"] == rows[0]["examples_seen"]
    assert skipped == ["gs://bucket/c: not a run (not a directory)"]
