"""A harness that runs real train.py processes and injects faults into them.

A run here is the tiny NFNet on synthetic data (48 training examples, 3 steps per epoch, 8
epochs) on 8 CPU devices in total, split over 1, 2 or 4 processes that find each other with
`jax.distributed.initialize` on localhost, exactly as hosts of a TPU pod slice or tasks of a
SLURM job do (told by JAX_* variables, or by the variables srun sets). Every run
logs every step, checkpoints every 4 steps (asynchronously) and writes the source indices of
every batch, so tests can compare runs line by line and audit the data order.
"""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.metric_logging import WALL_CLOCK_FIELDS

REPO = Path(__file__).resolve().parents[1]
TOTAL_DEVICES = 8
NUM_EXAMPLES = 48
GLOBAL_BATCH = 16
TOTAL_STEPS = 24
CHECKPOINT_EVERY = 4

OVERRIDES = {
    "total_steps": TOTAL_STEPS,
    "global_batch_size": GLOBAL_BATCH,
    "eval_batch_size": 32,
    "data.name": "synthetic",
    "data.synthetic.train_examples": NUM_EXAMPLES,
    "data.synthetic.eval_examples": 32,
    "data.synthetic.image_size": 32,
    "log_every_steps": 1,
    "checkpoint_every_steps": CHECKPOINT_EVERY,
    "keep_checkpoints": 2,
    "eval_every_steps": 12,
    "optimizer.warmup_steps": 2,
    "mesh.data": 4,
    "mesh.fsdp": 2,
    "fsdp_min_shard_size": 1024,  # So that the sharded checkpoint path is exercised.
    "log_example_indices": True,
}


# Variables that make a process one of several (distributed.detect_launcher); a job's processes
# get only those of their own launch, whatever the test runner's environment holds.
LAUNCHER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                      "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JOB_COMPLETION_INDEX")
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_")
# JAX's SlurmCluster listens on port 61440 + job id % 4096 (jax/_src/clusters/slurm_cluster.py).
SLURM_FIRST_PORT = 65536 - 2**12


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def slurm_job_id_with_free_port() -> int:
    """A SLURM job id whose coordinator port, as JAX derives it, is free on this machine."""
    for port in random.sample(range(SLURM_FIRST_PORT, 2**16), 100):
        with contextlib.closing(socket.socket()) as s:
            with contextlib.suppress(OSError):
                s.bind(("", port))
                return 7 * 2**12 + port - SLURM_FIRST_PORT
    raise RuntimeError("no free port for a SLURM-style coordinator")


def launch_variables(launcher: str, processes: int) -> list[dict[str, str]]:
    """Each process's variables for a local job: "jax" sets JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID; "slurm" sets what srun sets for the tasks of a
    one-node step (JAX derives the coordinator from SLURM_STEP_NODELIST and SLURM_JOB_ID)."""
    if processes == 1:
        return [{}]
    if launcher == "jax":
        port = free_port()
        return [dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                     JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
                for i in range(processes)]
    assert launcher == "slurm", launcher
    job_id = slurm_job_id_with_free_port()
    return [dict(SLURM_JOB_ID=str(job_id), SLURM_STEP_ID="0", SLURM_NTASKS=str(processes),
                 SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_NODEID="0",
                 SLURM_JOB_NODELIST="localhost", SLURM_STEP_NODELIST="localhost",
                 SLURM_JOB_NUM_NODES="1", SLURM_STEP_NUM_NODES="1")
            for i in range(processes)]


