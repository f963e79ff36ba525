"""Several processes (hosts) in one run: start-up, barriers and agreement.

A TPU pod slice runs one process per host, a GPU cluster one per GPU (SLURM's srun, Open MPI's
mpirun, a Kubernetes indexed Job or JobSet), and tests run several on one machine.
`maybe_initialize` names the launcher that the environment describes and starts JAX's
distributed runtime with the coordinator, process count and id that JAX's own cluster detection
(jax._src.clusters) reads from it; a single process (a laptop, a SLURM job of one task) starts
nothing. Barriers here use the coordination service of JAX's distributed runtime rather than a
device collective, so they can be called at any time, also while processes are compiling for
different lengths of time (CPU collectives give up after 30 s).
"""

import dataclasses
import os
import socket
import sys
import threading
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax._src import clusters  # jax.distributed.initialize()'s cluster detection (see below)
from jax.experimental import multihost_utils

# `clusters` is private: JAX has no public API for its cluster detection (jax 0.12), and
# tests/unit/test_jax_private_api.py fails when a release moves it.

EXPLICIT_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# The variables JAX's SlurmCluster needs (jax/_src/clusters/slurm_cluster.py); srun sets them for
# every task, a batch script outside srun lacks SLURM_STEP_NODELIST.
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")
# Seconds for all processes to join: an environment variable, as it belongs to the launch
# (queue, image pulls, number of hosts) rather than to the run that config.json records.
TIMEOUT_VARIABLE = "DISTRIBUTED_INIT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300  # jax.distributed.initialize's own default.
# JAX's deadline comes this much later than ours, so that our message, not XLA's abort, ends a
# start-up that failed.
XLA_DEADLINE_GRACE_S = 30


class StartupError(RuntimeError):
    """The environment describes several processes that cannot start together; the message
    names the launcher, the coordinator and the likely fix."""


@dataclasses.dataclass(frozen=True)
class Launcher:
    name: str
    processes: int | None  # From the environment; None: JAX asks the cluster.
    jax_method: str | None  # jax.distributed.initialize's cluster_detection_method.
    start_hint: str  # How every process must be started, for error messages.
    explicit: bool = False  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.


def detect_launcher(env: Mapping[str, str] = os.environ) -> Launcher | None:
    """The launcher of the multi-process job this process belongs to, checked in the order of
    JAX's cluster detection (Open MPI before SLURM, whose variables mpirun inherits inside an
    allocation); None for a single process: a laptop, a SLURM job of one task, mpirun -n 1."""
    if any(name in env for name in EXPLICIT_VARIABLES):
        launcher = Launcher("JAX_* variables", _count(env.get("JAX_NUM_PROCESSES")), None,
                            "start every process with the same JAX_COORDINATOR_ADDRESS and "
                            "JAX_NUM_PROCESSES and its own JAX_PROCESS_ID", explicit=True)
    elif "OMPI_COMM_WORLD_SIZE" in env:
        # Open MPI 4 (ORTE) names its launcher's address, which JAX's OmpiCluster reads; Open
        # MPI 5 (PRRTE) does not, and JAX reaches it through mpi4py (jax-ml/jax#14576).
        orte = "OMPI_MCA_orte_hnp_uri" in env
        launcher = Launcher("Open MPI", _count(env["OMPI_COMM_WORLD_SIZE"]),
                            "ompi" if orte else "mpi4py",
                            "start every rank with mpirun" + ("" if orte else
                                                              " and install mpi4py"))
    elif all(name in env for name in SLURM_VARIABLES):
        launcher = Launcher("SLURM", _count(env["SLURM_NTASKS"]), "slurm",
                            "start every task with srun")
    elif len(_tpu_hosts(env)) > 1:
        launcher = Launcher("multi-host TPU", None, None,
                            "run the same command on every worker (scripts/tpu_vm.py launch)")
    elif "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env:
        launcher = Launcher("Kubernetes", None, None,
                            "run the pods as an indexed Job or JobSet with a headless service, "
                            "install the kubernetes package (pip install 'jax[k8s]') and let "
                            "the pods' service account read pods and jobs")
    else:
        return None
    return None if launcher.processes == 1 else launcher


def _count(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _tpu_hosts(env: Mapping[str, str]) -> list[str]:
    """The hosts of a TPU slice, as JAX's GkeTpuCluster reads them (scripts/worker_run.sh
    exports TPU_WORKER_HOSTNAMES on TPU VMs)."""
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return [host for host in hosts.split(",") if host.strip()]


def initialization_timeout_s(env: Mapping[str, str] = os.environ) -> int:
    value = env.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    if _count(value) is None or int(value) == 0:
        raise StartupError(f"{TIMEOUT_VARIABLE}={value!r} is not a positive whole number of "
                           f"seconds; set it to one, such as 600, or unset it for "
                           f"{DEFAULT_TIMEOUT_S}.")
    return int(value)


def job_layout(launcher: Launcher, env: Mapping[str, str], timeout_s: int) -> tuple[str, int, int]:
    """(coordinator address, process count, this process's id): the JAX_* variables, or what
    JAX's cluster detection reads for the launcher (for Kubernetes, from its API)."""
    if launcher.explicit:
        return _explicit_layout(env)
    try:
        address, count, process_id, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            None, None, None, None, launcher.jax_method, timeout_s)
        cause = "it found none"
    except Exception as error:  # Any failure of the detection is reported.
        address = count = process_id = None
        cause = f"{type(error).__name__}: {error}"
    if None in (address, count, process_id):
        raise StartupError(
            f"The {launcher.name} environment describes several processes, but JAX's cluster "
            f"detection could not read their coordinator, count and id ({cause}); "
            f"{launcher.start_hint}, or set {', '.join(EXPLICIT_VARIABLES)}.")
    return address, count, process_id


