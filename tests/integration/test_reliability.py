"""Faults injected into real train.py processes: kill -9 at random moments and mid-save,
SIGTERM on one host of two, corrupt and truncated checkpoints, a full disk, and elastic
resume on another number of processes. After each, the finished run must match an
uninterrupted one: metrics.jsonl line for line, the final train state bit for bit (same
process count) or to float tolerance (another process count, whose collectives sum in
another order), and every epoch must have read each example exactly once.

`pytest tests/integration/test_reliability.py --fault-restarts=20 -s` injects more kills and prints
what was injected, and `-m slow` adds the run resumed on four processes; the default keeps CI short.
"""

import random
import shutil
import signal

import numpy as np
import pytest

from tests import fault_injection as fi


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 1 process, 8 devices."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    job = fi.Job(workdir)
    assert job.wait() == [0], job.describe()
    return workdir


def copy_stopped_at(reference, workdir, step):
    """The reference workdir as a run stopped at checkpoint `step` would have left it (later
    checkpoints gone; metrics past it are dropped on resume)."""
    shutil.copytree(reference, workdir)
    for path in (workdir / "checkpoints").iterdir():
        if int(path.name) > step:
            shutil.rmtree(path)


def assert_same_as_reference(workdir, reference, *, exact: bool):
    if exact:
        assert fi.metrics(workdir) == fi.metrics(reference)
        ours, theirs = fi.final_state(workdir), fi.final_state(reference)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert np.array_equal(ours[key], theirs[key]), key
    else:
        fi.assert_close_metrics(fi.metrics(workdir), fi.metrics(reference), rtol=2e-5)
    assert fi.example_indices(workdir) == fi.example_indices(reference)
    return fi.check_exactly_once_per_epoch(fi.example_indices(workdir))


def test_reference_reads_every_example_once_per_epoch(reference):
    reads = fi.check_exactly_once_per_epoch(fi.example_indices(reference))
    assert reads == fi.TOTAL_STEPS * fi.GLOBAL_BATCH


def test_kill_9_at_random_moments_changes_nothing(reference, tmp_path, request):
    restarts = request.config.getoption("--fault-restarts")
    rng = random.Random(request.config.getoption("--fault-seed"))
    workdir = tmp_path / "run"
    injected = []
    for i in range(restarts):
        job = fi.Job(workdir)
        resumed_from = max(fi.committed_checkpoints(workdir), default=0)
        if i % 2:  # While an async checkpoint is being written.
            hit = job.wait_for(
                lambda r=resumed_from: fi.last_logged_step(workdir) > r and fi.saving_now(workdir),
                poll=0.001,
            )
        else:  # At a random moment after a random step.
            target = rng.randint(resumed_from + 1, fi.TOTAL_STEPS - 1)
            hit = job.wait_for(lambda t=target: fi.last_logged_step(workdir) >= t)
            if hit:
                time_after = rng.uniform(0, 0.3)
                job.wait_for(lambda: False, timeout=time_after)
        committed_before = fi.committed_checkpoints(workdir)
        saving = fi.saving_now(workdir)
        job.kill(signal.SIGKILL)
        job.wait()
        if not hit:
            continue  # The run ended before the fault; nothing was injected.
        committed_after = fi.committed_checkpoints(workdir)
        # No complete checkpoint is lost, whatever the moment of the kill.
        assert set(committed_before[-1:]) <= set(committed_after), (committed_before,
                                                                   committed_after)
        injected.append(f"resumed at {resumed_from}, killed after step "
                        f"{fi.last_logged_step(workdir)}{' mid-save' if saving else ''}")

    final = fi.Job(workdir)
    assert final.wait() == [0], final.describe()
    checked = assert_same_as_reference(workdir, reference, exact=True)
    print(f"\n{len(injected)} kill -9 faults injected ({sum('mid-save' in i for i in injected)} "
          f"while a checkpoint was being written): {'; '.join(injected)}. {checked} example "
          "reads checked: each epoch read every example exactly once.")
    assert len(injected) >= min(restarts, 1)


def shared_files(workdir) -> list[str]:
    """The workdir's entries, TensorBoard event files (named by host and time) as one name each."""
    return sorted("events.out.tfevents" if p.name.startswith("events.out.tfevents") else p.name
                  for p in workdir.iterdir())


