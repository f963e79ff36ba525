"""scripts/tpu_vm.py: the commands it would run, checked as plans and in dry mode (no cloud)."""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tarfile
import time

import pytest

from scripts import tpu_vm

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {"TPU_NAME": "f7", "TPU_ZONE": "us-central2-b"}
F7_CONFIG = "configs/nfnet_f7plus.py:epochs=8,lr=1.6"


@pytest.fixture
def checkout(tmp_path):
    """A checkout holding the config files that the runs below name."""
    (tmp_path / "configs").mkdir()
    for name in ("nfnet_f7plus", "finetune_nfnet"):
        (tmp_path / "configs" / f"{name}.py").write_text("def get_config(arg=None): ...\n")
    return tmp_path


def settings(checkout, flags=None, **env):
    return tpu_vm.resolve_settings(flags or {}, {**ENV, **env}, local_root=checkout)


def verbs(commands):
    """'tpu-vm create', 'queued-resources delete', 'pack', ... for each command."""
    return [" ".join(c.argv[3:5]) if c.argv[0] == "gcloud" else c.argv[2] for c in commands]


def remote(command):
    """The shell command that an ssh Command runs on the workers."""
    [text] = [a.removeprefix("--command=") for a in command.argv if a.startswith("--command=")]
    return text


def train_argv(commands):
    """The train.py command line of a launch plan, as the workers' shell splits it."""
    [start] = [remote(c) for c in commands if "worker_run.sh" in remote(c)]
    words = shlex.split(start.split("setsid nohup ", 1)[1].split(" >/dev/null")[0])
    return words[words.index(".venv/bin/python"):]


# ----------------------------------------------------------------------------------------------
# Settings.
# ----------------------------------------------------------------------------------------------


def test_defaults(checkout):
    s = settings(checkout)
    assert (s.name, s.zone, s.project) == ("f7", "us-central2-b", "")
    assert (s.accelerator, s.runtime, s.hosts) == ("v4-8", "tpu-ubuntu2204-base", 1)
    assert not s.spot and not s.queued and not s.repo_url
    assert (s.remote_dir, s.remote_python, s.workdir_root) == ("convnets", "3.12", "")


def test_environment_overrides_defaults_and_flags_override_environment(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32", TPU_SPOT="1", REMOTE_DIR="~/code/",
                 TPU_PROJECT="proj")
    assert (s.accelerator, s.hosts, s.spot, s.remote_dir, s.project) == (
        "v4-32", 4, True, "code", "proj")
    s = settings(checkout, {"accelerator": "v5litepod-16", "spot": "0", "name": "other"},
                 TPU_ACCELERATOR="v4-32", TPU_SPOT="1")
    assert (s.name, s.accelerator, s.hosts, s.spot) == ("other", "v5litepod-16", 4, False)
    assert s.runtime == "v2-alpha-tpuv5-lite"
    assert settings(checkout, TPU_ACCELERATOR="v6e-8", TPU_RUNTIME="custom").runtime == "custom"


@pytest.mark.parametrize("missing", ["TPU_NAME", "TPU_ZONE"])
def test_missing_required_variable_is_named(checkout, missing):
    env = {k: v for k, v in ENV.items() if k != missing}
    flag = "--" + missing.removeprefix("TPU_").lower()
    with pytest.raises(tpu_vm.ConfigError, match=f"{missing} is not set.*{flag}="):
        tpu_vm.resolve_settings({}, env, local_root=checkout)


def test_invalid_values_are_named(checkout):
    with pytest.raises(tpu_vm.ConfigError, match="TPU_SPOT"):
        settings(checkout, TPU_SPOT="maybe")
    with pytest.raises(tpu_vm.ConfigError, match="TPU_ACCELERATOR"):
        settings(checkout, TPU_ACCELERATOR="big-pod")
    with pytest.raises(tpu_vm.ConfigError, match="TPU_RUNTIME"):
        settings(checkout, TPU_ACCELERATOR="v9x-8")


@pytest.mark.parametrize("accelerator, hosts", [
    ("v4-8", 1), ("v4-16", 2), ("v4-32", 4), ("v3-32", 4), ("v5p-128", 16),
    ("v5litepod-8", 1), ("v5litepod-16", 4), ("v6e-4", 1), ("v6e-256", 64),
])
def test_hosts_of_an_accelerator(accelerator, hosts):
    assert tpu_vm.num_hosts(accelerator) == hosts


