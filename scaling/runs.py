"""The runs table: one row per finished training run, gathered from train.py's work directories.

A work directory holds `config.json` (the run's ml_collections config) and `metrics.jsonl` (one
JSON object per logged step). A run is finished when an evaluation was logged after all
`total_epochs x num_train_examples` examples (up to one global batch) were seen. Its held-out
loss and top-1 are those of the last evaluation: `ema_eval_loss` / `ema_eval_top1` when the
config turns EMA on (a positive `ema_decay` at the top level or under `optimizer`), else
`eval_loss` / `eval_top1`. Compute = 6 x MACs per example (at the training resolution) x
examples seen (see `scaling.compute`).
"""

import csv
import json
import math
import pathlib

from scaling import compute

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


def _get(config: dict, dotted: str, source: pathlib.Path):
    value = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise RunsError(f"{source} has no `{dotted}`; re-run with a config that sets it.")
        value = value[key]
    return value


def read_metrics(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise RunsError(f"{path} is missing: is this a train.py work directory?")
    records = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
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


def read_workdir(workdir: str | pathlib.Path) -> tuple[dict | None, str]:
    """(row, "") for a finished run, (None, reason) for an unfinished one; raises if malformed."""
    workdir = pathlib.Path(workdir)
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
    metrics_path = workdir / "metrics.jsonl"
    records = read_metrics(metrics_path)
    target = float(cfg["total_epochs"]) * int(cfg["num_train_examples"])
    done_at = target - int(cfg["global_batch_size"])
    evals = [r for r in records if "eval_loss" in r]
    last_seen = max((float(r.get("examples_seen", 0)) for r in records), default=0.0)
    if not evals or float(evals[-1].get("examples_seen", 0)) < done_at:
        return None, f"{workdir}: unfinished ({last_seen:.4g} of {target:.4g} examples evaluated)"
    last = evals[-1]
    prefix = "ema_" if _uses_ema(config) else ""
    for key in (f"{prefix}eval_loss", "examples_seen"):
        if key not in last:
            raise RunsError(f"{metrics_path}: the last eval line has no `{key}`.")
    cost = compute.model_cost(
        cfg["model.name"], int(cfg["data.train_resolution"]), int(cfg["data.num_classes"])
    )
    examples = int(last_seen)  # training may log a step or two past the final evaluation
    top1 = last.get(f"{prefix}eval_top1")
    row = {
        "run": str(workdir),
        "model": cfg["model.name"],
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
        "compute_flops": compute.training_flops(cost.macs_per_example, examples),
        "lr": float(cfg["optimizer.learning_rate"]),
        "heldout_loss": float(last[f"{prefix}eval_loss"]),
        "top1": None if top1 is None else float(top1),
    }
    return row, ""


def collect(workdirs) -> tuple[list[dict], list[str]]:
    """Rows of the finished runs among `workdirs`, and one line per unfinished run left out."""
    rows, skipped = [], []
    for workdir in workdirs:
        row, reason = read_workdir(workdir)
        if row is None:
            skipped.append(reason)
        else:
            rows.append(row)
    return rows, skipped


def _format(value) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def write_csv(rows: list[dict], path: str | pathlib.Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k)) for k in COLUMNS})


def _parse(value: str, column: str):
    if value == "":
        return None
    if column in ("run", "model", "dataset"):
        return value
    number = float(value)
    return int(number) if column in INTEGER_COLUMNS and number.is_integer() else number


def read_csv(path: str | pathlib.Path) -> list[dict]:
    """Reads a runs table and checks it; errors name the offending lines and what they need."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise RunsError(f"{path} does not exist; write it with `python -m scaling collect`.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise RunsError(f"{path} lacks the column(s) {missing}; regenerate it with `collect`.")
        raw = [(reader.line_num, record) for record in reader]
    rows, problems = [], []
    width = len(reader.fieldnames)
    for line, record in raw:
        extra, short = record.get(None), None in record.values()
        if extra or short:  # csv.DictReader keeps surplus fields under None, fills short rows
            fields = width + len(extra) if extra else sum(v is not None for v in record.values())
            problems.append(f"line {line}: {fields} fields where the header has {width}")
            continue
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
