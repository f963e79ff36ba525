"""Multi-process start-up (training/distributed.py): which launcher an environment describes, what
JAX's cluster detection makes of it, and the one-sentence errors with exit status 2 when the
processes cannot start together. Detection and errors run in this process with JAX's
`jax.distributed.initialize` replaced; real start-ups run in small subprocesses that import
training/distributed.py only (train.py's end-to-end runs are in
tests/integration/test_reliability.py)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import train
from tests import fault_injection as fi
from training import distributed

REPO = Path(__file__).resolve().parents[2]

SLURM_TASK_1_OF_2 = dict(SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_PROCID="1",
                         SLURM_LOCALID="1", SLURM_STEP_NODELIST="node[001-002]")
OPEN_MPI_4 = dict(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1:34911",
                  OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="1",
                  OMPI_COMM_WORLD_LOCAL_RANK="1")
EXPLICIT = dict(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID="1")


@pytest.mark.parametrize("env, expected", [
    ({}, None),  # A laptop.
    (dict(SLURM_TASK_1_OF_2, SLURM_NTASKS="1", SLURM_PROCID="0"), None),
    (SLURM_TASK_1_OF_2, ("SLURM", 2, "slurm")),
    (OPEN_MPI_4, ("Open MPI", 4, "ompi")),
    # Open MPI 5 (PRRTE) names no launcher address: JAX reaches it through mpi4py.
    (dict(OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="1"), ("Open MPI", 4, "mpi4py")),
    (dict(OPEN_MPI_4, OMPI_COMM_WORLD_SIZE="1"), None),  # mpirun -n 1
    # mpirun inside a SLURM allocation: the ranks are Open MPI's, as JAX decides too.
    (dict(SLURM_TASK_1_OF_2, **OPEN_MPI_4), ("Open MPI", 4, "ompi")),
    (dict(TPU_WORKER_HOSTNAMES="10.0.0.2,10.0.0.3"), ("multi-host TPU", None, None)),
    (dict(TPU_WORKER_HOSTNAMES="10.0.0.2"), None),
    (dict(KUBERNETES_SERVICE_HOST="10.0.0.1", JOB_COMPLETION_INDEX="3"),
     ("Kubernetes", None, None)),
    (dict(KUBERNETES_SERVICE_HOST="10.0.0.1"), None),  # A pod of no indexed Job.
    (EXPLICIT, ("JAX_* variables", 2, None)),
    (dict(EXPLICIT, JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0"), None),
    (dict(SLURM_TASK_1_OF_2, **EXPLICIT), ("JAX_* variables", 2, None)),  # Stated wins.
], ids=["laptop", "slurm_one_task", "slurm", "open_mpi_4", "open_mpi_5", "mpirun_n_1",
        "mpirun_in_slurm", "tpu_pod", "tpu_one_host", "kubernetes", "kubernetes_pod", "explicit",
        "explicit_one_process", "explicit_in_slurm"])
def test_detects_the_launcher_of_a_multi_process_job(env, expected):
    launcher = distributed.detect_launcher(env)
    found = launcher and (launcher.name, launcher.processes, launcher.jax_method)
    assert found == expected


@pytest.fixture
def cluster_env(monkeypatch):
    """Sets environment variables on a clean slate (JAX's cluster detection reads os.environ);
    jax.distributed.initialize is recorded instead of run."""
    for name in list(os.environ):
        if name in fi.LAUNCHER_VARIABLES or name.startswith(fi.LAUNCHER_PREFIXES) or name in (
                "KUBERNETES_SERVICE_HOST", distributed.TIMEOUT_VARIABLE, "JAX_COORDINATOR_PORT"):
            monkeypatch.delenv(name)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))

    def set_env(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return calls

    return set_env


def test_slurm_task_starts_with_the_coordinator_jax_derives(cluster_env, capsys):
    calls = cluster_env(**SLURM_TASK_1_OF_2)
    distributed.maybe_initialize()
    # JAX's SlurmCluster: the step's first node, port 61440 + job id % 4096.
    address = f"node001:{61440 + 4242 % 4096}"
    assert calls == [((address, 2, 1), dict(
        cluster_detection_method="slurm",
        initialization_timeout=distributed.DEFAULT_TIMEOUT_S + distributed.XLA_DEADLINE_GRACE_S,
    ))]
    assert capsys.readouterr().out == (
        f"jax.distributed: SLURM, process 1 of 2, coordinator {address} (timeout 300 s)\n")


@pytest.mark.parametrize("variables", [
    {}, dict(SLURM_TASK_1_OF_2, SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")])
def test_a_single_process_starts_nothing(cluster_env, capsys, variables):
    calls = cluster_env(**variables)
    distributed.maybe_initialize()
    assert calls == [] and capsys.readouterr().out == ""


@pytest.mark.parametrize("variables, words", [
    (dict(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234"),
     "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"),
    (dict(EXPLICIT, JAX_PROCESS_ID="2"), "JAX_PROCESS_ID='2' do not describe a job"),
    (dict(EXPLICIT, JAX_COORDINATOR_ADDRESS="10.0.0.1"), "give host:port"),
    (dict(EXPLICIT, DISTRIBUTED_INIT_TIMEOUT_S="5m"),
     "DISTRIBUTED_INIT_TIMEOUT_S='5m' is not a positive whole number of seconds"),
    # Without the kubernetes package (or outside a cluster) JAX cannot read the Job.
    (dict(KUBERNETES_SERVICE_HOST="10.0.0.1", JOB_COMPLETION_INDEX="0"), "pip install 'jax[k8s]'"),
], ids=["address_only", "id_out_of_range", "no_port", "bad_timeout", "kubernetes"])
@pytest.mark.filterwarnings("ignore:Kubernetes environment detected")  # No kubernetes package.
def test_inconsistent_environment_is_one_sentence(cluster_env, variables, words):
    calls = cluster_env(**variables)
    with pytest.raises(distributed.StartupError) as error:
        distributed.maybe_initialize()
    assert words in str(error.value) and str(error.value).count(". ") == 0
    assert calls == []


def test_refused_initialization_names_launcher_coordinator_and_fix(cluster_env, monkeypatch):
    cluster_env(**SLURM_TASK_1_OF_2)

    def refuse(*args, **kwargs):
        raise RuntimeError("jax.distributed.initialize() must be called before any JAX calls")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    with pytest.raises(distributed.StartupError) as error:
        distributed.maybe_initialize()
    assert str(error.value).startswith(
        f"Multi-process start-up (SLURM): jax.distributed.initialize refused process 1 of 2 "
        f"with coordinator node001:{61440 + 4242 % 4096} (RuntimeError: ")
    assert str(error.value).endswith("; start every task with srun, before anything else runs JAX.")


def test_coordinator_port_in_use_is_refused_before_jax_starts(cluster_env):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        calls = cluster_env(**dict(EXPLICIT, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                   JAX_PROCESS_ID="0"))
        with pytest.raises(distributed.StartupError, match=f"coordinator port {port} on this "
                           "host .process 0. is taken .* set a free port in JAX_COORD"):
            distributed.maybe_initialize()
    assert calls == []


def start(variables: dict[str, str]) -> subprocess.Popen:
    """A process that starts the distributed runtime as train.py does and prints its place."""
    code = ("import jax; from training import distributed; distributed.maybe_initialize(); "
            "print('joined', jax.process_index(), jax.process_count())")
    env = {k: v for k, v in os.environ.items()
           if k not in fi.LAUNCHER_VARIABLES and not k.startswith(fi.LAUNCHER_PREFIXES)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env | variables,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_with_jax_variables_join_one_job():
    address = f"localhost:{fi.free_port()}"
    procs = [start(dict(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                        JAX_PROCESS_ID=str(i))) for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, err
        assert out.splitlines() == [
            f"jax.distributed: JAX_* variables, process {i} of 2, coordinator {address} "
            "(timeout 300 s)", f"joined {i} 2"]


@pytest.mark.parametrize("process_id, cause", [
    ("1", "nothing answers there; check that process 0 runs"),
    ("0", "not all 2 processes joined; start every process with the same"),
], ids=["unreachable_coordinator", "missing_process"])
def test_failed_start_up_exits_2_with_one_sentence(process_id, cause):
    address = f"localhost:{fi.free_port()}"  # Nobody listens there, unless process 0 is us.
    p = start(dict(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=process_id, DISTRIBUTED_INIT_TIMEOUT_S="1"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "joined" not in out
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(
        f"error: Multi-process start-up (JAX_* variables): process {process_id} of 2 waited "
        f"1 s for the coordinator at {address} ({cause.split(';')[0]}); {cause.split('; ')[1]}")
    assert line.endswith("raise DISTRIBUTED_INIT_TIMEOUT_S if they start slowly.") or (
        process_id == "1" and line.endswith("this host can reach that address."))


def test_unwritable_workdir_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / "run"  # A directory that cannot exist.
    with pytest.raises(train.ConfigError, match=f"The workdir {workdir} refuses writes "
                       r"\(NotADirectoryError: .*\); give a writable --workdir"):
        train.check_workdir_writable(str(workdir))
    train.check_workdir_writable(str(tmp_path / "run"))
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # The probe is gone.

