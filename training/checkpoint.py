"""Checkpoints of the train state with orbax, and the run's identity in its workdir.

A checkpoint holds the whole train state (params, optimizer state, EMA, BatchNorm statistics,
non-finite counters) and its step, which is all the data position there is: the input
pipeline is a pure function of the step. What makes restarts safe:

- Orbax writes each checkpoint to a temporary directory and commits it when complete, so a
  process killed mid-write leaves nothing that looks like a checkpoint; leftover temporary
  directories are removed at start-up.
- Beside the state, each checkpoint stores a checksum of every array, and tensorstore's OCDBT
  manifest records the byte ranges of its data files. A checkpoint is moved to
  DIR/unusable_checkpoints/ (with a warning naming it) only on evidence that it is damaged:
  arrays that do not match their checksums, missing or truncated files, unreadable metadata.
  The newest healthy one is used instead.
- Any other restore failure never rolls the run back: transient storage errors (I/O errors,
  timeouts, an unavailable server) are retried with exponential backoff, and when they persist,
  or for anything else (out of memory, shapes changed by another config), the run stops with
  `CheckpointRestoreError`, one sentence naming the checkpoint, and every checkpoint in place.
- Old checkpoints are deleted only after a newer one is known to be complete, by orbax's
  background deleter, so the training loop does not wait for the storage. A save that fails
  (disk full, permissions) stops training with `CheckpointSaveError`, which names the last
  complete checkpoint; nothing older is touched.
"""

import errno
import json
import logging
import re
import signal
import time
import uuid

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from training import distributed

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

# A restore that fails transiently is tried RESTORE_ATTEMPTS times in all, waiting
# RESTORE_FIRST_RETRY_S, then twice as long before each further try: 2 + 4 + 8 = 14 s. The
# storage clients (tensorstore, etils) already retry single requests, so what reaches us is an
# outage of seconds (a file server failing over, a throttled bucket); one that outlasts this
# stops the run, which the scheduler restarts, rather than holding every host of a pod.
RESTORE_ATTEMPTS = 4
RESTORE_FIRST_RETRY_S = 2.0


class RunMismatchError(ValueError):
    """The workdir holds a run with a different configuration."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; training stops with the last complete one intact."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint could be restored; training stops with every checkpoint in place."""


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
# Why a restore failed: damage (move the checkpoint aside), transient (retry) or anything else.
# ----------------------------------------------------------------------------------------------

DAMAGED, TRANSIENT, FATAL = "damaged", "transient", "fatal"

# Storage errors that a later attempt may not meet (server, network or file-server hiccups).
_TRANSIENT_ERRNOS = frozenset({
    errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ESTALE, errno.ETIMEDOUT,
    errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ENETDOWN, errno.ENETRESET,
    errno.ENETUNREACH, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENOLINK, errno.ECOMM,
    errno.EREMOTEIO,
})
# Tensorstore (orbax's array storage) raises ValueError("CODE: ...") with an absl status code;
# a failed system call appends " [OS error N: ...]", HTTP statuses map as in tensorstore's
# internal/http/http_response.cc (404 -> NOT_FOUND, 416 -> OUT_OF_RANGE; 408, 429, 5xx ->
# UNAVAILABLE). DATA_LOSS: a file does not decode; OUT_OF_RANGE: a read past a truncated end.
_STATUS = re.compile(r"\b(DATA_LOSS|NOT_FOUND|OUT_OF_RANGE|UNAVAILABLE|DEADLINE_EXCEEDED|"
                     r"ABORTED): ")
_STATUS_VERDICT = {"DATA_LOSS": DAMAGED, "NOT_FOUND": DAMAGED, "OUT_OF_RANGE": DAMAGED,
                   "UNAVAILABLE": TRANSIENT, "DEADLINE_EXCEEDED": TRANSIENT, "ABORTED": TRANSIENT}
_OS_ERROR = re.compile(r"\[OS error (\d+)")


def _errno_verdict(code: int | None) -> str:
    """An OSError without a code is a storage client's own (an HTTP failure): retried."""
    if code == errno.ENOENT:
        return DAMAGED  # A file of a committed checkpoint is missing.
    return TRANSIENT if code is None or code in _TRANSIENT_ERRNOS else FATAL


def _own_verdict(error: BaseException) -> str | None:
    """What this exception alone shows, or None if it shows nothing specific."""
    if isinstance(error, FileNotFoundError):
        return DAMAGED
    if isinstance(error, (TimeoutError, ConnectionError)):
        return TRANSIENT
    if isinstance(error, OSError):
        return _errno_verdict(error.errno)
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
        return DAMAGED  # A metadata or checksum file no longer parses.
    message = str(error)
    if isinstance(error, KeyError) and "was not found in the checkpoint" in message:
        return DAMAGED  # Orbax: an item's directory is missing.
    if os_error := _OS_ERROR.search(message):
        return _errno_verdict(int(os_error.group(1)))
    if status := _STATUS.search(message):
        return _STATUS_VERDICT[status.group(1)]
    return None


