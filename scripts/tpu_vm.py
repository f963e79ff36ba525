#!/usr/bin/env python3
"""Runs train.py on Cloud TPU VMs (one host or a pod slice) from a workstation.

    python scripts/tpu_vm.py create                   # the TPU VM named by TPU_NAME
    python scripts/tpu_vm.py setup                    # code + virtual environment on every worker
    python scripts/tpu_vm.py launch --config=configs/nfnet_f7plus.py --workdir=f7plus
    python scripts/tpu_vm.py logs --follow            # worker 0's log
    python scripts/tpu_vm.py resume --config=configs/nfnet_f7plus.py --workdir=f7plus --loop
    python scripts/tpu_vm.py finetune --family=nfnet --model=f7plus --init=f7plus --workdir=ft
    python scripts/tpu_vm.py delete

Settings come from environment variables (ENV_VARS below), each overridable by a flag:
TPU_NAME by --name, TPU_ZONE by --zone, REPO_URL by --repo_url, and so on. With --dry_run
(or DRY_RUN=1) every command is printed, shell-quoted, one per line, instead of being run.
What to run, in which order, the multi-host checks and the exact train.py command line are
pure functions of the settings (and, for `resume`, of the observed VM state); the tests call
them directly. Needs only the Python standard library (3.9+) and the gcloud CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = pathlib.Path(__file__).resolve()


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the variable or flag to fix."""


# ----------------------------------------------------------------------------------------------
# Settings: environment variables, overridable by flags.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnvVar:
    name: str  # Environment variable.
    flag: str  # Command-line flag (--flag=...) that overrides it.
    default: str | None  # None: required.
    help: str


ENV_VARS = (
    EnvVar("TPU_NAME", "name", None, "TPU VM (node) name"),
    EnvVar("TPU_ZONE", "zone", None, "zone, e.g. us-central2-b"),
    EnvVar("TPU_PROJECT", "project", "", "Google Cloud project (empty: gcloud's default)"),
    EnvVar("TPU_ACCELERATOR", "accelerator", "v4-8", "accelerator type: v4-8, v4-32, "
           "v5litepod-16, v5p-64, v6e-16, ... (more than 8 chips or cores: several hosts)"),
    EnvVar("TPU_RUNTIME", "runtime", "", "TPU software version (empty: the accelerator's "
           "usual one, tpu-ubuntu2204-base for v2-v4)"),
    EnvVar("TPU_SPOT", "spot", "0", "1: Spot capacity (cheaper, can be preempted)"),
    EnvVar("TPU_QUEUED", "queued", "0", "1: request the VM through a queued resource "
           "(NAME-qr) that waits for capacity"),
    EnvVar("REPO_URL", "repo_url", "", "git URL that every worker clones (empty: copy the "
           "local working tree)"),
    EnvVar("REPO_REF", "repo_ref", "HEAD", "branch, tag or commit of REPO_URL to check out"),
    EnvVar("REMOTE_DIR", "remote_dir", "convnets", "code directory on the workers (relative "
           "paths are under the home directory)"),
    EnvVar("REMOTE_PYTHON", "remote_python", "3.12", "Python version of the workers' "
           "virtual environment, 3.12+ as pyproject.toml requires (uv downloads it if the "
           "image lacks it)"),
    EnvVar("WORKDIR_ROOT", "workdir_root", "", "where --workdir and --init names without a "
           "'/' live, e.g. gs://bucket/runs"),
)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class Settings:
    name: str
    zone: str
    project: str = ""
    accelerator: str = "v4-8"
    runtime: str = ""
    spot: bool = False
    queued: bool = False
    repo_url: str = ""
    repo_ref: str = "HEAD"
    remote_dir: str = "convnets"
    remote_python: str = "3.12"  # pyproject.toml's requires-python, JAX's window.
    workdir_root: str = ""
    local_root: pathlib.Path = REPO_ROOT  # The checkout that is copied in copy mode.

    @property
    def hosts(self) -> int:
        return num_hosts(self.accelerator)

    @property
    def queued_resource(self) -> str:
        return f"{self.name}-qr"


