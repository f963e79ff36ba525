"""Checkpoints of the train state with orbax, and the run's identity in its workdir.

A checkpoint holds the whole train state (params, optimizer state, EMA, BatchNorm statistics,
non-finite counters) and its step, which is all the data position there is: the input
pipeline is a pure function of the step. What makes restarts safe:

- Orbax writes each checkpoint to a temporary directory and commits it when complete, so a
  process killed mid-write leaves nothing that looks like a checkpoint; leftover temporary
  directories are removed at start-up.
- Beside the state, each checkpoint stores a checksum of every array. A checkpoint that does
  not restore (truncated or missing files) or whose arrays do not match their checksums (flipped
  bytes) is moved to DIR/unusable_checkpoints/ with a warning naming it, and the newest
  healthy one is used instead.
- Old checkpoints are deleted only after a newer one is known to be complete. A save that
  fails (disk full, permissions) stops training with `CheckpointSaveError`, which names the
  last complete checkpoint; nothing older is touched.
"""

import json
import logging
import signal
import uuid

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

import distributed

# Config fields that define what a run computes: resuming with another value would silently
# continue a different experiment, so a mismatch is refused. Anything else may change between
# restarts, including the number of processes and devices (elastic resume).
IDENTITY_FIELDS = (
    "model.name",
    "data.name",
    "data.num_classes",
    "data.train_resolution",
    "global_batch_size",
    "seed",
    "grad_accum_steps",
    "optimizer.name",
)

UNUSABLE_DIR = "unusable_checkpoints"


class RunMismatchError(ValueError):
    """The workdir holds a run with a different configuration."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; training stops with the last complete one intact."""


