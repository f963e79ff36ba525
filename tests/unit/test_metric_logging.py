"""metrics.jsonl and example_indices.jsonl: one logical file, written without rewrites on object
stores, truncated on resume, read back exactly by every reader."""

import fnmatch
import json

import pytest

from scaling import runs
from training import metric_logging
from training.metric_logging import JsonlLog, read_lines


class ObjectStore:
    """An in-memory stand-in for a bucket with an object store's costs: an object is only ever
    written whole, so an append or a rename rewrites it. Counts the bytes written per object,
    records every write over an existing object and every object read."""

    def __init__(self):
        self.objects: dict[str, str] = {}
        self.bytes_written: dict[str, int] = {}
        self.rewrites: list[str] = []
        self.reads: list[str] = []

    def put(self, key: str, text: str) -> None:
        if key in self.objects:
            self.rewrites.append(key)
        self.objects[key] = text
        self.bytes_written[key] = self.bytes_written.get(key, 0) + len(text.encode())

    def total_bytes_written(self) -> int:
        return sum(self.bytes_written.values())


class _AppendingWriter:
    """What `open(path, "a")` costs on an object store: the old object and the new text are
    uploaded again as one object when the file is closed."""

    def __init__(self, path):
        self.path, self.text = path, ""

    def write(self, text: str) -> None:
        self.text += text

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        old = self.path.store.objects.get(self.path.key, "")
        self.path.store.put(self.path.key, old + self.text)


class ObjectPath:
    """The part of epath.Path's interface that the logs use, over an `ObjectStore`."""

    def __init__(self, store: ObjectStore, key: str):
        self.store, self.key = store, key.strip("/")

    def __truediv__(self, name: str) -> "ObjectPath":
        return ObjectPath(self.store, f"{self.key}/{name}")

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and (other.store, other.key) == (self.store, self.key)

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return f"mem://{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.store, self.key.rsplit("/", 1)[0])

    def exists(self) -> bool:
        return self.key in self.store.objects

    def glob(self, pattern: str) -> list["ObjectPath"]:
        prefix = self.key + "/"
        return [ObjectPath(self.store, key) for key in self.store.objects
                if key.startswith(prefix) and fnmatch.fnmatchcase(key[len(prefix):], pattern)]

    def read_text(self) -> str:
        self.store.reads.append(self.key)
        return self.store.objects[self.key]

    def write_text(self, text: str) -> None:
        self.store.put(self.key, text)

    def open(self, mode: str):
        assert mode == "a", mode
        return _AppendingWriter(self)

    def replace(self, target: "ObjectPath") -> None:
        target.write_text(self.store.objects.pop(self.key))

    def unlink(self) -> None:
        del self.store.objects[self.key]


def bucket_log(store: ObjectStore, *, resume_step: int = 0, **kwargs) -> JsonlLog:
    return JsonlLog(ObjectPath(store, "bucket/run") / "metrics.jsonl",
                    resume_step=resume_step, is_writer=True, **kwargs)


def record(step: int) -> dict:
    return {"step": step, "train_loss": 1 / step, "lr": 0.1}


def lines(steps) -> list[str]:
    return [json.dumps(record(s)) for s in steps]


def log_steps(log: JsonlLog, steps, *, checkpoint_every: int) -> None:
    """What train.py does: a line per step, a flush at every checkpoint."""
    for step in steps:
        log.append(record(step))
        if step % checkpoint_every == 0:
            log.flush()


def test_object_store_log_writes_each_byte_once_and_reads_back_exactly():
    store = ObjectStore()
    log = bucket_log(store)
    assert log.in_parts  # A URL is an object store.
    log_steps(log, range(1, 501), checkpoint_every=50)
    log.flush()  # At exit.
    expected = lines(range(1, 501))
    assert store.rewrites == []
    assert store.total_bytes_written() == sum(len(line) + 1 for line in expected)  # O(N)
    assert len(store.objects) == 10
    assert read_lines(log.path) == expected