def parse_bool(variable: str, value: str) -> bool:
    value = value.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{variable}={value!r} is not a boolean; use 1 or 0.")


def resolve_settings(flags: Mapping[str, object], environ: Mapping[str, str],
                     local_root: pathlib.Path = REPO_ROOT) -> Settings:
    """Settings from flags (highest priority), then environment variables, then defaults.
    A required value that is missing raises ConfigError naming its variable and flag."""
    values = {}
    for var in ENV_VARS:
        value = flags.get(var.flag)
        if value is None or value == "":
            value = environ.get(var.name, "")
        if value == "":
            if var.default is None:
                raise ConfigError(
                    f"{var.name} is not set ({var.help}): export {var.name}=... or pass "
                    f"--{var.flag}=..."
                )
            value = var.default
        values[var.flag] = str(value)
    for flag, var in (("spot", "TPU_SPOT"), ("queued", "TPU_QUEUED")):
        values[flag] = parse_bool(var, values[flag])
    values["remote_dir"] = values["remote_dir"].removeprefix("~/").rstrip("/") or "."
    settings = Settings(**values, local_root=pathlib.Path(local_root))
    num_hosts(settings.accelerator)  # Validates the accelerator type.
    if not settings.runtime:
        settings = dataclasses.replace(settings, runtime=default_runtime(settings.accelerator))
    return settings


# ----------------------------------------------------------------------------------------------
# Accelerators.
# ----------------------------------------------------------------------------------------------

# Generations whose type counts TensorCores (8 per host); the others count chips (a multi-host
# slice has 4 per host).
CORE_COUNTED = ("v2", "v3", "v4", "v5p")
RUNTIMES = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator)
    if not match:
        raise ConfigError(
            f"TPU_ACCELERATOR={accelerator!r} is not an accelerator type such as v4-8, v4-32, "
            "v5litepod-16, v5p-64 or v6e-16."
        )
    return match.group(1), int(match.group(2))


def num_hosts(accelerator: str) -> int:
    """Number of TPU VM hosts (workers) of a slice: v4-8 -> 1, v4-32 -> 4, v5litepod-16 -> 4."""
    generation, size = parse_accelerator(accelerator)
    if size <= 8:
        return 1
    return size // 8 if generation in CORE_COUNTED else size // 4


def default_runtime(accelerator: str) -> str:
    generation, _ = parse_accelerator(accelerator)
    if generation not in RUNTIMES:
        raise ConfigError(
            f"No default TPU software version for {accelerator}: set TPU_RUNTIME (--runtime)."
        )
    return RUNTIMES[generation]


# ----------------------------------------------------------------------------------------------
# Commands.
# ----------------------------------------------------------------------------------------------

