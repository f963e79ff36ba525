"""Checkpoints of the train state with orbax, and the run's identity in its workdir.

A checkpoint holds the whole train state (params, optimizer state, EMA, BatchNorm statistics,
non-finite counters) and its step, which is all the data position there is: the input
pipeline is a pure function of the step. Orbax writes each checkpoint to a temporary directory
and renames it when complete, so a process killed mid-write leaves no checkpoint that
`latest_step` would pick; a checkpoint that fails to restore is skipped with a warning naming
it, in favour of the newest one that restores.
"""

import json
import logging
import signal

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

# Config fields that define what a run computes: resuming with another value would silently
# continue a different experiment, so a mismatch is refused.
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


class RunMismatchError(ValueError):
    """The workdir holds a run with a different configuration."""


def _get(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_or_write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes DIR/config.json for a new run; for an existing one, refuses a config whose
    identity fields differ (nothing is overwritten then)."""
    path = epath.Path(workdir) / "config.json"
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        saved = json.loads(path.read_text())
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
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


class Checkpointer:
    """Async orbax checkpoints of the train state every `every_steps`, keeping the last `keep`.

    The loop alone decides when to save (`due`, the end of the run, a preemption): orbax's own
    save policy, which would also save the first step of a run, is bypassed with force=True.
    """

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.directory = epath.Path(workdir) / "checkpoints"
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = False

    def restore_latest(self, abstract_state):
        """The newest checkpoint that restores into `abstract_state` (ShapeDtypeStructs with
        shardings), or None for a fresh run."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
                return restored.state
            except Exception as error:  # noqa: BLE001 - any failure means "unusable".
                logging.warning(
                    "Checkpoint %s is unreadable (%s: %s); trying an older one.",
                    self.directory / str(step), type(error).__name__, str(error)[:300],
                )
        if self.manager.all_steps():
            raise RuntimeError(
                f"No checkpoint in {self.directory} could be restored (see the warnings above); "
                "move the directory away to start afresh."
            )
        return None

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state) -> None:
        """Starts an (async) save of `state` as checkpoint `step`."""
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True
        )

    def watch_sigterm(self) -> None:
        """Treat SIGTERM (sent by TPU VMs before maintenance) as a preemption notice."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_sigterm", True))

    def preempted(self, step: int) -> bool:
        """Whether to checkpoint now and exit: a local SIGTERM, or JAX's multi-host
        preemption sync point (all hosts agree on the step)."""
        return self._sigterm or self.manager.reached_preemption(step)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