def _explicit_layout(env: Mapping[str, str]) -> tuple[str, int, int]:
    missing = [name for name in EXPLICIT_VARIABLES if not env.get(name)]
    if missing:
        given = [name for name in EXPLICIT_VARIABLES if name not in missing]
        raise StartupError(
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; set all of "
            f"{', '.join(EXPLICIT_VARIABLES)} for a multi-process run, or none of them.")
    address = env["JAX_COORDINATOR_ADDRESS"]
    count, process_id = _count(env["JAX_NUM_PROCESSES"]), _count(env["JAX_PROCESS_ID"])
    port = address.rpartition(":")[2]
    if not port.isdigit() or not count or process_id is None or process_id >= count:
        raise StartupError(
            f"JAX_COORDINATOR_ADDRESS={address!r}, JAX_NUM_PROCESSES="
            f"{env['JAX_NUM_PROCESSES']!r}, JAX_PROCESS_ID={env['JAX_PROCESS_ID']!r} do not "
            "describe a job; give host:port, a positive process count and an id from 0 to "
            "the count minus 1.")
    return address, count, process_id


def maybe_initialize() -> None:
    """Starts JAX's multi-process runtime when the environment describes several processes
    (`detect_launcher`) and logs one line naming the launcher, process and coordinator.
    Raises StartupError for inconsistent variables, a coordinator port in use or a refused
    layout; a coordinator that does not answer, or a process that never joins, ends the
    process with a one-sentence error and exit status 2 after DISTRIBUTED_INIT_TIMEOUT_S."""
    env = os.environ  # What JAX's cluster detection reads, too.
    launcher = detect_launcher(env)
    if launcher is None:
        return
    timeout_s = initialization_timeout_s(env)
    address, count, process_id = job_layout(launcher, env, timeout_s)
    if count == 1:
        return
    print(f"jax.distributed: {launcher.name}, process {process_id} of {count}, coordinator "
          f"{address} (timeout {timeout_s} s)", flush=True)
    if process_id == 0:
        _check_coordinator_port(launcher, env.get("JAX_COORDINATOR_BIND_ADDRESS", address))
    watchdog = threading.Timer(timeout_s, _give_up,
                               (launcher, address, count, process_id, timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            address, count, process_id, cluster_detection_method=launcher.jax_method,
            initialization_timeout=timeout_s + XLA_DEADLINE_GRACE_S)
    except Exception as error:  # E.g. called after JAX started its backends.
        raise StartupError(
            f"Multi-process start-up ({launcher.name}): jax.distributed.initialize refused "
            f"process {process_id} of {count} with coordinator {address} "
            f"({type(error).__name__}: {error}); {launcher.start_hint}, before anything else "
            "runs JAX.") from None
    finally:
        watchdog.cancel()


def _check_coordinator_port(launcher: Launcher, bind_address: str) -> None:
    """Process 0's coordinator service crashes the process (SIGSEGV, jaxlib 0.10) when its port
    is taken, so that is checked first, as gRPC binds it: all interfaces, SO_REUSEADDR."""
    port = int(bind_address.rpartition(":")[2])
    try:
        probe = socket.socket(socket.AF_INET6)
        host = "::"  # Dual-stack: also refused by an IPv4 listener on the port.
    except OSError:
        probe, host = socket.socket(socket.AF_INET), ""
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            where = ("a free port in JAX_COORDINATOR_ADDRESS" if launcher.explicit else
                     "JAX_COORDINATOR_PORT to a free port for every process")
            raise StartupError(
                f"Multi-process start-up ({launcher.name}): the coordinator port {port} on "
                f"this host (process 0) is taken ({error.strerror}), perhaps by another job or "
                f"a process of an earlier run; stop that or set {where}.") from None


def _give_up(launcher: Launcher, address: str, count: int, process_id: int,
             timeout_s: int) -> None:
    """Ends a start-up that did not complete in time. The main thread waits inside XLA, which
    on its own deadline aborts the process without a Python exception (jaxlib 0.10), so this
    timer thread reports and exits 2 itself, as train.py does for other bad input; nothing
    has been written yet."""
    if process_id != 0 and not _answers(address):
        cause = "nothing answers there"
        fix = "check that process 0 runs and that this host can reach that address"
    else:
        cause = f"not all {count} processes joined"
        fix = (f"{launcher.start_hint}, check that all of them run, and raise "
               f"{TIMEOUT_VARIABLE} if they start slowly")
    print(f"error: Multi-process start-up ({launcher.name}): process {process_id} of {count} "
          f"waited {timeout_s} s for the coordinator at {address} ({cause}); {fix}.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def wait_for_all_processes(name: str, timeout_s: int = 3600) -> None:
    """Returns once every process has called it with the same `name`."""
    if jax.process_count() > 1:
        ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def all_processes_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: call with no step in flight)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))
