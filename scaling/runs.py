"""The runs table: one row per finished training run, gathered from train.py's work directories.

A work directory holds `config.json` (the run's ml_collections config) and `metrics.jsonl` (one
JSON object per logged step). A run is finished when an evaluation was logged after all
`total_epochs x num_train_examples` examples (up to one global batch) were seen. Its held-out
loss and top-1 are those of the last evaluation: `ema_eval_loss` / `ema_eval_top1` when the
config turns EMA on (a positive `ema_decay` at the top level or under `optimizer`), else
`eval_loss` / `eval_top1`. Compute = 6 x MACs per example (at the training resolution) x
examples seen (see `scaling.compute`).

Fine-tuning runs (`config.init.path` set, see training/finetune.py) make a second table, one row per
finished fine-tuning run joined to the pre-training run it started from: `init.path` names that
run's work directory, and the compute is the pre-training run's up to the checkpoint loaded
(the step in the run's `init_report.json`, else `config.init.step`, else the run's end). A
fine-tuning run whose pre-training run is missing, unfinished or not a work directory of this
codebase (a timm or big_vision file) is left out and listed with the reason.
"""

import csv
import json
import math
import pathlib

from etils import epath

from scaling import compute
from training import metric_logging

COLUMNS = (
    "run",
    "model",
    "dataset",
    "params",
    "macs_per_example",
    "train_resolution",
    "num_classes",
    "num_train_examples",
    "global_batch_size",
    "seed",
    "total_epochs",
    "examples_seen",
    "epochs",
    "compute_flops",
    "lr",
    "heldout_loss",
    "top1",
)
# Columns every fit needs, with a positive value.
POSITIVE_COLUMNS = (
    "params",
    "macs_per_example",
    "num_train_examples",
    "examples_seen",
    "epochs",
    "compute_flops",
    "lr",
    "heldout_loss",
)
INTEGER_COLUMNS = ("params", "macs_per_example", "train_resolution", "num_classes", "seed")
INTEGER_COLUMNS += ("num_train_examples", "global_batch_size", "examples_seen")
INTEGER_COLUMNS += ("pretrain_params", "pretrain_macs_per_example", "pretrain_examples_seen")
# The fine-tuning table: the run's own columns, then its pre-training run's (`pretrain_` + a
# column of the runs table) up to the checkpoint it loaded.
FINETUNE_COLUMNS = (
    "run",
    "model",
    "dataset",
    "train_resolution",
    "total_epochs",
    "lr",
    "heldout_loss",
    "top1",
    "pretrain_run",
    "pretrain_model",
    "pretrain_dataset",
    "pretrain_params",
    "pretrain_macs_per_example",
    "pretrain_total_epochs",
    "pretrain_examples_seen",
    "pretrain_epochs",
    "pretrain_compute_flops",
    "pretrain_lr",
    "pretrain_heldout_loss",
)
TEXT_COLUMNS = ("run", "model", "dataset", "pretrain_run", "pretrain_model", "pretrain_dataset")

_CONFIG_FIELDS = (
    "model.name",
    "data.name",
    "data.num_classes",
    "data.train_resolution",
    "optimizer.learning_rate",
    "total_epochs",
    "global_batch_size",
    "num_train_examples",
    "seed",
)


class RunsError(ValueError):
    """Runs that cannot be used as they are; the message names them and the fix."""


def _get(config: dict, dotted: str, source: epath.Path):
    value = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise RunsError(f"{source} has no `{dotted}`; re-run with a config that sets it.")
        value = value[key]
    return value


def read_metrics(path: epath.Path) -> list[dict]:
    """The records of a metrics.jsonl, one file or written in parts (`metric_logging`)."""
    try:
        lines = metric_logging.read_lines(path)
    except FileNotFoundError:
        raise RunsError(f"{path} is missing: is this a train.py work directory?") from None
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            message = f"{path}:{i} is not valid JSON ({e.msg}); repair or drop the line."
            raise RunsError(message) from e
    return records


def _uses_ema(config: dict) -> bool:
    decay = config.get("ema_decay", config.get("optimizer", {}).get("ema_decay"))
    return bool(decay) and float(decay) > 0