def restore_failure_verdict(error: BaseException) -> str:
    """DAMAGED, TRANSIENT or FATAL for an exception raised by a restore: the first specific
    verdict along its chain of causes (orbax wraps tensorstore's errors), else FATAL, which
    covers out of memory and shapes that no longer match."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (verdict := _own_verdict(error)) is not None:
            return verdict
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return FATAL


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _agreed(verdict: str | None) -> str:
    """The most cautious verdict of any process: stop, else retry, else move aside (a
    collective: every process calls it, also one whose restore succeeded)."""
    for cautious in (FATAL, TRANSIENT):
        if not distributed.all_processes_agree(verdict != cautious):
            return cautious
    return DAMAGED


# ----------------------------------------------------------------------------------------------
# The checkpointer.
# ----------------------------------------------------------------------------------------------


class Checkpointer:
    """Async orbax checkpoints of the train state every `every_steps`, keeping the last `keep`.

    The loop alone decides when to save (`due`, the end of the run, a preemption): orbax's own
    save policy, which would also save the first step of a run, is bypassed with force=True,
    and its choice of old checkpoints to delete is replaced by `_prune`, which runs only once
    the newer save is complete; orbax's background deleter then deletes them off the loop.
    """

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True,
                 restore_attempts: int = RESTORE_ATTEMPTS,
                 first_retry_s: float = RESTORE_FIRST_RETRY_S):
        self.every_steps = every_steps
        self.keep = keep
        self.restore_attempts = restore_attempts
        self.first_retry_s = first_retry_s
        self.workdir = epath.Path(workdir)
        self.directory = self.workdir / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # Left by a process killed while saving.
            # `delete` only queues the step for a thread (process 0's), joined by close().
            enable_background_delete=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = False
        self._in_flight: int | None = None  # Step of a save that may not be complete yet.
        # Queued for deletion; still listed by the storage until the deleter is done with them.
        self._deleting: set[int] = set()

    # -- Restoring -----------------------------------------------------------------------------

    def restore_latest(self, abstract_state):
        """The newest healthy checkpoint restored into `abstract_state` (ShapeDtypeStructs with
        shardings), or None for a fresh run. Newer ones shown to be damaged are moved aside;
        any other failure raises CheckpointRestoreError and leaves every checkpoint in place."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            state, damage = self._restore_with_retries(step, abstract_state)
            if damage is None:
                self._move_aside(damaged)
                return state
            logging.warning("Checkpoint %s is unusable (%s); trying an older one.",
                            self.directory / str(step), damage)
            damaged.append(step)
        if damaged:
            raise CheckpointRestoreError(
                f"No checkpoint in {self.directory} could be restored (steps {damaged} are "
                "damaged; see the warnings above), so none was moved: move the directory away "
                "to start afresh."
            )
        return None

    def _restore_with_retries(self, step: int, abstract_state):
        """(state, None), or (None, the damage found); raises CheckpointRestoreError when the
        failure is transient on every attempt, or is neither damage nor transient."""
        for attempt in range(1, self.restore_attempts + 1):
            state, problem, verdict = self._try_restore(step, abstract_state)
            if verdict != TRANSIENT or attempt == self.restore_attempts:
                break
            delay = self.first_retry_s * 2 ** (attempt - 1)
            logging.warning("Restoring checkpoint %s failed (%s); retrying in %.3g s (attempt "
                            "%d of %d).", self.directory / str(step), problem, delay, attempt,
                            self.restore_attempts)
            time.sleep(delay)
        if verdict is None or verdict == DAMAGED:
            return state, problem
        raise CheckpointRestoreError(self._restore_error(step, problem, verdict))

    def _try_restore(self, step: int, abstract_state):
        """(state, None, None), or (None, what is wrong, DAMAGED | TRANSIENT | FATAL). All
        processes reach the same verdict."""
        state, saved_sums, problem, verdict = None, None, None, None
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    checksums=ocp.args.JsonRestore(),
                ),
            )
            state, saved_sums = restored.state, restored.checksums
        except Exception as error:
            problem, verdict = _one_line(error), restore_failure_verdict(error)
        if not distributed.all_processes_agree(verdict is None):
            return None, problem or "it failed to restore on another process", _agreed(verdict)
        actual = checksums(state)
        wrong = sorted(k for k in actual if actual[k] != saved_sums.get(k))
        if wrong:
            problem = f"checksum mismatch in {len(wrong)} arrays: {', '.join(wrong[:5])}"
            return None, problem, DAMAGED
        return state, None, None

    def _restore_error(self, step: int, problem: str, verdict: str) -> str:
        where = f"Checkpoint {step} at {self.directory / str(step)}"
        if verdict == TRANSIENT:
            waited = self.first_retry_s * (2 ** (self.restore_attempts - 1) - 1)
            return (f"{where} could not be read in {self.restore_attempts} attempts over "
                    f"{waited:.3g} s of backoff ({problem}), so training stopped with every "
                    "checkpoint in place: rerun the same command once the storage is reachable.")
        return (f"{where} could not be restored ({problem}); this is no sign of damage, so "
                "training stopped with every checkpoint in place: fix the cause (free memory, "
                "or resume with the run's own config) and rerun the same command.")

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
        """Queues all but the newest `keep` checkpoints for deletion in the background; called
        only with no save in flight, so every remaining checkpoint is complete."""
        listed = self.manager.all_steps()
        self._deleting &= set(listed)  # Those no longer listed are gone.
        for step in sorted(s for s in listed if s not in self._deleting)[: -self.keep]:
            self.manager.delete(step)
            self._deleting.add(step)

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