# ----------------------------------------------------------------------------------------------
# create, setup, delete.
# ----------------------------------------------------------------------------------------------


def test_create_and_delete(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32", TPU_SPOT="1", TPU_PROJECT="proj")
    [create] = tpu_vm.create_commands(s)
    assert create.argv == (
        "gcloud", "compute", "tpus", "tpu-vm", "create", "f7", "--zone=us-central2-b",
        "--project=proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot")
    [delete] = tpu_vm.delete_commands(s)
    assert delete.argv[3:6] == ("tpu-vm", "delete", "f7") and "--quiet" in delete.argv


def test_create_and_delete_through_a_queued_resource(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v5litepod-16", TPU_QUEUED="1", TPU_SPOT="1")
    create, wait = tpu_vm.create_commands(s)
    assert create.argv[3:6] == ("queued-resources", "create", "f7-qr")
    assert {"--node-id=f7", "--accelerator-type=v5litepod-16",
            "--runtime-version=v2-alpha-tpuv5-lite", "--spot"} <= set(create.argv)
    assert wait.argv[3:6] == ("tpu-vm", "describe", "f7") and wait.until == "READY"
    [delete] = tpu_vm.delete_commands(s)
    assert delete.argv[3:6] == ("queued-resources", "delete", "f7-qr")
    assert {"--force", "--quiet"} <= set(delete.argv)


def test_setup_copies_the_working_tree_to_every_worker(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32")
    commands = tpu_vm.setup_commands(s)
    assert verbs(commands) == ["pack", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh"]
    pack, scp, unpack, install = commands
    assert pack.argv[-2:] == (tpu_vm.local_archive(s), f"--root={checkout}")
    assert scp.argv[5:7] == (tpu_vm.local_archive(s), "f7:tpu_vm_code.tar.gz")
    assert all("--worker=all" in c.argv for c in (scp, unpack, install))
    assert remote(unpack).startswith(tpu_vm.REFUSE_IF_RUNNING)
    assert "! -name .venv ! -name logs" in remote(unpack)
    assert "tar -xzf tpu_vm_code.tar.gz -C convnets" in remote(unpack)
    assert "uv venv --quiet --allow-existing --python 3.12 .venv" in remote(install)
    assert '-e ".[tpu]"' in remote(install)


def test_setup_clones_a_repository_at_a_ref(checkout):
    s = settings(checkout, REPO_URL="https://example.com/org/repo.git", REPO_REF="abc123")
    commands = tpu_vm.setup_commands(s)
    assert verbs(commands) == ["tpu-vm ssh", "tpu-vm ssh"]
    clone = remote(commands[0])
    assert "git remote add origin https://example.com/org/repo.git" in clone
    assert "git fetch -q --depth=1 origin abc123 && git checkout -q --force --detach FETCH_HEAD" \
        in clone


def test_pack_writes_the_listed_files(checkout, tmp_path):
    archive = str(tmp_path / "code.tar.gz")
    count = tpu_vm.pack(checkout, archive, files=["configs/nfnet_f7plus.py"])
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["configs/nfnet_f7plus.py"] and count == 1


# ----------------------------------------------------------------------------------------------
# launch and finetune: one train.py command line for every worker.
# ----------------------------------------------------------------------------------------------


def test_single_host_launch(checkout):
    s = settings(checkout)
    run = tpu_vm.make_run(s, F7_CONFIG, "workdirs/f7plus", ["--config.seed=1"])
    commands = tpu_vm.launch_commands(s, run)
    assert verbs(commands) == ["tpu-vm ssh", "tpu-vm ssh"]
    refuse, start = commands
    assert remote(refuse) == tpu_vm.REFUSE_IF_RUNNING  # Never a second copy on a worker.
    assert train_argv(commands) == [".venv/bin/python", "train.py", f"--config={F7_CONFIG}",
                                    "--workdir=workdirs/f7plus", "--config.seed=1"]
    assert "bash scripts/worker_run.sh logs/f7plus .venv/bin/python" in remote(start)
    assert "ln -sfn f7plus.log logs/latest.log" in remote(start)


def test_pod_slice_launch_runs_the_same_command_on_every_worker(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32", WORKDIR_ROOT="gs://bucket/runs/")
    run = tpu_vm.make_run(s, F7_CONFIG, "f7plus")
    assert run.workdir == "gs://bucket/runs/f7plus"
    commands = tpu_vm.launch_commands(s, run)
    # Each step is one ssh command with --worker=all: every worker runs the identical line.
    assert all(c.argv[3:6] == ("tpu-vm", "ssh", "f7") and "--worker=all" in c.argv
               for c in commands)
    assert train_argv(commands) == [".venv/bin/python", "train.py", f"--config={F7_CONFIG}",
                                    "--workdir=gs://bucket/runs/f7plus"]


@pytest.mark.parametrize("workdir", ["f7plus", "workdirs/f7plus", "/data/f7plus"])
def test_local_workdir_on_a_pod_slice_is_refused(checkout, workdir):
    s = settings(checkout, TPU_ACCELERATOR="v4-32")
    with pytest.raises(tpu_vm.ConfigError, match="4 hosts that do not share a disk.*gs://"):
        tpu_vm.make_run(s, F7_CONFIG, workdir)


def test_unknown_config_file_is_refused_in_copy_mode(checkout):
    with pytest.raises(tpu_vm.ConfigError, match="configs/nfnet_f9.py does not exist"):
        tpu_vm.make_run(settings(checkout), "configs/nfnet_f9.py:epochs=1", "w")
    s = settings(checkout, REPO_URL="https://example.com/repo.git")
    assert tpu_vm.make_run(s, "configs/nfnet_f9.py", "w").config == "configs/nfnet_f9.py"


def test_finetune_config_argument(checkout):
    assert tpu_vm.finetune_config("nfnet", "gs://bucket/runs/f7plus", "f7plus") == (
        "configs/finetune_nfnet.py:model=f7plus,init=gs://bucket/runs/f7plus")
    s = settings(checkout, TPU_ACCELERATOR="v4-32", WORKDIR_ROOT="gs://bucket/runs")
    run = tpu_vm.make_finetune_run(s, "nfnet", "f7plus", "f7plus-ft", model="f7plus",
                                   config_args="lr=0.1")
    assert run.config == (
        "configs/finetune_nfnet.py:model=f7plus,init=gs://bucket/runs/f7plus,lr=0.1")
    assert run.workdir == "gs://bucket/runs/f7plus-ft"
    assert train_argv(tpu_vm.launch_commands(s, run))[2:] == [
        f"--config={run.config}", "--workdir=gs://bucket/runs/f7plus-ft"]


def test_finetune_mistakes_are_refused(checkout):
    pod = settings(checkout, TPU_ACCELERATOR="v4-32", WORKDIR_ROOT="gs://bucket/runs")
    with pytest.raises(tpu_vm.ConfigError, match="must differ"):
        tpu_vm.make_finetune_run(pod, "nfnet", "f7plus", "gs://bucket/runs/f7plus/")
    with pytest.raises(tpu_vm.ConfigError, match="--init.*local path"):
        tpu_vm.make_finetune_run(pod, "nfnet", "workdirs/f7plus", "ft")
    with pytest.raises(tpu_vm.ConfigError, match="--family"):
        tpu_vm.make_finetune_run(pod, "resnet", "f7plus", "ft")
    with pytest.raises(tpu_vm.ConfigError, match="--init is required"):
        tpu_vm.make_finetune_run(pod, "nfnet", "", "ft")
    with pytest.raises(tpu_vm.ConfigError, match="finetune_vit.py does not exist"):
        tpu_vm.make_finetune_run(pod, "vit", "f7plus", "ft")


# ----------------------------------------------------------------------------------------------
# resume.
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def pod(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32", WORKDIR_ROOT="gs://bucket/runs", TPU_SPOT="1")
    return s, tpu_vm.make_run(s, F7_CONFIG, "f7plus")


def workers(*processes, code="ready"):
    return tuple(tpu_vm.WorkerStatus(f"w{i}", p, code) for i, p in enumerate(processes))


LAUNCH = ["tpu-vm ssh", "tpu-vm ssh"]
SETUP = ["pack", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh"]


def test_resume_recreates_a_preempted_vm(pod):
    s, run = pod
    decision = tpu_vm.decide_resume(s, run, tpu_vm.Observation("PREEMPTED"))
    assert verbs(decision.commands) == ["tpu-vm delete", "tpu-vm create", *SETUP, *LAUNCH]
    assert "--spot" in decision.commands[1].argv
    assert decision.commands[2:] == (*tpu_vm.setup_commands(s), *tpu_vm.launch_commands(s, run))
    assert not decision.final
    missing = tpu_vm.decide_resume(s, run, tpu_vm.Observation(""))
    assert verbs(missing.commands) == ["tpu-vm create", *SETUP, *LAUNCH]


def test_resume_leaves_a_running_vm_alone(pod):
    s, run = pod
    for processes in (["running"] * 4, ["running", "running", "exited:1", "running"]):
        decision = tpu_vm.decide_resume(s, run, tpu_vm.Observation("READY", "",
                                                                   workers(*processes)))
        assert decision.commands == () and not decision.final
        assert "train.py is running" in decision.summary


def test_resume_relaunches_on_a_ready_vm_where_the_run_stopped(pod):
    s, run = pod
    obs = tpu_vm.Observation("READY", "", workers("exited:preempted", "none", "none", "none"))
    decision = tpu_vm.decide_resume(s, run, obs)
    assert decision.commands == tuple(tpu_vm.launch_commands(s, run))
    assert remote(decision.commands[0]) == tpu_vm.REFUSE_IF_RUNNING
    bare = tpu_vm.Observation("READY", "", workers("none", "none", "none", "none", code="missing"))
    assert verbs(tpu_vm.decide_resume(s, run, bare).commands) == [*SETUP, *LAUNCH]


def test_resume_stops_after_the_run_ends(pod):
    s, run = pod
    done = tpu_vm.decide_resume(s, run, tpu_vm.Observation("READY", "", workers(*["exited:0"] * 4)))
    assert done.final == "finished" and done.commands == ()
    failed = tpu_vm.decide_resume(s, run, tpu_vm.Observation(
        "READY", "", workers("exited:2", "exited:0", "exited:0", "exited:0")))
    assert failed.final == "failed" and failed.commands == () and "w0 (exited:2)" in failed.summary


def test_resume_does_nothing_when_workers_do_not_answer_or_the_vm_is_busy(pod):
    s, run = pod
    for obs in (tpu_vm.Observation("READY", "", workers("none")),
                tpu_vm.Observation("CREATING"), tpu_vm.Observation("REPAIRING")):
        decision = tpu_vm.decide_resume(s, run, obs)
        assert decision.commands == () and not decision.final


def test_resume_through_a_queued_resource(checkout):
    s = settings(checkout, TPU_ACCELERATOR="v4-32", TPU_QUEUED="1", TPU_SPOT="1")
    run = tpu_vm.make_run(s, F7_CONFIG, "gs://bucket/runs/f7plus")
    waiting = tpu_vm.decide_resume(s, run, tpu_vm.Observation("", "WAITING_FOR_RESOURCES"))
    assert waiting.commands == () and "WAITING_FOR_RESOURCES" in waiting.summary
    preempted = tpu_vm.decide_resume(s, run, tpu_vm.Observation("PREEMPTED", "SUSPENDED"))
    assert verbs(preempted.commands) == [
        "queued-resources delete", "queued-resources create", "tpu-vm describe", *SETUP, *LAUNCH]


def test_resume_loop_retries_failures_and_ends_with_the_run(pod, monkeypatch):
    s, run = pod
    observations = iter([
        tpu_vm.Observation("PREEMPTED"),  # The first try fails (e.g. no capacity yet).
        tpu_vm.Observation(""),
        tpu_vm.Observation("READY", "", workers(*["running"] * 4)),
        tpu_vm.Observation("READY", "", workers(*["exited:0"] * 4)),
    ])
    executed = []

    def execute(commands, dry_run):
        executed.append(verbs(commands))
        if len(executed) == 1:
            raise subprocess.CalledProcessError(1, ["gcloud", "create"])

    monkeypatch.setattr(tpu_vm, "observe", lambda s, run: next(observations))
    monkeypatch.setattr(tpu_vm, "execute", execute)
    monkeypatch.setattr(tpu_vm.time, "sleep", lambda seconds: None)
    assert tpu_vm.resume(s, run, dry_run=False, loop=True, interval=1) == 0
    assert executed == [["tpu-vm delete", "tpu-vm create", *SETUP, *LAUNCH],
                        ["tpu-vm create", *SETUP, *LAUNCH], [], []]
    failed = tpu_vm.Observation("READY", "", workers("exited:1", "none", "none", "none"))
    monkeypatch.setattr(tpu_vm, "observe", lambda s, run: failed)
    assert tpu_vm.resume(s, run, dry_run=False, loop=True, interval=1) == 1


def test_a_missing_vm_reads_as_an_empty_state(monkeypatch, checkout):
    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: NOT_FOUND: node f7")

    monkeypatch.setattr(subprocess, "run", run)
    assert tpu_vm.query(tpu_vm.describe_node(settings(checkout))) == ""


def test_probe_output_is_parsed():
    output = "Using ssh batch size of 4.\nworker-status t1v-0 running ready\n" \
             "worker-status t1v-1 exited:preempted missing\nnoise\n"
    assert tpu_vm.parse_probe(output) == (
        tpu_vm.WorkerStatus("t1v-0", "running", "ready"),
        tpu_vm.WorkerStatus("t1v-1", "exited:preempted", "missing"))


# ----------------------------------------------------------------------------------------------
# The command line in dry mode.
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"dry mode ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_dry_run_prints_each_command_shell_quoted(capsys, no_subprocess):
    env = {**ENV, "TPU_ACCELERATOR": "v4-32", "WORKDIR_ROOT": "gs://bucket/runs"}
    code = tpu_vm.main(["launch", f"--config={F7_CONFIG}", "--workdir=f7 plus", "--dry_run",
                        "--", "--config.seed=1"], env)
    assert code == 0
    s = tpu_vm.resolve_settings({}, env)
    run = tpu_vm.make_run(s, F7_CONFIG, "f7 plus", ["--config.seed=1"])
    assert run.workdir == "gs://bucket/runs/f7 plus"
    expected = tpu_vm.launch_commands(s, run)
    lines = capsys.readouterr().out.splitlines()
    assert [tuple(shlex.split(line)) for line in lines] == [c.argv for c in expected]


def test_dry_run_from_the_environment_and_finetune(capsys, no_subprocess):
    env = {**ENV, "DRY_RUN": "1", "TPU_ACCELERATOR": "v4-32", "WORKDIR_ROOT": "gs://b/runs",
           "REPO_URL": "https://example.com/repo.git"}
    assert tpu_vm.main(["finetune", "--family=nfnet", "--model=f7plus", "--init=f7plus",
                        "--workdir=f7plus-ft"], env) == 0
    out = capsys.readouterr().out
    assert "--config=configs/finetune_nfnet.py:model=f7plus,init=gs://b/runs/f7plus" in out
    assert "--workdir=gs://b/runs/f7plus-ft" in out


def test_dry_run_of_resume_shows_both_plans(capsys, no_subprocess):
    env = {**ENV, "TPU_ACCELERATOR": "v4-32"}
    assert tpu_vm.main(["resume", f"--config={F7_CONFIG}", "--workdir=gs://b/runs/f7plus",
                        "--dry_run"], env) == 0
    out = capsys.readouterr().out
    assert "# if the VM is PREEMPTED or missing:" in out and "tpu-vm delete" in out
    assert out.count("worker_run.sh") == 2


def test_errors_are_reported_with_exit_status_2(capsys, no_subprocess):
    env = {**ENV, "TPU_ACCELERATOR": "v4-32"}
    assert tpu_vm.main(["launch", f"--config={F7_CONFIG}", "--workdir=local", "--dry_run"],
                       env) == 2
    assert "do not share a disk" in capsys.readouterr().err
    single = {**ENV, "WORKDIR_ROOT": ""}
    assert tpu_vm.main(["resume", f"--config={F7_CONFIG}", "--workdir=local", "--dry_run"],
                       single) == 2
    assert "resume needs a cloud workdir" in capsys.readouterr().err
    assert tpu_vm.main(["create", "--dry_run"], {"TPU_NAME": "x"}) == 2
    assert "TPU_ZONE is not set" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# What runs on the workers.
# ----------------------------------------------------------------------------------------------


def run_on_worker(tmp_path, *command):
    env = {**os.environ, "TPU_WORKER_HOSTNAMES": "localhost"}  # No metadata server query.
    return subprocess.run(["bash", str(ROOT / "scripts/worker_run.sh"), "logs/run", *command],
                          cwd=tmp_path, env=env, capture_output=True, text=True).returncode


def test_worker_run_records_the_exit_and_preemption(tmp_path):
    marker = "Preempted: saved step"
    assert marker in (ROOT / "train.py").read_text()  # The line worker_run.sh looks for.
    exit_file = tmp_path / "logs/run.exit"
    assert run_on_worker(tmp_path, "sh", "-c", "echo hello; exit 3") == 3
    assert exit_file.read_text() == "3\n"
    assert run_on_worker(tmp_path, "sh", "-c", f"echo 'W1 train.py:9] {marker} 7' >&2") == 0
    assert exit_file.read_text() == "preempted\n"
    assert run_on_worker(tmp_path, "true") == 0  # The earlier preemption line is not re-read.
    assert exit_file.read_text() == "0\n"
    log = (tmp_path / "logs/run.log").read_text()
    assert "hello" in log and log.count("=== ") == 3
    assert not (tmp_path / "logs/run.pid").exists()


def test_train_pattern_matches_train_py_but_not_the_check_itself():
    pattern = re.compile(tpu_vm.TRAIN_PATTERN)  # pgrep -f: an extended regex over the cmdline.
    started = shlex.join(["bash", "scripts/worker_run.sh", "logs/f7plus",
                          *tpu_vm.train_command(tpu_vm.Run(F7_CONFIG, "gs://b/f7plus"))])
    assert pattern.search(started)  # The wrapper, and train.py inside it.
    assert pattern.search(".venv/bin/python train.py --config=configs/quickstart.py")
    assert not pattern.search(shlex.join(["bash", "-c", tpu_vm.REFUSE_IF_RUNNING]))
    assert not pattern.search("python -m pytest tests/integration/test_train.py")


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep")
def test_refuse_if_running_sees_a_running_train_py():
    check = ["bash", "-c", tpu_vm.REFUSE_IF_RUNNING]
    fake = subprocess.Popen(["bash", "-c", 'exec -a "python train.py --config=x" sleep 30'])
    try:
        deadline = time.monotonic() + 5  # Until bash has exec'd the fake train.py.
        while True:
            result = subprocess.run(check, capture_output=True, text=True)
            if result.returncode or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert result.returncode == 1 and "already running" in result.stderr
    finally:
        fake.kill()
        fake.wait()


def test_readme_documents_every_variable_and_subcommand():
    readme = (ROOT / "scripts/README.md").read_text()
    for var in tpu_vm.ENV_VARS:
        assert f"`{var.name}`" in readme, var.name
    for command in ("create", "setup", "launch", "logs", "status", "resume", "finetune", "stop",
                    "delete", "DRY_RUN"):
        assert command in readme, command


def test_workers_get_the_python_that_pyproject_requires():
    import tomllib

    pyproject = tomllib.loads((pathlib.Path(tpu_vm.REPO_ROOT) / "pyproject.toml").read_text())
    minimum = re.fullmatch(r">=\s*([\d.]+)", pyproject["project"]["requires-python"]).group(1)
    assert tpu_vm.Settings(name="f7", zone="z").remote_python == minimum


def _fake_python(folder: pathlib.Path, name: str, version: str) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\ncase \"$1\" in -c) case \"$2\" in *executable*) "
                      f"echo {folder}/{name};; *) [ {version} -ge 12 ];; esac;; esac\n")
    script.chmod(0o755)


@pytest.mark.parametrize(("on_path", "expected"), [
    ({"python3": "11", "python3.12": "12"}, "python3.12"),
    ({"python3": "13"}, "python3"),
])
def test_find_python_picks_a_supported_python(tmp_path, on_path, expected):
    for name, minor in on_path.items():
        _fake_python(tmp_path, name, minor)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path)}
    result = subprocess.run(["sh", str(tpu_vm.REPO_ROOT / "scripts" / "find_python.sh")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path}/{expected}"


def test_find_python_says_what_to_install_when_none_is_supported(tmp_path):
    _fake_python(tmp_path, "python3", "11")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path)}
    result = subprocess.run(["sh", str(tpu_vm.REPO_ROOT / "scripts" / "find_python.sh")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert "no Python 3.12 or newer found" in result.stderr
