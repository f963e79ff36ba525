"""Where metrics go: DIR/metrics.jsonl, TensorBoard summaries, and a console progress line.

metrics.jsonl holds one JSON object per logged step with full-precision floats (Python's
shortest round-trip repr). Every field is a pure function of (config, step) except the
wall-clock ones in `WALL_CLOCK_FIELDS`, so a killed and resumed run writes the same lines as
an uninterrupted one, those fields aside (see `JsonlLog` for what happens on resume). Only
process 0 writes.

On a local disk the log is one file, appended line by line. On an object store (a workdir
such as gs://...), where an append would rewrite the whole object, lines are buffered and
written as new objects NAME.part-000000, NAME.part-000001, ... at every checkpoint (`flush`)
and at exit; the lines logged since the last checkpoint are the only ones a kill can lose, and
resuming drops them anyway. `read_lines` returns the one logical file in either layout: every
reader of these logs goes through it.
"""

import json
import math
import os
import re
import time

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

WALL_CLOCK_FIELDS = ("examples_per_sec", "step_time", "mfu", "eta_hours")

# A buffered part is written early once it holds this many bytes (e.g. example indices of big
# batches), so that memory stays bounded between checkpoints.
MAX_BUFFERED_BYTES = 8 * 2**20


def writes_in_parts(path) -> bool:
    """Whether `path` is on an object store (a URL such as gs://...), where the log is written
    in parts; a local path is appended to in place."""
    return "://" in str(path)


def _as_path(path):
    """An epath.Path for a str or os.PathLike; other path objects (with epath.Path's methods)
    are kept."""
    return epath.Path(path) if isinstance(path, str | os.PathLike) else path


def _part_number(path, name: str) -> int | None:
    match = re.fullmatch(re.escape(name) + r"\.part-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _parts(path) -> list:
    """NAME.part-N files beside `path`, in the order of N."""
    numbered = {}
    for p in path.parent.glob(f"{path.name}.part-*"):
        number = _part_number(p, path.name)
        if number is not None:  # Not e.g. NAME.part-3.bak.
            numbered[number] = p
    return [numbered[number] for number in sorted(numbered)]


def log_files(path) -> list:
    """The files that make up the logical log `path`, in order: the file itself, if any, then
    its parts."""
    path = _as_path(path)
    return ([path] if path.exists() else []) + _parts(path)


def read_lines(path) -> list[str]:
    """The lines of the logical log `path` (a local or object-store path), however written."""
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"{path} is missing (neither the file nor parts of it exist)")
    return [line for f in files for line in f.read_text().splitlines()]


def _kept_lines(text: str, resume_step: int) -> list[str]:
    """The complete lines of `text` with a step up to `resume_step`."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # A line cut short by a kill.
            continue
        if record["step"] <= resume_step:
            kept.append(line)
    return kept


def _write_atomically(path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


class JsonlLog:
    """An append-only JSON-lines log, one object with a "step" per line: one local file, or
    parts on an object store (see the module docstring). On resume, lines past the restored
    step (written by a killed process after its last checkpoint) and a last line cut short by
    the kill are dropped before new lines are written: the files holding them, newest first,
    are rewritten atomically or (parts left empty) deleted, and older ones are left alone."""

    def __init__(self, path, *, resume_step: int, is_writer: bool,
                 in_parts: bool | None = None):
        self.path = _as_path(path)
        self.is_writer = is_writer
        self.in_parts = writes_in_parts(self.path) if in_parts is None else in_parts
        self._buffer: list[str] = []
        self._buffered_bytes = 0
        self._next_part = 0
        if is_writer:
            self._drop_lines_after(resume_step)
            parts = _parts(self.path)
            self._next_part = _part_number(parts[-1], self.path.name) + 1 if parts else 0

    def _drop_lines_after(self, resume_step: int) -> None:
        for f in reversed(log_files(self.path)):
            text = f.read_text()
            kept = _kept_lines(text, resume_step)
            if text == "".join(f"{line}\n" for line in kept):
                return  # Older files hold older steps only.
            if kept or f == self.path:
                _write_atomically(f, "".join(f"{line}\n" for line in kept))
            else:
                f.unlink()

    def append(self, record: dict) -> None:
        if not self.is_writer:
            return
        line = json.dumps(record) + "\n"
        if not self.in_parts:
            with self.path.open("a") as f:
                f.write(line)
            return
        self._buffer.append(line)
        self._buffered_bytes += len(line)
        if self._buffered_bytes >= MAX_BUFFERED_BYTES:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered lines as the next part (a new object; nothing is rewritten)."""
        if not self._buffer:
            return
        part = self.path.parent / f"{self.path.name}.part-{self._next_part:06d}"
        part.write_text("".join(self._buffer))
        self._next_part += 1
        self._buffer, self._buffered_bytes = [], 0


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

    def flush(self) -> None:
        self.log.flush()


class MetricsLog:
    def __init__(self, workdir: str, *, resume_step: int, total_steps: int):
        # Imported here: it loads TensorFlow, which readers of the logs (`read_lines`) skip.
        from clu import metric_writers

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

    def flush(self) -> None:
        """Makes the lines logged so far durable; called when a checkpoint is saved."""
        self.log.flush()

    def close(self) -> None:
        try:
            self.log.flush()
        finally:
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()


def _plain(value):
    """Python int/float/bool from numpy or jax scalars (json cannot take those)."""
    if hasattr(value, "item"):
        value = value.item()
    return value