def _get(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _write_atomically(path: epath.Path, text: str) -> None:
    """Readers (and a process killed mid-write) see the old file or the new, never a part."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def check_or_write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes DIR/config.json for a new run; for an existing one, refuses a config whose
    identity fields differ (nothing is overwritten then). Every process checks; process 0
    writes only after all have read."""
    path = epath.Path(workdir) / "config.json"
    current = json.loads(config.to_json_best_effort())
    saved = json.loads(path.read_text()) if path.exists() else None
    distributed.wait_for_all_processes("config.json read")
    if saved is not None:
        diffs = [
            f"{field}: saved {_get(saved, field)!r}, now {_get(current, field)!r}"
            for field in IDENTITY_FIELDS
            if _get(saved, field) != _get(current, field)
        ]
        if diffs:
            raise RunMismatchError(
                f"The workdir {workdir} holds a different run ({'; '.join(diffs)}); resume it "
                "with its own config or choose a new --workdir."
            )
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(current, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Checksums: a flipped byte in a checkpoint must not become a silently different run.
# ----------------------------------------------------------------------------------------------


def _as_uint32(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype.itemsize < 4:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words.


def _mix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


@jax.jit
def _array_checksums(leaves: list) -> list:
    """Per array: sum over its 32-bit words w_i of mix(w_i + i * 0x9E3779B9), modulo 2**32.
    Exact integer arithmetic, so the value does not depend on the sharding or the order of the
    reduction, and a changed bit or two swapped words change it."""

    def checksum(x):
        words = _as_uint32(jnp.asarray(x)).ravel()
        positions = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
        return jnp.sum(_mix(words + positions), dtype=jnp.uint32)

    return [checksum(x) for x in leaves]


def checksums(state) -> dict[str, int]:
    """{'/'-joined path of each array: checksum} for a pytree of (possibly sharded) arrays."""
    paths, leaves = zip(*jax.tree_util.tree_leaves_with_path(state), strict=True)
    values = jax.device_get(_array_checksums(list(leaves)))
    return {jax.tree_util.keystr(p): int(v) for p, v in zip(paths, values, strict=True)}


# ----------------------------------------------------------------------------------------------
# The checkpointer.
# ----------------------------------------------------------------------------------------------


class Checkpointer:
    """Async orbax checkpoints of the train state every `every_steps`, keeping the last `keep`.

    The loop alone decides when to save (`due`, the end of the run, a preemption): orbax's own
    save policy, which would also save the first step of a run, is bypassed with force=True,
    and its deletion of old checkpoints is replaced by `_prune`, which runs only once the newer
    save is complete.
    """

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.every_steps = every_steps
        self.keep = keep
        self.workdir = epath.Path(workdir)
        self.directory = self.workdir / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # Left by a process killed while saving.
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = False
        self._in_flight: int | None = None  # Step of a save that may not be complete yet.

    # -- Restoring -----------------------------------------------------------------------------

    def restore_latest(self, abstract_state):
        """The newest healthy checkpoint restored into `abstract_state` (ShapeDtypeStructs with
        shardings), or None for a fresh run. Unusable newer ones are moved aside."""
        unusable = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            state, problem = self._try_restore(step, abstract_state)
            if problem is None:
                self._move_aside(unusable)
                return state
            logging.warning("Checkpoint %s is unusable (%s); trying an older one.",
                            self.directory / str(step), problem)
            unusable.append(step)
        if unusable:
            raise RuntimeError(
                f"No checkpoint in {self.directory} could be restored (steps {unusable}; see the "
                "warnings above). Move the directory away to start afresh."
            )
        return None

    def _try_restore(self, step: int, abstract_state):
        """(state, None) or (None, what is wrong). All processes reach the same verdict."""
        state, saved_sums, problem = None, None, None
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    checksums=ocp.args.JsonRestore(),
                ),
            )
            state, saved_sums = restored.state, restored.checksums
        except Exception as error:  # noqa: BLE001 - any failure means "unusable".
            problem = f"{type(error).__name__}: {str(error)[:300]}"
        if not distributed.all_processes_agree(problem is None):
            return None, problem or "it failed to restore on another process"
        actual = checksums(state)
        wrong = sorted(k for k in actual if actual[k] != saved_sums.get(k))
        if wrong:
            return None, f"checksum mismatch in {len(wrong)} arrays: {', '.join(wrong[:5])}"
        return state, None

    def _move_aside(self, steps: list[int]) -> None:
        """Moves unusable checkpoints to DIR/unusable_checkpoints/ (kept for inspection), so
        the run can write those steps again."""
        if not steps:
            return
        if jax.process_index() == 0:
            target = self.workdir / UNUSABLE_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / f"{step}.{uuid.uuid4().hex[:8]}"
                (self.directory / str(step)).rename(destination)
                logging.warning("Moved unusable checkpoint %s to %s.",
                                self.directory / str(step), destination)
        distributed.wait_for_all_processes("unusable checkpoints moved")
        self.manager.reload()

    # -- Saving --------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state) -> None:
        """Starts an (async) save of `state` as checkpoint `step`, once the previous save is
        complete and old checkpoints beyond `keep` are pruned."""
        self._finish_previous()
        sums = checksums(state)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), checksums=ocp.args.JsonSave(sums)
                ),
                force=True,
            )
        except Exception as error:
            raise self._save_error(step, error) from error
        self._in_flight = step

    def _finish_previous(self) -> None:
        """Waits for the save in flight; raises CheckpointSaveError if it failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            raise self._save_error(self._in_flight, error) from error
        self.manager.reload()  # Steps as committed on disk, not as orbax's cache says.
        if self._in_flight is not None and self._in_flight not in self.manager.all_steps():
            raise self._save_error(self._in_flight, RuntimeError("it was not committed"))
        self._in_flight = None
        self._prune()

    def _prune(self) -> None:
        """Deletes all but the newest `keep` checkpoints; called only with no save in flight,
        so every remaining checkpoint is complete."""
        for step in sorted(self.manager.all_steps())[: -self.keep]:
            self.manager.delete(step)

    def _save_error(self, step, error: Exception) -> CheckpointSaveError:
        complete = [s for s in self.manager.all_steps() if s != step]
        last = f"checkpoint {max(complete)}" if complete else "no checkpoint"
        return CheckpointSaveError(
            f"Saving checkpoint {step} to {self.directory} failed ({type(error).__name__}: "
            f"{str(error)[:300]}). Training stopped; the last complete checkpoint is {last}. "
            "Free disk space or fix the directory's permissions, then rerun the same command "
            "to resume from it."
        )

    # -- Preemption ----------------------------------------------------------------------------

    def watch_sigterm(self) -> None:
        """Treat SIGTERM (sent by TPU VMs before maintenance) as a preemption notice. With
        several processes JAX's preemption service handles the signal instead and makes all
        processes agree on the step (`preempted`), so no handler is installed then."""
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_sigterm", True))

    def preempted(self, step: int) -> bool:
        """Whether to checkpoint now and exit: a local SIGTERM, or JAX's multi-host
        preemption sync point (all hosts agree on the step)."""
        return self._sigterm or self.manager.reached_preemption(step)

    def close(self) -> None:
        """Completes the save in flight (raising CheckpointSaveError if it failed)."""
        try:
            self._finish_previous()
        finally:
            self.manager.close()

