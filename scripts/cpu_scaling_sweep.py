"""The CPU scaling sweep end to end: `python -m scaling sweep --preset cpu`, its train.py runs
(`--jobs` at a time), then `collect`, `fit` and `plot`, all into one output folder.

    python scripts/cpu_scaling_sweep.py --out DIR

DIR gets sweep.sh (the runs), workdirs/, logs/, run_times.csv (each run's wall time), runs.csv,
per family runs_<family>.csv, fit_<family>.json and fit_<family>.txt (the fit summary), and
figures/ (both families together) and figures/<family>/. Where a (model, epoch budget)'s best
lr is an end of its grid, the grid is extended by one 2x step beyond that end and the run is
added (`--lr-extensions` rounds), so that every optimum is located inside its grid. Rerunning
the command resumes: a finished run is not trained again. `--no-train` only collects, fits and
plots what DIR holds; `--dry-run` prints the steps and runs nothing.
"""

import argparse
import concurrent.futures
import contextlib
import csv
import io
import os
import pathlib
import shlex
import subprocess
import sys
import time

from scaling import cli, learning_rate, runs, sweep

REPO = pathlib.Path(__file__).resolve().parent.parent

PRESET = "cpu"
FAMILIES = ("nfnet", "vit")


def sweep_commands(out: pathlib.Path) -> list[str]:
    """Writes OUT/sweep.sh with `python -m scaling sweep --preset cpu`; its train.py commands."""
    script = out / "sweep.sh"
    argv = ["sweep", "--preset", PRESET, "--workdir-root", str(out / "workdirs")]
    argv += ["--configs", str(REPO / "configs"), "-o", str(script)]
    argv += [f"--extra={flag}" for flag in _extra_flags(out)]
    _scaling(argv)
    return [line for line in script.read_text().splitlines() if line.startswith("python ")]


def _extra_flags(out: pathlib.Path) -> list[str]:
    # One compilation cache for all runs: runs of a model share their evaluation step.
    return [f"--config.compilation_cache_dir={out / 'compilation_cache'}"]


def lr_extension_commands(out: pathlib.Path, rows: list[dict]) -> list[str]:
    """For each (model, epoch budget) whose best lr is an end of its 2x grid, the run one 2x step
    beyond that end; none where that run was tried and failed (it diverged)."""
    models = {sweep.model_dir(m): m for m in sweep.PRESETS[PRESET]().models}
    preset_model = {r["model"]: models[pathlib.Path(r["run"]).parent.name] for r in rows}
    commands = []
    for choice in learning_rate.choose(rows):
        if choice.bracketed:
            continue
        lr = choice.best_lr * (2.0 if choice.best_lr == max(choice.lrs) else 0.5)
        spec = sweep.RunSpec(preset_model[choice.model], choice.epochs, lr)
        command = sweep.command(spec, REPO / "configs", out / "workdirs", _extra_flags(out))
        if not _workdir(command).exists():
            commands.append(command)
    return commands


def _scaling(argv: list[str], log: pathlib.Path | None = None, ok=(0,)) -> None:
    """`python -m scaling ARGV` in this process, its output also written to `log`; an exit
    status outside `ok` stops the sweep."""
    print("$ python -m scaling " + shlex.join(argv), flush=True)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = cli.main(argv)
    print(text.getvalue(), end="", flush=True)
    if log is not None:
        log.write_text(text.getvalue())
    if status not in ok:
        raise SystemExit(f"`python -m scaling {argv[0]}` failed (exit {status}); see above.")


def _workdir(command: str) -> pathlib.Path:
    (flag,) = [a for a in shlex.split(command) if a.startswith("--workdir=")]
    return pathlib.Path(flag.removeprefix("--workdir="))


