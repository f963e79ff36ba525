"""Sweeps: the train.py commands for a grid of models x epoch budgets x learning rates x seeds.

Each run is `python train.py --config=configs/<model>.py --workdir=<root>/<model>/<run>` with
the budget, lr and seed set by `--config.total_epochs`, `--config.optimizer.learning_rate`
and `--config.seed`; rerunning a command resumes the run.
"""

import dataclasses
import itertools
import pathlib
import shlex


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    epochs: float
    lr: float
    seed: int = 0

    @property
    def name(self) -> str:
        return f"ep{self.epochs:.6g}_lr{self.lr:.6g}_seed{self.seed}"


def lr_grid(center: float, below: int, above: int) -> list[float]:
    """center x 2^k for k = -below..above (a grid spaced by 2x, as Smith et al. 2023)."""
    if not center > 0 or below < 0 or above < 0:
        raise ValueError("lr_grid needs center > 0 and non-negative counts below and above.")
    return [center * 2.0**k for k in range(-below, above + 1)]


def plan(models, epochs, lrs, seeds=(0,)) -> list[RunSpec]:
    for name, values in (("models", models), ("epochs", epochs), ("lrs", lrs), ("seeds", seeds)):
        if not values:
            raise ValueError(f"A sweep needs at least one value of {name}.")
    bad = [v for v in (*epochs, *lrs) if not v > 0]
    if bad:
        raise ValueError(f"Epoch budgets and learning rates must be positive, got {bad}.")
    return [RunSpec(*spec) for spec in itertools.product(models, epochs, lrs, seeds)]


def check_configs(models, configs_dir: str | pathlib.Path) -> None:
    """Every model needs `configs_dir/<model>.py`; the error lists the missing and available."""
    configs_dir = pathlib.Path(configs_dir)
    missing = sorted({m for m in models if not (configs_dir / f"{m}.py").is_file()})
    if missing:
        available = sorted(p.stem for p in configs_dir.glob("*.py") if p.stem != "__init__")
        raise ValueError(
            f"No config for {missing} in {configs_dir}/; name models after its configs: "
            f"{available}."
        )


def command(spec: RunSpec, configs_dir="configs", workdir_root="workdirs", extra=()) -> str:
    args = [
        "python",
        "train.py",
        f"--config={pathlib.PurePosixPath(configs_dir) / (spec.model + '.py')}",
        f"--workdir={pathlib.PurePosixPath(workdir_root) / spec.model / spec.name}",
        f"--config.total_epochs={spec.epochs:.6g}",
        f"--config.optimizer.learning_rate={spec.lr:.6g}",
        f"--config.seed={spec.seed}",
        *extra,
    ]
    return shlex.join(args)


def launch_script(commands: list[str]) -> str:
    """A bash script running the commands one after another (split it to run them in parallel)."""
    header = ["#!/usr/bin/env bash", "# Written by `python -m scaling sweep`.", "set -euo pipefail"]
    return "\n".join(header + commands) + "\n"