def _read_config(workdir: epath.Path) -> tuple[dict, dict]:
    """The run's config.json and its `_CONFIG_FIELDS`, checked."""
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise RunsError(f"{config_path} is missing: is {workdir} a train.py work directory?")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise RunsError(f"{config_path} is not valid JSON ({e.msg}); rewrite it.") from e
    cfg = {k: _get(config, k, config_path) for k in _CONFIG_FIELDS}
    for key in ("total_epochs", "num_train_examples", "global_batch_size", "data.train_resolution"):
        if not (isinstance(cfg[key], int | float) and cfg[key] > 0):
            raise RunsError(f"{config_path}: `{key}` = {cfg[key]!r} must be a positive number.")
    return config, cfg


def _final_eval(workdir: epath.Path, config: dict, cfg: dict):
    """(last eval record, (examples read, examples trained), metric prefix, "") of a finished
    run, or (None, (read, trained), "", reason) of an unfinished one. Trained examples are fewer
    than those read where each mixes two (mix_mode 'halves'); runs that do not log them trained
    on every example read."""
    metrics_path = workdir / "metrics.jsonl"
    records = read_metrics(metrics_path)
    target = float(cfg["total_epochs"]) * int(cfg["num_train_examples"])
    done_at = target - int(cfg["global_batch_size"])
    evals = [r for r in records if "eval_loss" in r]
    last_seen = max((float(r.get("examples_seen", 0)) for r in records), default=0.0)
    trained = max((float(r.get("examples_trained", 0)) for r in records), default=0.0)
    if not evals or float(evals[-1].get("examples_seen", 0)) < done_at:
        reason = f"{workdir}: unfinished ({last_seen:.4g} of {target:.4g} examples evaluated)"
        return None, (last_seen, trained or last_seen), "", reason
    last = evals[-1]
    prefix = "ema_" if _uses_ema(config) else ""
    for key in (f"{prefix}eval_loss", "examples_seen"):
        if key not in last:
            raise RunsError(f"{metrics_path}: the last eval line has no `{key}`.")
    return last, (last_seen, trained or last_seen), prefix, ""


def workdir_path(workdir) -> epath.Path:
    """A work directory, local or on an object store (gs://...), as train.py writes them."""
    return epath.Path(workdir)


def read_workdir(workdir) -> tuple[dict | None, str]:
    """(row, "") for a finished run, (None, reason) for an unfinished one; raises if malformed."""
    workdir = workdir_path(workdir)
    config, cfg = _read_config(workdir)
    last, (last_seen, trained), prefix, reason = _final_eval(workdir, config, cfg)
    if last is None:
        return None, reason
    overrides = config["model"].get("overrides") or {}
    cost = compute.model_cost(
        cfg["model.name"],
        int(cfg["data.train_resolution"]),
        int(cfg["data.num_classes"]),
        overrides=overrides,
    )
    examples = int(last_seen)  # training may log a step or two past the final evaluation
    top1 = last.get(f"{prefix}eval_top1")
    row = {
        "run": str(workdir),
        "model": compute.model_label(cfg["model.name"], overrides),
        "dataset": cfg["data.name"],
        "params": cost.params,
        "macs_per_example": cost.macs_per_example,
        "train_resolution": int(cfg["data.train_resolution"]),
        "num_classes": int(cfg["data.num_classes"]),
        "num_train_examples": int(cfg["num_train_examples"]),
        "global_batch_size": int(cfg["global_batch_size"]),
        "seed": int(cfg["seed"]),
        "total_epochs": float(cfg["total_epochs"]),
        "examples_seen": examples,
        "epochs": examples / int(cfg["num_train_examples"]),
        "compute_flops": compute.training_flops(cost.macs_per_example, int(trained)),
        "lr": float(cfg["optimizer.learning_rate"]),
        "heldout_loss": float(last[f"{prefix}eval_loss"]),
        "top1": None if top1 is None else float(top1),
    }
    return row, ""


def not_a_run(path) -> str:
    """Why `path` is not a train.py work directory, or "" when it is one."""
    path = workdir_path(path)
    if not path.is_dir():
        return f"{path}: not a run (not a directory)"
    if not (path / "config.json").is_file():
        return f"{path}: not a run (no config.json)"
    return ""