POLL_SECONDS = 30
QUERY_TIMEOUT = 300  # Seconds; a describe or probe that hangs longer counts as no answer.


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a plan. With `until`, it is repeated every POLL_SECONDS until its
    output is that text."""

    argv: tuple[str, ...]
    until: str | None = None

    def __str__(self) -> str:
        text = shlex.join(self.argv)
        return text if self.until is None else f"{text}  # repeated until it prints {self.until}"


def gcloud(s: Settings, group: str, verb: str, *args: str) -> tuple[str, ...]:
    """`gcloud compute tpus GROUP VERB POSITIONALS --zone=... [--project=...] FLAGS`."""
    args = list(args)
    n = next((i for i, arg in enumerate(args) if arg.startswith("--")), len(args))
    project = [f"--project={s.project}"] if s.project else []
    return ("gcloud", "compute", "tpus", group, verb, *args[:n], f"--zone={s.zone}", *project,
            *args[n:])


def ssh(s: Settings, remote: str, worker: str = "all") -> Command:
    """Runs the shell command `remote` on one worker or on all of them at once."""
    return Command(gcloud(s, "tpu-vm", "ssh", s.name, f"--worker={worker}",
                          f"--command={remote}"))


def describe_node(s: Settings) -> Command:
    return Command(gcloud(s, "tpu-vm", "describe", s.name, "--format=value(state)"))


def describe_queued(s: Settings) -> Command:
    return Command(gcloud(s, "queued-resources", "describe", s.queued_resource,
                          "--format=value(state.state)"))


def wait_until_ready(s: Settings) -> Command:
    return dataclasses.replace(describe_node(s), until="READY")


def create_commands(s: Settings) -> list[Command]:
    """Creates the VM, or queues a request for it and waits until it is READY."""
    spot = ("--spot",) if s.spot else ()
    if s.queued:
        return [
            Command(gcloud(s, "queued-resources", "create", s.queued_resource,
                           f"--node-id={s.name}", f"--accelerator-type={s.accelerator}",
                           f"--runtime-version={s.runtime}", *spot)),
            wait_until_ready(s),
        ]
    return [Command(gcloud(s, "tpu-vm", "create", s.name, f"--accelerator-type={s.accelerator}",
                           f"--version={s.runtime}", *spot))]


def delete_commands(s: Settings) -> list[Command]:
    """Deletes the VM (with its queued resource, if it came from one)."""
    if s.queued:
        return [Command(gcloud(s, "queued-resources", "delete", s.queued_resource, "--force",
                               "--quiet"))]
    return [Command(gcloud(s, "tpu-vm", "delete", s.name, "--quiet"))]


# Shell snippets run on the workers. The pattern's brackets keep pgrep from matching the shell
# that runs it; it matches train.py started by `launch` (and its scripts/worker_run.sh wrapper).
TRAIN_PATTERN = "[t]rain\\.py --config"
PGREP = f'pgrep -f "{TRAIN_PATTERN}"'
REFUSE_IF_RUNNING = (
    f"if {PGREP} >/dev/null; then "
    'echo "train.py is already running on $(hostname); not starting another" >&2; exit 1; fi'
)
REMOTE_ARCHIVE = "tpu_vm_code.tar.gz"  # In the workers' home directory.
# Kept in REMOTE_DIR when the code is replaced: the environment, the logs and local workdirs.
KEPT_ON_UPDATE = (".venv", "logs", "workdirs")


def local_archive(s: Settings) -> str:
    return os.path.join(tempfile.gettempdir(), f"{s.name}-code.tar.gz")


def code_commands(s: Settings) -> list[Command]:
    """Puts the code in REMOTE_DIR on every worker: a tarball of the local working tree, or a
    checkout of REPO_URL at REPO_REF. Refused on workers where train.py is running."""
    d = shlex.quote(s.remote_dir)
    if s.repo_url:
        url, ref = shlex.quote(s.repo_url), shlex.quote(s.repo_ref)
        return [ssh(s, " && ".join([
            REFUSE_IF_RUNNING,
            f"mkdir -p {d}",
            f"cd {d}",
            "{ [ -d .git ] || git init -q; }",
            f"{{ git remote set-url origin {url} 2>/dev/null || git remote add origin {url}; }}",
            f"git fetch -q --depth=1 origin {ref}",
            "git checkout -q --force --detach FETCH_HEAD",
        ]))]
    archive = local_archive(s)
    keep = " ".join(f"! -name {name}" for name in KEPT_ON_UPDATE)
    return [
        Command((sys.executable, str(SCRIPT), "pack", archive, f"--root={s.local_root}")),
        Command(gcloud(s, "tpu-vm", "scp", archive, f"{s.name}:{REMOTE_ARCHIVE}",
                       "--worker=all")),
        ssh(s, " && ".join([
            REFUSE_IF_RUNNING,
            f"mkdir -p {d}",
            f"find {d} -mindepth 1 -maxdepth 1 {keep} -exec rm -rf {{}} +",
            f"tar -xzf {REMOTE_ARCHIVE} -C {d}",
            f"rm -f {REMOTE_ARCHIVE}",
        ])),
    ]


def install_command(s: Settings) -> Command:
    """A virtual environment with the project (requirements.txt) and JAX's TPU support, on every
    worker: `pip install -e .[tpu]`, as README says for a TPU VM.
    uv provides the Python version (the project needs 3.12+; the TPU images ship 3.10)."""
    python = shlex.quote(s.remote_python)
    return ssh(s, " && ".join([
        'export PATH="$HOME/.local/bin:$PATH"',
        f"cd {shlex.quote(s.remote_dir)}",
        "python3 -m pip install --quiet --user --upgrade uv",
        f"uv venv --quiet --allow-existing --python {python} .venv",
        'uv pip install --quiet --python .venv/bin/python -e ".[tpu]"',
    ]))


def setup_commands(s: Settings) -> list[Command]:
    return [*code_commands(s), install_command(s)]


# ----------------------------------------------------------------------------------------------
# Runs: the train.py command line, identical on every worker.
# ----------------------------------------------------------------------------------------------

FINETUNE_FAMILIES = ("nfnet", "convnext", "vit")


@dataclasses.dataclass(frozen=True)
class Run:
    config: str  # --config of train.py, e.g. configs/nfnet_f7plus.py:epochs=8
    workdir: str  # --workdir of train.py (gs://... on a pod slice)
    extra_args: tuple[str, ...] = ()  # More train.py flags, e.g. --config.seed=1

    @property
    def name(self) -> str:
        """The run's log name on the workers: the workdir's last component."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.workdir.rstrip("/").rsplit("/", 1)[-1])


