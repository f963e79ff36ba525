"""The checkpointer's guarantees in one process: checksums catch changed bytes, damaged
checkpoints (and only those) are moved aside for an older one, transient restore failures are
retried and other ones stop the run with every checkpoint in place, and nothing is deleted
(in the background) before a newer save is complete. tests/integration/test_reliability.py injects
faults into real train.py processes."""

import errno
import gc
import json
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training import checkpoint


def make_state(value: float):
    return {
        "params": {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.arange(3.0)},
        "step": jnp.array(int(value), jnp.int32),
        "half": jnp.full((5,), value, jnp.bfloat16),
        "flag": jnp.array(True),
    }


def abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_checksums_see_every_changed_or_moved_bit():
    state = make_state(1.0)
    base = checkpoint.checksums(state)
    assert set(base) == {"['flag']", "['half']", "['params']['b']", "['params']['w']",
                         "['step']"}
    w = np.asarray(state["params"]["w"]).copy()
    flipped = w.view(np.uint32)
    flipped[2, 1] ^= 1  # One bit of one float.
    changed = checkpoint.checksums({**state, "params": {**state["params"], "w": w}})
    assert changed["['params']['w']"] != base["['params']['w']"]
    assert {k: v for k, v in changed.items() if k != "['params']['w']"} == {
        k: v for k, v in base.items() if k != "['params']['w']"}
    b = np.asarray(state["params"]["b"])[::-1]  # Same values, other positions.
    swapped = checkpoint.checksums({**state, "params": {**state["params"], "b": b}})
    assert swapped["['params']['b']"] != base["['params']['b']"]


def saved_checkpointer(workdir, steps, keep=3):
    ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=keep, async_save=True)
    for step in steps:
        ckpt.save(step, make_state(float(step)))
    ckpt.close()
    return checkpoint.Checkpointer(workdir, every_steps=1, keep=keep)


def test_checksum_mismatch_is_moved_aside_and_the_older_checkpoint_restored(tmp_path, caplog):
    ckpt = saved_checkpointer(tmp_path, [1, 2])
    sums_file = next((tmp_path / "checkpoints" / "2" / "checksums").glob("*"))
    sums = json.loads(sums_file.read_text())
    sums["['params']['w']"] += 1  # As if the stored array had changed.
    sums_file.write_text(json.dumps(sums))

    restored = ckpt.restore_latest(abstract(make_state(0.0)))
    assert int(restored["step"]) == 1
    assert "checksum mismatch in 1 arrays: ['params']['w']" in caplog.text
    assert ckpt.manager.all_steps() == [1]
    assert [p.name.split(".")[0] for p in (tmp_path / "unusable_checkpoints").iterdir()] == ["2"]
    ckpt.save(2, make_state(2.0))  # The step can be written again.
    ckpt.close()


def test_unparseable_metadata_is_damage_and_moved_aside(tmp_path):
    ckpt = saved_checkpointer(tmp_path, [1, 2])
    (tmp_path / "checkpoints" / "2" / "state" / "_METADATA").write_text('{"tree_metadata": ')
    assert int(ckpt.restore_latest(abstract(make_state(0.0)))["step"]) == 1
    assert [p.name.split(".")[0] for p in (tmp_path / "unusable_checkpoints").iterdir()] == ["2"]


def test_no_restorable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
    ckpt = saved_checkpointer(tmp_path, [1])
    for path in (tmp_path / "checkpoints" / "1").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"No checkpoint .* could be restored \(steps \[1\]"):
        ckpt.restore_latest(abstract(make_state(0.0)))
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_old_checkpoints_are_pruned_only_after_a_newer_one_is_complete(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, every_steps=1, keep=1, async_save=True)
    committed = lambda: sorted(int(p.name) for p in Path(tmp_path, "checkpoints").iterdir()
                               if p.name.isdigit())
    ckpt.save(1, make_state(1.0))
    ckpt.save(2, make_state(2.0))  # 1 is complete now, 2 may still be in flight.
    assert 1 in committed()
    ckpt.close()
    assert committed() == [2]


def test_a_failed_save_names_the_last_complete_checkpoint(tmp_path, monkeypatch):
    ckpt = saved_checkpointer(tmp_path, [4])

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", fail)
    with pytest.raises(checkpoint.CheckpointSaveError,
                       match=r"Saving checkpoint 8 .* No space left on device.*"
                             r"the last complete checkpoint is checkpoint 4"):
        ckpt.save(8, make_state(8.0))
    assert ckpt.manager.all_steps() == [4]


def test_config_identity_is_checked_and_written_atomically(tmp_path):
    from configs import quickstart

    config = quickstart.get_config()
    checkpoint.check_or_write_config(str(tmp_path), config)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # No temporary file left.
    config.global_batch_size = 64
    with pytest.raises(checkpoint.RunMismatchError, match="global_batch_size: saved 128, now 64"):
        checkpoint.check_or_write_config(str(tmp_path), config)


def fail_restores(ckpt, monkeypatch, times):
    """Makes the next `times` restores of `ckpt` fail with an I/O error, as a storage hiccup
    would; returns the list of attempts."""
    real, attempts = ckpt.manager.restore, []

    def restore(*args, **kwargs):
        attempts.append(args[0])
        if len(attempts) <= times:
            raise OSError(errno.EIO, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt.manager, "restore", restore)
    return attempts


def committed_and_moved(workdir):
    unusable = Path(workdir, checkpoint.UNUSABLE_DIR)
    return (sorted(int(p.name) for p in Path(workdir, "checkpoints").iterdir()
                   if p.name.isdigit()),
            sorted(p.name for p in unusable.iterdir()) if unusable.exists() else [])


