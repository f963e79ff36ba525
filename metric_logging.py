"""Where metrics go: DIR/metrics.jsonl, TensorBoard summaries, and a console progress line.

metrics.jsonl holds one JSON object per logged step with full-precision floats (Python's
shortest round-trip repr). Every field is a pure function of (config, step) except the
wall-clock ones in `WALL_CLOCK_FIELDS`, so a killed and resumed run writes the same lines as
an uninterrupted one, those fields aside. On resume, lines past the restored step (logged by
the killed process after its last checkpoint) are dropped before new ones are appended.
Only process 0 writes.
"""

import json
import math
import time

import jax
from clu import metric_writers
from etils import epath

WALL_CLOCK_FIELDS = ("examples_per_sec", "step_time", "mfu", "eta_hours")


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int, total_steps: int):
        self.is_writer = jax.process_index() == 0
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.total_steps = total_steps
        # TensorBoard summaries (process 0 only); the console gets `progress` lines instead.
        self.writer = (
            metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
            if self.is_writer
            else None
        )
        if self.is_writer:
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # A line cut short by a kill.
                continue
            if record["step"] <= step:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        if self.is_writer:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
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