def is_remote(path: str) -> bool:
    return "://" in path


def resolve_path(s: Settings, path: str) -> str:
    """A name without '/' (e.g. `f7plus`) lives under WORKDIR_ROOT when that is set; anything
    else is used as given (a relative local path is relative to REMOTE_DIR on the workers)."""
    if s.workdir_root and not is_remote(path) and "/" not in path:
        return f"{s.workdir_root.rstrip('/')}/{path}"
    return path


def check_shared(s: Settings, path: str, what: str) -> None:
    """Refuses a local path on a multi-host slice: its workers do not share a disk."""
    if s.hosts > 1 and not is_remote(path):
        raise ConfigError(
            f"{what} {path!r} is a local path, but {s.accelerator} has {s.hosts} hosts that do "
            "not share a disk: use cloud storage (gs://bucket/...), or set WORKDIR_ROOT="
            "gs://bucket/runs and pass a bare name."
        )


def check_config_file(s: Settings, config: str) -> None:
    """In copy mode, the config file must exist in the checkout that is copied."""
    path = config.split(":", 1)[0]
    if not s.repo_url and not (s.local_root / path).is_file():
        raise ConfigError(f"{path} does not exist in {s.local_root} (the code that is copied).")


def make_run(s: Settings, config: str, workdir: str, extra_args: Sequence[str] = ()) -> Run:
    if not config:
        raise ConfigError("--config is required, e.g. --config=configs/nfnet_f7plus.py:epochs=8.")
    if not workdir:
        raise ConfigError("--workdir is required: a gs://... path or a name under WORKDIR_ROOT.")
    check_config_file(s, config)
    run = Run(config, resolve_path(s, workdir), tuple(extra_args))
    check_shared(s, run.workdir, "The workdir")
    return run


def finetune_config(family: str, init: str, model: str = "", config_args: str = "") -> str:
    """`configs/finetune_<family>.py:model=<model>,init=<init>[,<config_args>]`."""
    if family not in FINETUNE_FAMILIES:
        raise ConfigError(f"--family={family!r}: choose one of {', '.join(FINETUNE_FAMILIES)}.")
    if "," in init:
        raise ConfigError(f"--init={init!r}: a path with commas cannot be a config argument.")
    args = [f"model={model}"] if model else []
    args.append(f"init={init}")
    if config_args:
        args.append(config_args)
    return f"configs/finetune_{family}.py:" + ",".join(args)


def make_finetune_run(s: Settings, family: str, init: str, workdir: str, model: str = "",
                      config_args: str = "", extra_args: Sequence[str] = ()) -> Run:
    """A fine-tuning run that starts from the pre-training workdir `init` and writes into its
    own `workdir`."""
    if not init:
        raise ConfigError("--init is required: the pre-training workdir (gs://... or a name "
                          "under WORKDIR_ROOT).")
    init = resolve_path(s, init)
    check_shared(s, init, "The pre-training workdir (--init)")
    run = make_run(s, finetune_config(family, init, model, config_args), workdir, extra_args)
    if run.workdir.rstrip("/") == init.rstrip("/"):
        raise ConfigError("--workdir must differ from --init: fine-tuning writes a new run.")
    return run


