"""Several processes (hosts) in one run: start-up, barriers and agreement.

A TPU pod slice runs one process per host, and tests run several on one machine. Barriers
here use the coordination service of JAX's distributed runtime rather than a device collective,
so they can be called at any time, also while processes are compiling for different lengths of
time (CPU collectives give up after 30 s).
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def maybe_initialize() -> None:
    """Starts JAX's multi-process runtime when the environment describes several processes:
    JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a multi-host TPU slice."""
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Returns once every process has called it with the same `name`."""
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def all_processes_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: call with no step in flight)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))
