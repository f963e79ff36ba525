"""Sweeps: the train.py commands for a grid of models x epoch budgets x learning rates x seeds.

Each run is `python train.py --config=configs/<model>.py --workdir=<root>/<model>/<run>` with
the budget, lr and seed set by `--config.total_epochs`, `--config.optimizer.learning_rate`
and `--config.seed`; rerunning a command resumes the run. A model may also be a config with
arguments, `<config>:<args>` (`--config=configs/<config>.py:<args>`), e.g. one size of
configs/scaling_cpu.py; its work directories are named after both.
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


@dataclasses.dataclass(frozen=True)
class ModelGrid:
    """One model's epoch budgets and learning rates in a preset (every budget x every lr)."""

    epochs: tuple[float, ...]
    lrs: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named sweep: each model (a config, with arguments) with its own epoch budgets and lr
    grid, plus extra train.py flags."""

    models: dict[str, ModelGrid]
    extra: tuple[str, ...] = ()

    def specs(self) -> list[RunSpec]:
        return [s for model, g in self.models.items() for s in plan([model], g.epochs, g.lrs)]


@dataclasses.dataclass(frozen=True)
class FamilyGrid:
    """A family of configs/scaling_cpu.py: its (width, depth) shapes, budgets and lr grid."""

    shapes: tuple[tuple[int, int], ...]
    epochs: tuple[float, ...]
    lr_center: float


# The CPU sweep's families (README, "A real sweep on 2 CPU cores"). Shapes: five per family,
# about 2x apart in MACs per example (NFNet 0.06-2.0 MMACs, ViT 0.07-0.80 MMACs), so that an
# IsoFLOP slice holds runs on both sides of its minimum. Budgets: 4 per model (IsoFLOP slices
# need 4, `isoflop.MIN_BUDGETS`), 8x in compute, so that models 2-4x apart overlap; the ViTs
# get 2x the NFNets' epochs, as in pilot runs at the NFNets' budgets the smallest ViT won by
# far (fewer steps lose). The lr grids are centred on each family's best lr in pilot runs
# (configs/scaling_cpu.DEFAULT_LR); scripts/cpu_scaling_sweep.py extends a grid whose best lr
# is an end.
CPU_FAMILIES = {
    "nfnet": FamilyGrid(((4, 1), (8, 1), (12, 1), (16, 1), (24, 1)), (2.0, 4.0, 8.0, 16.0), 0.8),
    "vit": FamilyGrid(((16, 1), (16, 2), (32, 1), (32, 2), (32, 4)), (4.0, 8.0, 16.0, 32.0), 8e-3),
}


def _cpu_models() -> dict[str, ModelGrid]:
    """configs/scaling_cpu.py's models of CPU_FAMILIES, each with a 2x lr grid of 3."""
    return {
        f"scaling_cpu:family={family},width={width},depth={depth}": ModelGrid(
            g.epochs, tuple(lr_grid(g.lr_center, 1, 1))
        )
        for family, g in CPU_FAMILIES.items()
        for width, depth in g.shapes
    }


def lr_grid(center: float, below: int, above: int) -> list[float]:
    """center x 2^k for k = -below..above (a grid spaced by 2x, as Smith et al. 2023)."""
    if not center > 0 or below < 0 or above < 0:
        raise ValueError("lr_grid needs center > 0 and non-negative counts below and above.")
    return [center * 2.0**k for k in range(-below, above + 1)]


# Sweeps of fixed size. `cpu` runs end to end on 2 CPU cores in about 25 minutes (README,
# "A real sweep on 2 CPU cores"): 10 models x 4 epoch budgets x 3 lrs.
PRESETS = {"cpu": lambda: Preset(models=_cpu_models())}


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
    files = {m: config_name(m) for m in models}
    missing = sorted({m for m, f in files.items() if not (configs_dir / f"{f}.py").is_file()})
    if missing:
        available = sorted(p.stem for p in configs_dir.glob("*.py") if p.stem != "__init__")
        raise ValueError(
            f"No config for {missing} in {configs_dir}/; name models after its configs: "
            f"{available}."
        )


def config_name(model: str) -> str:
    """The config file's name of a model entry: 'scaling_cpu' of 'scaling_cpu:family=vit'."""
    return model.partition(":")[0]


def model_dir(model: str) -> str:
    """The work directory folder of a model entry, one path component ('scaling_cpu:family=vit,
    width=32' -> 'scaling_cpu-family=vit-width=32')."""
    return model.replace(":", "-").replace(",", "-").replace("/", "-")


def command(spec: RunSpec, configs_dir="configs", workdir_root="workdirs", extra=()) -> str:
    name, sep, config_args = spec.model.partition(":")
    args = [
        "python",
        "train.py",
        f"--config={pathlib.PurePosixPath(configs_dir) / (name + '.py')}{sep}{config_args}",
        f"--workdir={pathlib.PurePosixPath(workdir_root) / model_dir(spec.model) / spec.name}",
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