def init_path(workdir) -> str:
    """The run's `config.init.path`: the pre-trained weights it started from ("" if none)."""
    config, _ = _read_config(workdir_path(workdir))
    init = config.get("init")
    return str(init.get("path") or "") if isinstance(init, dict) else ""


def _loaded_step(workdir: epath.Path, config: dict) -> int | None:
    """The pre-training checkpoint step a fine-tuning run loaded: training/finetune.py's report
    records it; before the report exists, `config.init.step` (-1, the latest, gives None)."""
    report = workdir / "init_report.json"
    if report.is_file():
        try:
            step = json.loads(report.read_text())["source"]["step"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RunsError(f"{report} is unreadable ({e!r}); delete it or rewrite it.") from e
        return None if step is None else int(step)
    step = int(config["init"].get("step", -1))
    return None if step < 0 else step


def _pretraining(workdir: epath.Path, config: dict, cache: dict) -> tuple[dict | None, str]:
    """(pre-training row up to the loaded checkpoint, "") or (None, why the run is left out)."""
    source = str(config["init"]["path"])
    where = f"{workdir}: fine-tuned from {source} (config.init.path)"
    path = workdir_path(source)
    if not path.exists():
        return None, (
            f"{where}, which does not exist: restore the pre-training work directory there or "
            f"correct init.path in {workdir / 'config.json'}"
        )
    if not (path / "config.json").is_file():
        return None, (
            f"{where}, a checkpoint file rather than a work directory of this codebase, so its "
            "pre-training compute is unknown"
        )
    if path not in cache:
        cache[path] = read_workdir(path)
    row, reason = cache[path]
    if row is None:
        return None, f"{where}, an unfinished pre-training run ({reason})"
    step = _loaded_step(workdir, config)
    if step is None:
        return row, ""
    examples = min(step * row["global_batch_size"], row["examples_seen"])
    if examples <= 0:
        return None, f"{where}: the loaded checkpoint step {step} has seen no examples"
    return dict(
        row,
        examples_seen=examples,
        epochs=examples / row["num_train_examples"],
        # Pro rata: compute counts examples trained, fewer than read in 'halves' mixing.
        compute_flops=row["compute_flops"] * examples / row["examples_seen"],
    ), ""


def read_finetune_workdir(workdir, cache: dict | None = None) -> tuple[dict | None, str]:
    """(fine-tuning row, "") for a finished fine-tuning run whose pre-training run is collected,
    else (None, reason); `cache` shares pre-training runs between calls."""
    workdir = workdir_path(workdir)
    config, cfg = _read_config(workdir)
    if not init_path(workdir):
        return None, f"{workdir}: not a fine-tuning run (config.init.path is not set)"
    pre, reason = _pretraining(workdir, config, {} if cache is None else cache)
    if pre is None:
        return None, reason
    last, _, prefix, reason = _final_eval(workdir, config, cfg)
    if last is None:
        return None, reason
    top1 = last.get(f"{prefix}eval_top1")
    if top1 is None:
        return None, f"{workdir}: its last evaluation has no `{prefix}eval_top1`"
    row = {
        "run": str(workdir),
        "model": cfg["model.name"],
        "dataset": cfg["data.name"],
        "train_resolution": int(cfg["data.train_resolution"]),
        "total_epochs": float(cfg["total_epochs"]),
        "lr": float(cfg["optimizer.learning_rate"]),
        "heldout_loss": float(last[f"{prefix}eval_loss"]),
        "top1": float(top1),
    }
    for column in FINETUNE_COLUMNS[len(row) :]:
        row[column] = pre[column.removeprefix("pretrain_")]
    return row, ""


def collect_all(workdirs) -> tuple[list[dict], list[dict], list[str]]:
    """Pre-training rows, fine-tuning rows and one line per path left out, from `workdirs`.

    Paths that are not work directories (a shell glob also matches logs and plots), unfinished
    runs and fine-tuning runs without a collectable pre-training run are left out and listed; a
    work directory with corrupt files is an error.
    """
    rows, finetuned, skipped, cache = [], [], [], {}
    for workdir in workdirs:
        reason = not_a_run(workdir)
        if reason:
            skipped.append(reason)
            continue
        if init_path(workdir):
            row, reason = read_finetune_workdir(workdir, cache)
            (finetuned if row is not None else skipped).append(row if row is not None else reason)
            continue
        row, reason = read_workdir(workdir)
        (rows if row is not None else skipped).append(row if row is not None else reason)
    return rows, finetuned, skipped


def collect(workdirs) -> tuple[list[dict], list[str]]:
    """Rows of the finished pre-training runs among `workdirs`, and one line per path left out
    (fine-tuning runs included: `collect_all` reads them)."""
    rows, finetuned, skipped = collect_all(workdirs)
    skipped += [f"{r['run']}: a fine-tuning run (config.init.path set)" for r in finetuned]
    return rows, skipped


def _format(value) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def write_csv(rows: list[dict], path: str | pathlib.Path, columns=COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k)) for k in columns})