class Job:
    """One launch of train.py on `processes` local processes (8 devices in total)."""

    def __init__(self, workdir: Path, processes: int = 1, max_file_kib: int | None = None,
                 launcher: str = "jax", **overrides):
        """`max_file_kib` fakes a full disk: writes past that size in any file fail (EFBIG;
        Python ignores SIGXFSZ). `launcher` ("jax" or "slurm", see `launch_variables`) tells
        several processes about each other."""
        self.workdir = workdir
        self.logs = [workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.p{i}.log"
                     for i in range(processes)]
        command = [sys.executable, str(REPO / "train.py"), "--config=configs/quickstart.py",
                   f"--workdir={workdir}"]
        command += [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
        if max_file_kib is not None:
            command = ["bash", "-c", f'ulimit -f {max_file_kib} && exec "$@"', "-", *command]
        inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES
                     and not k.startswith(LAUNCHER_PREFIXES)
                     and k != "XLA_FORCE_HOST_PLATFORM_DEVICE_COUNT"}
        self.procs = []
        for i, variables in enumerate(launch_variables(launcher, processes)):
            env = dict(inherited, JAX_NUM_CPU_DEVICES=str(TOTAL_DEVICES // processes),
                       **variables)
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))

    def output(self, process: int = 0) -> str:
        return self.logs[process].read_text()

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(max(1.0, deadline - time.monotonic()))
        return [p.returncode for p in self.procs]

    def kill(self, sig=signal.SIGKILL, process: int | None = None) -> None:
        for i, p in enumerate(self.procs):
            if (process is None or i == process) and p.poll() is None:
                p.send_signal(sig)

    def wait_for(self, predicate, timeout: float = 600, poll: float = 0.01) -> bool:
        """Polls `predicate()` until it holds (True) or the job ends or times out (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if predicate():
                return True
            time.sleep(poll)
        return False

    def describe(self) -> str:
        return "\n".join(f"--- process {i} (rc {p.poll()}) ---\n{self.output(i)[-3000:]}"
                         for i, p in enumerate(self.procs))


def last_logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    for line in reversed(lines):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(line)["step"]
    return 0


def committed_checkpoints(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / "commit_success.txt").exists())


def saving_now(workdir: Path) -> bool:
    """Whether a checkpoint is being written (orbax's temporary directory exists)."""
    directory = workdir / "checkpoints"
    return directory.exists() and any("tmp" in p.name for p in directory.iterdir())


def metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS}
            for line in lines]


def example_indices(workdir: Path) -> dict[int, list[int]]:
    lines = (workdir / "example_indices.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), "a step's batch was logged twice"
    return {r["step"]: r["index"] for r in records}


def check_exactly_once_per_epoch(indices: dict[int, list[int]]) -> int:
    """Asserts steps 1..T were each read once and every epoch is a permutation of the
    examples; returns how many example reads were checked."""
    assert sorted(indices) == list(range(1, TOTAL_STEPS + 1))
    order = np.concatenate([indices[s] for s in sorted(indices)])
    for epoch, start in enumerate(range(0, len(order) - NUM_EXAMPLES + 1, NUM_EXAMPLES)):
        seen = np.sort(order[start:start + NUM_EXAMPLES])
        assert np.array_equal(seen, np.arange(NUM_EXAMPLES)), f"epoch {epoch} is not exact"
    return len(order)


def final_state(workdir: Path, step: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the newest checkpoint (or of `step`), as numpy, keyed by path."""
    import jax
    import orbax.checkpoint as ocp

    step = committed_checkpoints(workdir)[-1] if step is None else step
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(path).item_metadata.tree)
    restored = checkpointer.restore(path, restore_args=as_numpy)
    flat = {}

    def visit(prefix, node):
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}/{key}", value)
        elif isinstance(node, list | tuple):
            for key, value in enumerate(node):
                visit(f"{prefix}/{key}", value)
        elif node is not None:
            flat[prefix] = np.asarray(node)

    visit("", restored)
    return flat


def assert_close_metrics(actual: list[dict], expected: list[dict], rtol: float) -> None:
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys(), a["step"]
        for key in e:
            np.testing.assert_allclose(a[key], e[key], rtol=rtol, atol=1e-6,
                                       err_msg=f"step {e['step']} {key}")