def test_a_restore_that_fails_once_transiently_resumes_from_the_newest(tmp_path, monkeypatch,
                                                                       caplog):
    ckpt = saved_checkpointer(tmp_path, [1, 2])
    ckpt.first_retry_s = 0.01
    attempts = fail_restores(ckpt, monkeypatch, times=1)

    restored = ckpt.restore_latest(abstract(make_state(0.0)))
    assert int(restored["step"]) == 2
    assert attempts == [2, 2]
    assert "Input/output error); retrying in 0.01 s (attempt 1 of 4)" in caplog.text
    assert committed_and_moved(tmp_path) == ([1, 2], [])  # Nothing quarantined.


def test_a_restore_that_fails_persistently_exits_2_and_leaves_every_checkpoint(
        tmp_path, monkeypatch, capsys):
    import train  # Its main() maps the error to the exit status.

    ckpt = saved_checkpointer(tmp_path, [1, 2])
    ckpt.first_retry_s = 0.01
    attempts = fail_restores(ckpt, monkeypatch, times=10**9)
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir, dry_run, topology:
                        ckpt.restore_latest(abstract(make_state(0.0))))
    for flag, value in [("_CONFIG", {}), ("_WORKDIR", str(tmp_path)), ("_DRY_RUN", False),
                        ("_TOPOLOGY", None)]:
        monkeypatch.setattr(train, flag, type("Flag", (), {"value": value}))

    with pytest.raises(SystemExit) as stop:
        train.main([])
    assert stop.value.code == 2
    assert attempts == [2] * checkpoint.RESTORE_ATTEMPTS  # Never an older one.
    error = capsys.readouterr().err
    assert error.startswith(f"error: Checkpoint 2 at {tmp_path / 'checkpoints' / '2'} could "
                            "not be read in 4 attempts over 0.07 s of backoff (OSError: [Errno "
                            "5] Input/output error), so training stopped with every checkpoint")
    assert error.endswith(".\n") and ". " not in error and error.count("\n") == 1  # 1 sentence.
    assert committed_and_moved(tmp_path) == ([1, 2], [])


# Orbax leaves the reads of the other arrays un-awaited when one fails; Python reports them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_changed_shape_stops_instead_of_rolling_back(tmp_path):
    ckpt = saved_checkpointer(tmp_path, [1, 2])
    other = make_state(0.0)
    other["params"]["w"] = jnp.zeros((5, 3))
    with pytest.raises(checkpoint.CheckpointRestoreError,
                       match=r"Checkpoint 2 at .* could not be restored \(ValueError: Requested "
                             r"shape: \(5, 3\) is not compatible .*no sign of damage"):
        ckpt.restore_latest(abstract(other))
    assert committed_and_moved(tmp_path) == ([1, 2], [])
    gc.collect()  # Reports those reads here, where the mark above ignores them.


@pytest.mark.parametrize("error, verdict", [
    (OSError(errno.EIO, "Input/output error"), checkpoint.TRANSIENT),
    (TimeoutError("read timed out"), checkpoint.TRANSIENT),
    (ValueError("UNAVAILABLE: Error reading gs://b/c/d: HTTP 503"), checkpoint.TRANSIENT),
    (ValueError('NOT_FOUND: Error reading "x" [OS error 116: Stale file handle]'),
     checkpoint.TRANSIENT),  # The OS error is the more specific cause.
    (ValueError('OUT_OF_RANGE: Error reading "params.w/.zarray" in OCDBT database'),
     checkpoint.DAMAGED),
    (ValueError("DATA_LOSS: Error decoding local file"), checkpoint.DAMAGED),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), checkpoint.DAMAGED),
    (json.JSONDecodeError("Expecting value", "\0", 0), checkpoint.DAMAGED),
    (KeyError('Item "state" was not found in the checkpoint.'), checkpoint.DAMAGED),
    (MemoryError(), checkpoint.FATAL),
    (ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes"), checkpoint.FATAL),
    (PermissionError(errno.EACCES, "Permission denied"), checkpoint.FATAL),
])
def test_restore_failures_are_told_apart(error, verdict):
    assert checkpoint.restore_failure_verdict(error) == verdict
    try:  # Orbax wraps tensorstore's errors.
        raise Exception("Encountered error while reading array index") from error
    except Exception as wrapped:
        assert checkpoint.restore_failure_verdict(wrapped) == verdict


def test_old_checkpoints_are_deleted_in_the_background_after_a_newer_one_committed(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path, every_steps=1, keep=1, async_save=True)
    # Orbax's deleter thread (enable_background_delete); each deletion waits for `release`.
    deleter = ckpt.manager._checkpoint_deleter._standard_deleter
    real_delete, release, deletions = deleter.delete, threading.Event(), []

    def delete(step):
        newest_committed = committed_and_moved(tmp_path)[0][-1]  # Renamed from tmp when done.
        deletions.append((step, threading.current_thread() is threading.main_thread(),
                          newest_committed))
        release.wait(timeout=60)
        real_delete(step)

    deleter.delete = delete
    for step in (1, 2, 3):
        ckpt.save(step, make_state(float(step)))
    # Saving 3 queued 1 for deletion once 2 had committed; the loop did not wait for it.
    assert (tmp_path / "checkpoints" / "1").is_dir()
    release.set()
    ckpt.close()
    assert committed_and_moved(tmp_path) == ([3], [])
    # Off the main thread, each after a newer checkpoint committed.
    assert deletions == [(1, False, 2), (2, False, 3)]