def write_finetune_csv(rows: list[dict], path: str | pathlib.Path) -> None:
    write_csv(rows, path, FINETUNE_COLUMNS)


def _parse(value: str, column: str):
    if value == "":
        return None
    if column in TEXT_COLUMNS:
        return value
    number = float(value)
    return int(number) if column in INTEGER_COLUMNS and number.is_integer() else number


def _records(path: pathlib.Path, columns, problems: list[str]) -> list[tuple[int, dict]]:
    """(line number, record) of each well-formed row of the CSV table `path`, which must have
    `columns`; a row with too few or too many fields is added to `problems` instead."""
    if not path.is_file():
        raise RunsError(f"{path} does not exist; write it with `python -m scaling collect`.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise RunsError(f"{path} lacks the column(s) {missing}; regenerate it with `collect`.")
        raw = [(reader.line_num, record) for record in reader]
    width, records = len(reader.fieldnames), []
    for line, record in raw:
        extra, short = record.get(None), None in record.values()
        if extra or short:  # csv.DictReader keeps surplus fields under None, fills short rows
            fields = width + len(extra) if extra else sum(v is not None for v in record.values())
            problems.append(f"line {line}: {fields} fields where the header has {width}")
        else:
            records.append((line, record))
    return records


def read_csv(path: str | pathlib.Path) -> list[dict]:
    """Reads a runs table and checks it; errors name the offending lines and what they need."""
    path = pathlib.Path(path)
    rows, problems = [], []
    for line, record in _records(path, COLUMNS, problems):
        row = {}
        for column in COLUMNS:
            try:
                row[column] = _parse(record[column].strip(), column)
            except ValueError:
                problems.append(f"line {line}: {column}={record[column]!r} is not a number")
        rows.append(row)
        for column in POSITIVE_COLUMNS:
            value = row.get(column)
            if value is None:
                problems.append(f"line {line}: {column} is empty")
            elif not (math.isfinite(value) and value > 0):
                problems.append(f"line {line}: {column}={value!r} must be positive")
        top1 = row.get("top1")
        if top1 is not None and not 0 <= top1 <= 1:
            problems.append(f"line {line}: top1={top1!r} must be a fraction in [0, 1]")
    if problems:
        raise RunsError(f"{path} has unusable rows; fix or drop them: " + "; ".join(problems) + ".")
    if not rows:
        raise RunsError(f"{path} has no runs; collect finished runs first.")
    return rows


def read_finetune_csv(path: str | pathlib.Path) -> list[dict]:
    """Reads a fine-tuning table (`collect`) and checks it; errors name the offending lines."""
    path = pathlib.Path(path)
    rows, problems = [], []
    for line, record in _records(path, FINETUNE_COLUMNS, problems):
        try:
            row = {c: _parse((record[c] or "").strip(), c) for c in FINETUNE_COLUMNS}
        except ValueError:
            problems.append(f"line {line}: a numeric field is not a number")
            continue
        top1, flops = row["top1"], row["pretrain_compute_flops"]
        if top1 is None or not 0 <= top1 <= 1:
            problems.append(f"line {line}: top1={top1!r} must be a fraction in [0, 1]")
        if flops is None or not (math.isfinite(flops) and flops > 0):
            problems.append(f"line {line}: pretrain_compute_flops={flops!r} must be positive")
        rows.append(row)
    if problems:
        raise RunsError(f"{path} has unusable rows; fix or drop them: " + "; ".join(problems) + ".")
    if not rows:
        raise RunsError(f"{path} has no fine-tuning runs; collect finished ones first.")
    return rows
