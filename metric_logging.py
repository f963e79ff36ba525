"""Where metrics go: DIR/metrics.jsonl, TensorBoard summaries, and a console progress line.

metrics.jsonl holds one JSON object per logged step with full-precision floats (Python's
shortest round-trip repr). Every field is a pure function of (config, step) except the
wall-clock ones in `WALL_CLOCK_FIELDS`, so a killed and resumed run writes the same lines as
an uninterrupted one, those fields aside (see `JsonlLog` for what happens on resume). Only
process 0 writes.
"""

import json
import math
import time

import jax
import numpy as np
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

WALL_CLOCK_FIELDS = ("examples_per_sec", "step_time", "mfu", "eta_hours")


class JsonlLog:
    """An append-only JSON-lines file, one object with a "step" per line. On resume, lines past
    the restored step (written by a killed process after its last checkpoint) and a last line
    cut short by the kill are dropped, by an atomic rewrite, before new lines are appended."""

    def __init__(self, path: epath.Path, *, resume_step: int, is_writer: bool):
        self.path = path
        self.is_writer = is_writer
        if is_writer and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # A line cut short by a kill.
                    continue
                if record["step"] <= resume_step:
                    kept.append(line)
            tmp = path.parent / f".{path.name}.tmp"
            tmp.write_text("".join(f"{line}\n" for line in kept))
            tmp.replace(path)

    def append(self, record: dict) -> None:
        if self.is_writer:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class ExampleIndexLog:
    """DIR/example_indices.jsonl: the source indices of every global training batch, as the
    input pipeline delivered them ({"step": s, "index": [...]}, in global batch order). For
    audits of exactly-once-per-epoch reading across restarts; gathers the hosts' slices to
    process 0 every step, so it is off by default."""

    def __init__(self, workdir: str, *, resume_step: int):
        self.log = JsonlLog(epath.Path(workdir) / "example_indices.jsonl",
                            resume_step=resume_step, is_writer=jax.process_index() == 0)

    def write(self, step: int, host_indices) -> None:
        indices = multihost_utils.process_allgather(np.asarray(host_indices), tiled=True)
        self.log.append({"step": step, "index": np.asarray(indices).tolist()})


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int, total_steps: int):
        self.is_writer = jax.process_index() == 0
        self.log = JsonlLog(epath.Path(workdir) / "metrics.jsonl", resume_step=resume_step,
                            is_writer=self.is_writer)
        self.total_steps = total_steps
        # TensorBoard summaries (process 0 only); the console gets `progress` lines instead.
        self.writer = (
            metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
            if self.is_writer
            else None
        )

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        self.log.append(record)
        if self.writer is not None:
            scalars = {k: v for k, v in record.items() if isinstance(v, int | float)}
            scalars.pop("step")
            self.writer.write_scalars(step, scalars)

    def progress(self, step: int, metrics: dict) -> None:
        """One console line: step, loss, throughput, ETA."""
        if not self.is_writer:
            return
        parts = [f"step {step}/{self.total_steps}"]
        for key, fmt in (("epoch", ".3f"), ("train_loss", ".4f"), ("eval_loss", ".4f"),
                         ("eval_top1", ".4f"), ("ema_eval_top1", ".4f"), ("lr", ".4g"),
                         ("examples_per_sec", ".1f"), ("mfu", ".1%"), ("eta_hours", ".2f")):
            value = metrics.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                parts.append(f"{key} {value:{fmt}}")
        print(f"{time.strftime('%H:%M:%S')} {' | '.join(parts)}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _plain(value):
    """Python int/float/bool from numpy or jax scalars (json cannot take those)."""
    if hasattr(value, "item"):
        value = value.item()
    return value