def test_the_stand_in_counts_the_cost_of_appending_to_an_object():
    """Appending line by line, as on a local disk, rewrites the object at every line."""
    store = ObjectStore()
    log = bucket_log(store, in_parts=False)
    log_steps(log, range(1, 101), checkpoint_every=50)
    assert len(store.rewrites) == 99
    assert store.total_bytes_written() > 40 * sum(len(line) + 1 for line in lines(range(1, 101)))
    assert read_lines(log.path) == lines(range(1, 101))


def test_big_buffers_are_written_before_the_checkpoint(monkeypatch):
    monkeypatch.setattr(metric_logging, "MAX_BUFFERED_BYTES", 200)
    store = ObjectStore()
    log = bucket_log(store)
    log_steps(log, range(1, 21), checkpoint_every=1000)
    assert len(store.objects) == 4 and store.rewrites == []  # ~45-byte lines, 5 a part
    log.flush()
    assert read_lines(log.path) == lines(range(1, 21))


def test_resume_drops_lines_past_the_checkpoint_rewriting_only_the_newest_parts():
    store = ObjectStore()
    log = bucket_log(store)
    log_steps(log, range(1, 36), checkpoint_every=10)
    log.flush()  # A crash after step 35: lines 31 to 35 are written at exit, past checkpoint 30.
    written = dict(store.bytes_written)

    log = bucket_log(store, resume_step=30)
    part = "bucket/run/metrics.jsonl.part-{:06d}".format
    assert store.reads == [part(3), part(2)]  # The newest parts only, up to a clean one.
    assert store.bytes_written == written and store.rewrites == []  # part-000003 deleted
    assert read_lines(log.path) == lines(range(1, 31))
    log_steps(log, range(31, 46), checkpoint_every=10)
    log.flush()  # Lines 41 to 45 past checkpoint 40 again.
    assert read_lines(log.path) == lines(range(1, 46))

    log = bucket_log(store, resume_step=43)  # Keeps 41 to 43 of the newest part only.
    assert store.rewrites == [part(4)]
    assert read_lines(log.path) == lines(range(1, 44))
    log_steps(log, range(44, 51), checkpoint_every=10)
    log.flush()
    assert read_lines(log.path) == lines(range(1, 51))
    assert sorted(store.objects) == [part(i) for i in range(6)]


def test_local_log_is_one_file_appended_line_by_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLog(path, resume_step=0, is_writer=True)
    assert not log.in_parts
    log_steps(log, range(1, 8), checkpoint_every=4)
    log.append(record(8))  # Visible at once, without a flush.
    assert path.read_text().splitlines() == lines(range(1, 9))
    with open(path, "a") as f:
        f.write('{"step": 9, "train_lo')  # Cut short by a kill.
    JsonlLog(path, resume_step=6, is_writer=True)
    assert path.read_text() == "".join(f"{line}\n" for line in lines(range(1, 7)))
    assert read_lines(path) == lines(range(1, 7)) and list(tmp_path.iterdir()) == [path]


def test_only_the_writer_writes(tmp_path):
    log = JsonlLog(tmp_path / "metrics.jsonl", resume_step=0, is_writer=False, in_parts=True)
    log_steps(log, range(1, 5), checkpoint_every=2)
    log.flush()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="metrics.jsonl is missing"):
        read_lines(tmp_path / "metrics.jsonl")


def test_scaling_reads_metrics_written_in_parts(tmp_path):
    log = JsonlLog(tmp_path / "metrics.jsonl", resume_step=0, is_writer=True, in_parts=True)
    log_steps(log, range(1, 31), checkpoint_every=10)
    log.flush()
    assert not (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "metrics.jsonl.part-000001.bak").write_text("{not json\n")  # Not a part.
    assert runs.read_metrics(tmp_path / "metrics.jsonl") == [record(s) for s in range(1, 31)]
    (tmp_path / "metrics.jsonl.part-000003").write_text("{not json\n")
    with pytest.raises(runs.RunsError, match=r"metrics.jsonl:31 is not valid JSON"):
        runs.read_metrics(tmp_path / "metrics.jsonl")