def train_command(run: Run) -> list[str]:
    """The train.py command line every worker runs (from REMOTE_DIR)."""
    return [".venv/bin/python", "train.py", f"--config={run.config}",
            f"--workdir={run.workdir}", *run.extra_args]


def launch_commands(s: Settings, run: Run) -> list[Command]:
    """Refuses if train.py runs on any worker, then starts the same train.py command on every
    worker in the background, its output in REMOTE_DIR/logs/<run>.log (logs/latest.log)."""
    wrapped = shlex.join(["bash", "scripts/worker_run.sh", f"logs/{run.name}",
                          *train_command(run)])
    return [
        ssh(s, REFUSE_IF_RUNNING),
        ssh(s, " && ".join([
            f"cd {shlex.quote(s.remote_dir)}",
            "mkdir -p logs",
            f"ln -sfn {shlex.quote(run.name + '.log')} logs/latest.log",
            f"{{ setsid nohup {wrapped} >/dev/null 2>&1 </dev/null & }}",
        ])),
    ]


def stop_command(s: Settings) -> Command:
    """SIGTERM to train.py on every worker: it checkpoints and exits; `resume` continues it."""
    return ssh(s, f"cd {shlex.quote(s.remote_dir)} && for f in logs/*.pid; do "
                  '[ -e "$f" ] && kill -TERM "$(cat "$f")"; done; true')


def logs_command(s: Settings, worker: str = "0", lines: int = 100, follow: bool = False,
                 run_name: str = "latest") -> Command:
    path = f"{s.remote_dir}/logs/{run_name}.log"
    tail = ["tail", "-n", str(lines), *(["-F"] if follow else []), path]
    return ssh(s, shlex.join(tail), worker=worker)


def status_commands(s: Settings) -> list[Command]:
    commands = [Command(gcloud(s, "tpu-vm", "describe", s.name,
                               "--format=yaml(state,health,acceleratorType,runtimeVersion)"))]
    if s.queued:
        commands.append(describe_queued(s))
    commands.append(ssh(s, "; ".join([
        f"cd {shlex.quote(s.remote_dir)} 2>/dev/null",
        'echo "== $(hostname)"',
        f'pgrep -af "{TRAIN_PATTERN}" || echo "train.py is not running"',
        "tail -n 2 logs/latest.log 2>/dev/null",
        "true",
    ])))
    return commands


# ----------------------------------------------------------------------------------------------
# Resume: observe the VM and the workers, decide, act.
# ----------------------------------------------------------------------------------------------

GONE = ("", "PREEMPTED", "TERMINATED")  # Node states that need a new VM ('': no such node).
# Queued-resource states in which the request is still on its way (or going away): wait.
QUEUED_PENDING = ("ACCEPTED", "CREATING", "PROVISIONING", "WAITING_FOR_RESOURCES",
                  "SUSPENDING", "DELETING")


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    host: str
    process: str  # 'running', 'none' (never ran here), or 'exited:<status|preempted>'
    code: str  # 'ready' (code and virtual environment present) or 'missing'


@dataclasses.dataclass(frozen=True)
class Observation:
    node_state: str  # '' when the VM does not exist.
    queued_state: str = ""  # State of the queued resource ('' if none).
    workers: tuple[WorkerStatus, ...] = ()  # Probed only when the VM is READY.


@dataclasses.dataclass(frozen=True)
class Decision:
    summary: str
    commands: tuple[Command, ...] = ()
    final: str = ""  # 'finished' or 'failed' when the run needs no more resuming.