def test_sigterm_on_one_of_two_hosts_then_resume_on_one(reference, tmp_path):
    """A maintenance event reaches one host: both agree on a step, checkpoint it and exit
    cleanly; the run then resumes on one process (elastic: 2 -> 1). The two processes get only
    the variables srun gives the tasks of a SLURM job, and form one job."""
    workdir = tmp_path / "run"
    job = fi.Job(workdir, processes=2, launcher="slurm")
    assert job.wait_for(lambda: fi.last_logged_step(workdir) >= 6), job.describe()
    job.kill(signal.SIGTERM, process=1)
    assert job.wait() == [0, 0], job.describe()
    for i in range(2):
        assert f"jax.distributed: SLURM, process {i} of 2, coordinator localhost:" in job.output(i)
    stopped = fi.last_logged_step(workdir)
    assert stopped < fi.TOTAL_STEPS and fi.committed_checkpoints(workdir)[-1] == stopped
    fi.assert_close_metrics(fi.metrics(workdir), fi.metrics(reference)[:stopped], rtol=2e-5)
    # Process 0 alone writes the shared files: what a one-process run writes, one TensorBoard
    # writer, each step once in metrics.jsonl (above) and example_indices.jsonl.
    assert shared_files(workdir) == shared_files(reference)
    assert sorted(fi.example_indices(workdir)) == list(range(1, stopped + 1))

    resumed = fi.Job(workdir, processes=1)
    assert resumed.wait() == [0], resumed.describe()
    assert f"resuming at step {stopped}" in resumed.output()
    assert_same_as_reference(workdir, reference, exact=False)


@pytest.mark.slow  # Four processes compiling on a 2-core CI machine take minutes.
def test_kill_9_then_resume_on_four_processes(reference, tmp_path):
    """Elastic: 1 process -> 4 processes of 2 devices, same global batch and example order."""
    workdir = tmp_path / "run"
    job = fi.Job(workdir)
    assert job.wait_for(lambda: fi.committed_checkpoints(workdir)[-1:] == [8]), job.describe()
    job.kill(signal.SIGKILL)
    job.wait()
    resumed = fi.Job(workdir, processes=4)
    assert resumed.wait() == [0] * 4, resumed.describe()
    assert "resuming at step" in resumed.output()
    assert_same_as_reference(workdir, reference, exact=False)


def test_truncated_newest_checkpoint_is_moved_aside_and_an_older_one_used(reference, tmp_path):
    workdir = tmp_path / "run"
    copy_stopped_at(reference, workdir, fi.TOTAL_STEPS)
    newest = workdir / "checkpoints" / str(fi.TOTAL_STEPS)
    data_files = [p for p in newest.rglob("*") if p.is_file() and p.parent.name == "d"]
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    job = fi.Job(workdir)
    assert job.wait() == [0], job.describe()
    assert f"Checkpoint {newest} is unusable" in job.output()
    assert f"resuming at step {fi.TOTAL_STEPS - fi.CHECKPOINT_EVERY}" in job.output()
    assert [p.name.split(".")[0] for p in (workdir / "unusable_checkpoints").iterdir()] == [
        str(fi.TOTAL_STEPS)]
    assert_same_as_reference(workdir, reference, exact=True)


def test_full_disk_while_saving_stops_clearly_and_keeps_the_last_checkpoint(reference, tmp_path):
    workdir = tmp_path / "run"
    last_good = fi.TOTAL_STEPS - fi.CHECKPOINT_EVERY
    copy_stopped_at(reference, workdir, last_good)

    full = fi.Job(workdir, max_file_kib=64)  # Checkpoint files are larger; metrics fit.
    assert full.wait() == [2], full.describe()
    assert (f"Saving checkpoint {fi.TOTAL_STEPS}" in full.output()
            and f"the last complete checkpoint is checkpoint {last_good}" in full.output())
    assert fi.committed_checkpoints(workdir) == [last_good]
    # Intact: bit for bit the reference's checkpoint, from which the same command resumes
    # (as in the test above).
    ours, theirs = fi.final_state(workdir, last_good), fi.final_state(reference, last_good)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