def run_one(command: str, log: pathlib.Path) -> float:
    """Runs one train.py command with this interpreter from the repository root; its wall time.
    A failed run stops the sweep with the log's name (rerunning resumes)."""
    argv = [sys.executable, *shlex.split(command)[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    with open(log, "w") as f:
        status = subprocess.run(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if status.returncode:
        raise RuntimeError(f"A run failed (exit {status.returncode}); see {log}.")
    return time.perf_counter() - start


def finished(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds a finished run (its final evaluation logged), which a resumed
    sweep skips rather than starting train.py only to find it done."""
    if runs.not_a_run(workdir):
        return False
    try:
        return runs.read_workdir(workdir)[0] is not None
    except runs.RunsError:  # stopped before its first metrics: train.py starts it again
        return False


def train_all(
    commands: list[str], out: pathlib.Path, jobs: int, log_prefix="run", may_fail=False
) -> list[tuple[str, float]]:
    """Runs the unfinished commands `jobs` at a time; (work directory, seconds) of each. With
    `may_fail`, a failed run is reported and the others go on."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    todo = [(i, c) for i, c in enumerate(commands) if not finished(_workdir(c))]
    if len(todo) < len(commands):
        print(f"{len(commands) - len(todo)} of {len(commands)} runs already finished.")
    done = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {
            pool.submit(run_one, c, logs / f"{log_prefix}{i:03d}.log"): _workdir(c) for i, c in todo
        }
        for future in concurrent.futures.as_completed(futures):
            try:
                done.append((str(futures[future]), future.result()))
            except RuntimeError as e:
                if not may_fail:
                    raise
                print(f"note: {e} Its grid's end stays the best lr.", flush=True)
                continue
            print(f"[{len(done)}/{len(todo)}] {done[-1][1]:6.1f} s {done[-1][0]}", flush=True)
    return done


def _workdirs(out: pathlib.Path) -> list[str]:
    return sorted(str(p) for p in (out / "workdirs").glob("*/*"))


def extend_lr_grids(out: pathlib.Path, jobs: int, rounds: int) -> list[tuple[str, float]]:
    """Up to `rounds` rounds of `lr_extension_commands` runs; (work directory, seconds) of each."""
    times = []
    for round_index in range(rounds):
        rows, _ = runs.collect(_workdirs(out))
        commands = lr_extension_commands(out, rows)
        if not commands:
            break
        print(f"Extending {len(commands)} lr grids whose best lr is an end by one 2x step.")
        times += train_all(commands, out, jobs, f"lr_extension{round_index}_", may_fail=True)
    return times


def write_times(times: list[tuple[str, float]], path: pathlib.Path) -> None:
    """Adds the runs' wall times to `path`, keeping those of earlier (resumed) invocations."""
    earlier = {}
    if path.is_file():
        with open(path, newline="") as f:
            earlier = {row["workdir"]: row["seconds"] for row in csv.DictReader(f)}
    earlier.update((w, f"{t:.1f}") for w, t in times)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["workdir", "seconds"])
        writer.writerows(sorted(earlier.items()))


def split_families(runs_csv: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """runs_<family>.csv for each family in runs.csv: each family gets its own fits."""
    rows = runs.read_csv(runs_csv)
    written = []
    for family in FAMILIES:
        mine = [r for r in rows if r["model"].startswith(f"{family}_")]
        if mine:
            path = runs_csv.with_name(f"runs_{family}.csv")
            runs.write_csv(mine, path)
            written.append((family, path))
    return written


def analyse(out: pathlib.Path, samples: int, law_grid: str) -> None:
    """collect -> runs.csv; fit and plot each family; plot both families together."""
    runs_csv = out / "runs.csv"
    _scaling(["collect", *_workdirs(out), "-o", str(runs_csv)])
    fit_args = ["--samples", str(samples), "--law-grid", law_grid]
    plot = ["--formats", "png", "--dpi", "80", *fit_args]
    for family, path in split_families(runs_csv):
        fit = ["fit", str(path), *fit_args, "-o", str(out / f"fit_{family}.json")]
        _scaling(fit, log=out / f"fit_{family}.txt", ok=(0, 1))  # 1: a fit failed, said why
        _scaling(["plot", str(path), "--out-dir", str(out / "figures" / family), *plot])
    # Both families in one figure compare them at equal compute; its allocation fit mixes two
    # architectures, and the parametric fit's start can overflow (math.exp in
    # fit_chinchilla.ChinchillaLaw.from_theta), after loss_vs_compute.png is written.
    try:
        _scaling(["plot", str(runs_csv), "--out-dir", str(out / "figures"), *plot])
    except OverflowError as e:
        print(f"note: both families' allocation figure left out ({e}).", file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (outside the repository)")
    parser.add_argument("--jobs", type=cli.positive_int, default=2, help="runs at a time")
    parser.add_argument(
        "--samples",
        type=cli.bootstrap_samples,
        default=200,
        help="bootstrap samples of the fits and bands",
    )
    parser.add_argument(
        "--law-grid", default="coarse", choices=sorted(cli.LAW_GRIDS), help="fit and plot's"
    )
    parser.add_argument(
        "--lr-extensions",
        type=cli.nonnegative_int,
        default=2,
        help="rounds of extending each lr grid whose best lr is an end by one 2x step",
    )
    parser.add_argument("--no-train", action="store_true", help="only collect, fit and plot")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    commands = sweep_commands(out)
    if args.dry_run:
        print("\n".join(commands))
        print(f"then up to {args.lr_extensions} rounds of lr-grid extensions, and collect, fit")
        print(f"and plot {', '.join(FAMILIES)} into {out}")
        return 0
    if not args.no_train:
        times = train_all(commands, out, args.jobs)
        times += extend_lr_grids(out, args.jobs, args.lr_extensions)
        write_times(times, out / "run_times.csv")
        print(
            f"{len(times)} runs: {sum(t for _, t in times):.0f} s of runs in "
            f"{time.perf_counter() - start:.0f} s of wall time ({args.jobs} at a time)."
        )
    analyse(out, args.samples, args.law_grid)
    print(f"Done in {time.perf_counter() - start:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