def probe_command(s: Settings, run: Run) -> Command:
    """Prints `worker-status HOST PROCESS CODE` on every worker (see WorkerStatus)."""
    exit_file = shlex.quote(f"logs/{run.name}.exit")
    return ssh(s, (
        f"cd {shlex.quote(s.remote_dir)} 2>/dev/null; "
        f"if {PGREP} >/dev/null; then p=running; "
        f'elif [ -f {exit_file} ]; then p="exited:$(cat {exit_file})"; else p=none; fi; '
        "if [ -x .venv/bin/python ] && [ -f train.py ]; then c=ready; else c=missing; fi; "
        'echo "worker-status $(hostname) $p $c"'
    ))


def parse_probe(output: str) -> tuple[WorkerStatus, ...]:
    statuses = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "worker-status":
            statuses.append(WorkerStatus(*parts[1:]))
    return tuple(statuses)


def recreate_commands(s: Settings, run: Run, obs: Observation) -> list[Command]:
    """Deletes what is left of the VM, creates it again, sets it up and relaunches the run."""
    exists = obs.queued_state if s.queued else obs.node_state
    delete = delete_commands(s) if exists else []
    return [*delete, *create_commands(s), *setup_commands(s), *launch_commands(s, run)]


def decide_resume(s: Settings, run: Run, obs: Observation) -> Decision:
    """What `resume` does for an observed state. Nothing destructive happens to a READY VM,
    and train.py is never started where it already runs."""
    state, queued = obs.node_state, obs.queued_state
    if state == "READY":
        return decide_on_ready_vm(s, run, obs.workers)
    if s.queued and queued in QUEUED_PENDING:
        return Decision(f"The queued resource {s.queued_resource} is {queued}; waiting.")
    if state in GONE:
        what = f"The VM is {state}" if state else "The VM does not exist"
        return Decision(f"{what}: recreating it, setting it up and relaunching the run.",
                        tuple(recreate_commands(s, run, obs)))
    if state == "STOPPED":
        start = Command(gcloud(s, "tpu-vm", "start", s.name))
        return Decision("The VM is STOPPED: starting it and relaunching the run.",
                        (start, *launch_commands(s, run)))
    return Decision(f"The VM is {state}; waiting.")


def decide_on_ready_vm(s: Settings, run: Run, workers: Sequence[WorkerStatus]) -> Decision:
    if len(workers) < s.hosts:
        return Decision(f"Only {len(workers)} of {s.hosts} workers answered; nothing done.")
    running = [w for w in workers if w.process == "running"]
    if running:
        others = ", ".join(f"{w.host}: {w.process}" for w in workers if w not in running)
        note = f" (not on {others}: see `logs`, `stop` if it hangs)" if others else ""
        return Decision(f"train.py is running on {len(running)} of {len(workers)} workers"
                        f"{note}; nothing to do.")
    failed = [f"{w.host} ({w.process})" for w in workers
              if w.process.startswith("exited:") and w.process not in ("exited:0",
                                                                       "exited:preempted")]
    if failed:
        return Decision(f"train.py failed on {', '.join(failed)}: see `logs`; fix it, then "
                        "`launch` again. Not relaunching.", final="failed")
    if all(w.process == "exited:0" for w in workers):
        return Decision(f"The run {run.workdir} finished.", final="finished")
    setup = setup_commands(s) if any(w.code != "ready" for w in workers) else []
    return Decision("train.py is not running: relaunching it (it resumes from the workdir).",
                    (*setup, *launch_commands(s, run)))


# ----------------------------------------------------------------------------------------------
# Execution.
# ----------------------------------------------------------------------------------------------


def execute(commands: Sequence[Command], dry_run: bool) -> None:
    """Prints the commands (dry run) or runs them in order, stopping at the first failure."""
    for command in commands:
        if dry_run:
            print(command)
            continue
        print(f"+ {command}", file=sys.stderr, flush=True)
        if command.until is None:
            subprocess.run(command.argv, check=True)
        else:
            poll(command)


def failure(error: subprocess.SubprocessError) -> str:
    """A failed or timed-out command, shell-quoted."""
    command = shlex.join(error.cmd) if isinstance(error.cmd, (list, tuple)) else str(error.cmd)
    if isinstance(error, subprocess.CalledProcessError):
        return f"exit status {error.returncode} from {command}"
    return f"no answer from {command}"


