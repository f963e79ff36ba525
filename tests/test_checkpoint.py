"""The checkpointer's guarantees in one process: checksums catch changed bytes, unusable
checkpoints are moved aside for an older one, and nothing is pruned before a newer save is
complete. tests/test_reliability.py injects the same faults into real train.py processes."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import checkpoint


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