def query(command: Command) -> str:
    """The command's output; '' when gcloud says the resource does not exist."""
    result = subprocess.run(command.argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    if result.returncode != 0:
        if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
            return ""
        raise subprocess.CalledProcessError(result.returncode, command.argv, result.stdout,
                                            result.stderr)
    return result.stdout.strip()


def poll(command: Command) -> None:
    while True:
        result = subprocess.run(command.argv, capture_output=True, text=True)
        output = result.stdout.strip()
        if output == command.until:
            return
        print(f"  {output or 'not there yet'}; checking again in {POLL_SECONDS} s", flush=True)
        time.sleep(POLL_SECONDS)


def observe(s: Settings, run: Run) -> Observation:
    state = query(describe_node(s))
    queued = query(describe_queued(s)) if s.queued else ""
    workers = ()
    if state == "READY":
        try:
            result = subprocess.run(probe_command(s, run).argv, capture_output=True, text=True,
                                    timeout=QUERY_TIMEOUT)
            workers = parse_probe(result.stdout)
        except subprocess.TimeoutExpired:
            pass  # No answer: decide_resume does nothing.
    return Observation(state, queued, workers)


def resume(s: Settings, run: Run, dry_run: bool, loop: bool, interval: float) -> int:
    if not is_remote(run.workdir):
        raise ConfigError(f"resume needs a cloud workdir (gs://...): {run.workdir!r} would be "
                          "lost with the VM's disk.")
    if dry_run:
        print("# observe:")
        execute([describe_node(s), *([describe_queued(s)] if s.queued else []),
                 probe_command(s, run)], dry_run=True)
        gone = Observation("PREEMPTED", "SUSPENDED" if s.queued else "")
        stopped = Observation("READY", "", tuple(
            WorkerStatus(f"worker-{i}", "exited:preempted", "ready") for i in range(s.hosts)))
        for title, obs in (("the VM is PREEMPTED or missing", gone),
                           ("it is READY and train.py is not running", stopped)):
            print(f"# if {title}:")
            execute(decide_resume(s, run, obs).commands, dry_run=True)
        return 0
    while True:
        try:
            decision = decide_resume(s, run, observe(s, run))
            print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {decision.summary}", flush=True)
            execute(decision.commands, dry_run=False)
        except subprocess.SubprocessError as error:
            if not loop:
                raise
            # E.g. no capacity for a new VM yet: the next round tries again.
            print(f"{failure(error)}; trying again in {interval:g} s", file=sys.stderr,
                  flush=True)
        else:
            if decision.final or not loop:
                return 1 if decision.final == "failed" else 0
        time.sleep(interval)


def working_tree_files(root: pathlib.Path) -> list[str]:
    """Tracked and untracked files of the checkout that .gitignore does not exclude."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode()
    return sorted(p for p in set(listing.split("\0")) if p and (root / p).is_file())


def pack(root: pathlib.Path, archive: str, files: Sequence[str] | None = None) -> int:
    """Writes the working tree (not .git, not ignored files) to a .tar.gz; returns its size."""
    files = working_tree_files(root) if files is None else files
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(root / path, arcname=path, recursive=False)
    return len(files)


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dry_run", action="store_true",
                        help="print the commands instead of running them (also DRY_RUN=1)")
    for var in ENV_VARS:
        extra = {"nargs": "?", "const": "1"} if var.flag in ("spot", "queued") else {}
        default = "required" if var.default is None else f"default {var.default or 'empty'}"
        common.add_argument(f"--{var.flag}", help=f"{var.help} [${var.name}; {default}]",
                            **extra)

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Flags after `--` are passed on to train.py. See scripts/README.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common], help="create the TPU VM")
    sub.add_parser("setup", parents=[common], help="code and virtual environment on all workers")
    launch = sub.add_parser("launch", parents=[common], help="start train.py on all workers")
    add_run_arguments(launch, config=True, finetune=False)
    finetune = sub.add_parser("finetune", parents=[common],
                              help="launch a fine-tuning config from a pre-training workdir")
    add_run_arguments(finetune, config=False, finetune=True)
    resume_parser = sub.add_parser(
        "resume", parents=[common],
        help="recreate, set up and relaunch after preemption (launch or finetune arguments)")
    add_run_arguments(resume_parser, config=True, finetune=True)
    resume_parser.add_argument("--loop", action="store_true", help="keep watching")
    resume_parser.add_argument("--interval", type=float, default=300,
                               help="seconds between checks with --loop (default 300)")
    logs = sub.add_parser("logs", parents=[common], help="tail a worker's log")
    logs.add_argument("--worker", default="0", help="worker index or 'all' (default 0)")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--follow", action="store_true")
    logs.add_argument("--run", default="latest", help="run name (the workdir's last component)")
    sub.add_parser("status", parents=[common], help="VM state and train.py on each worker")
    sub.add_parser("stop", parents=[common], help="SIGTERM train.py: checkpoint and exit")
    sub.add_parser("delete", parents=[common], help="delete the TPU VM")
    pack_parser = sub.add_parser("pack", help="tarball of the local working tree")
    pack_parser.add_argument("archive")
    pack_parser.add_argument("--root", default=str(REPO_ROOT))
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, config: bool, finetune: bool) -> None:
    """The run's flags: --workdir, and --config and/or the fine-tuning flags."""
    parser.add_argument("--workdir", default="",
                        help="train.py's workdir: gs://... or a name under WORKDIR_ROOT")
    if config:
        parser.add_argument("--config", default="", help="train.py's --config")
    if finetune:
        parser.add_argument("--family", default="", help="configs/finetune_<family>.py: "
                            + ", ".join(FINETUNE_FAMILIES))
        parser.add_argument("--model", default="", help="model= argument of that config")
        parser.add_argument("--init", default="",
                            help="pre-training workdir: gs://... or a name under WORKDIR_ROOT")
        parser.add_argument("--config_args", default="",
                            help="more config arguments, e.g. lr=0.1,epochs=2")


def run_from_args(s: Settings, args: argparse.Namespace, extra: Sequence[str]) -> Run:
    """The Run of `launch`, `finetune` or `resume` (which takes the arguments of either)."""
    if getattr(args, "config", ""):
        return make_run(s, args.config, args.workdir, extra)
    if getattr(args, "family", ""):
        return make_finetune_run(s, args.family, args.init, args.workdir, args.model,
                                 args.config_args, extra)
    if args.command == "launch":
        raise ConfigError("--config is required, e.g. --config=configs/nfnet_f7plus.py:epochs=8.")
    alternative = " (or --config, as for launch)" if args.command == "resume" else ""
    raise ConfigError(f"--family and --init are required{alternative}.")


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `ARGS -- TRAIN_FLAGS`."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def plan(s: Settings, args: argparse.Namespace, extra: Sequence[str]) -> list[Command]:
    """The commands of every subcommand but `resume` and `pack`."""
    if args.command == "create":
        return create_commands(s)
    if args.command == "setup":
        return setup_commands(s)
    if args.command in ("launch", "finetune"):
        return launch_commands(s, run_from_args(s, args, extra))
    if args.command == "logs":
        return [logs_command(s, args.worker, args.lines, args.follow, args.run)]
    if args.command == "status":
        return status_commands(s)
    if args.command == "stop":
        return [stop_command(s)]
    if args.command == "delete":
        return delete_commands(s)
    raise ValueError(args.command)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    argv, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pack":
            count = pack(pathlib.Path(args.root), args.archive)
            print(f"Wrote {args.archive} ({count} files)")
            return 0
        s = resolve_settings(vars(args), environ)
        dry_run = args.dry_run or parse_bool("DRY_RUN", environ.get("DRY_RUN", "0"))
        if args.command == "resume":
            return resume(s, run_from_args(s, args, extra), dry_run, args.loop, args.interval)
        execute(plan(s, args, extra), dry_run)
        return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.SubprocessError as error:
        print(f"error: {failure(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
