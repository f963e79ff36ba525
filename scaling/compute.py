"""Training compute: MACs per example, training FLOPs, accelerator core hours and MFU.

Convention: training FLOPs = 6 x MACs per example x examples seen. A multiply-accumulate is
2 FLOPs and the backward pass costs twice the forward pass (gradients with respect to the
activations and to the weights), so forward + backward = 3 x forward = 6 FLOPs per MAC
(Kaplan et al. 2020, Sec. 2.1; Hoffmann et al. 2022, App. F). MACs are counted at the training
resolution with `macs.model_macs`; evaluation, data augmentation and the optimizer update are
not counted.

Core hours = FLOPs / (peak FLOP/s per core x MFU x 3600), with the peak from `modeling/hardware.py`.
"""

import dataclasses
import functools
import math
from collections.abc import Iterable

from modeling import hardware, macs, registry
from scaling import paper_models

TRAIN_FLOPS_PER_MAC = 6
SECONDS_PER_HOUR = 3600.0


@dataclasses.dataclass(frozen=True)
class ModelCost:
    macs_per_example: int
    params: int


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def canonical_model_name(name: str) -> str:
    """The registry spelling of a model name: 'nfnet_f7plus' and 'nfnet_F7+' give 'nfnet_F7+'."""
    family, variant = registry.split_name(name)
    return f"{family}_{registry.family_package(family).canonical_name(variant)}"


@functools.cache
def _counted_cost(name: str, resolution: int, num_classes: int, overrides=()) -> ModelCost:
    model = registry.create(name, num_classes=num_classes, **dict(overrides))
    variables = macs.abstract_variables(model, resolution)
    return ModelCost(macs.model_macs(model, resolution), macs.count_params(variables["params"]))


def _frozen(value):
    """JSON lists (a config.json's tuples) as tuples, so that overrides hash and compare."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def model_cost(
    name: str,
    resolution: int,
    num_classes: int = 1000,
    *,
    use_table: bool = True,
    overrides: dict | None = None,
) -> ModelCost:
    """MACs per example at `resolution` px and parameter count of a registered model, with
    `overrides` of its module fields (config.model.overrides, e.g. widths and depths).

    The paper's models come from `paper_models.PRECOMPUTED` (unless `use_table=False` or
    overridden); anything else is counted once per process (seconds to a minute for large ones).
    """
    for field, value in (("resolution", resolution), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive integer, got {value!r}.")
    key = (canonical_model_name(name), resolution, num_classes)
    frozen = tuple(sorted((k, _frozen(v)) for k, v in (overrides or {}).items()))
    # Overrides of fields outside the variant table (dropout, stochastic depth, layout) change
    # neither MACs nor parameters: the table still holds.
    if use_table and not _changed_fields(name, overrides) and key in paper_models.PRECOMPUTED:
        return ModelCost(*paper_models.PRECOMPUTED[key])
    return _counted_cost(*key, frozen)


def _changed_fields(name: str, overrides: dict | None) -> dict:
    """The overrides that change a field of the model's variant table entry."""
    entry = registry.variant_info(name)
    return {
        k: _frozen(v)
        for k, v in sorted((overrides or {}).items())
        if k in entry and _frozen(v) != _frozen(entry[k])
    }


def model_label(name: str, overrides: dict | None = None) -> str:
    """The model's name in a runs table: the registry name, followed by the overrides that
    change fields of its variant table entry ('nfnet_tiny[depths=(2, 4, 4, 2)]'), so that runs
    of differently shaped models are never taken for one model."""
    changed = _changed_fields(name, overrides)
    if not changed:
        return name
    return name + "[" + ", ".join(f"{k}={v}" for k, v in changed.items()) + "]"


def training_flops(macs_per_example: float, examples: float) -> float:
    """FLOPs = 6 x MACs per example x examples (forward + backward, see module docstring)."""
    _check_positive("macs_per_example", macs_per_example)
    _check_positive("examples", examples)
    return TRAIN_FLOPS_PER_MAC * float(macs_per_example) * float(examples)


def _accelerator(acc: str | hardware.Accelerator) -> hardware.Accelerator:
    return hardware.accelerator(acc) if isinstance(acc, str) else acc


def _check_mfu(mfu: float) -> None:
    if not (isinstance(mfu, int | float) and 0 < mfu <= 1):
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}; e.g. 0.35 for 35%.")


def core_hours(flops: float, accelerator: str | hardware.Accelerator, mfu: float) -> float:
    """Core hours = FLOPs / (peak FLOP/s per core x MFU x 3600 s)."""
    _check_positive("flops", flops)
    _check_mfu(mfu)
    return flops / (_accelerator(accelerator).peak_flops_per_core * mfu * SECONDS_PER_HOUR)


def implied_mfu(flops: float, hours: float, accelerator: str | hardware.Accelerator) -> float:
    """The MFU at which `flops` take `hours` core hours: FLOPs / (peak per core x 3600 x hours)."""
    _check_positive("flops", flops)
    _check_positive("core hours", hours)
    return flops / (_accelerator(accelerator).peak_flops_per_core * SECONDS_PER_HOUR * hours)


def measured_mfu(metrics: Iterable[dict]) -> float:
    """Median `mfu` over a run's logged lines, leaving out the first (it includes compilation).

    The training loop logs `mfu` = model FLOPs per second per device / the device's peak from
    `hardware.peak_flops_per_second`.
    """
    values = [float(m["mfu"]) for m in metrics if m.get("mfu") is not None]
    if not values:
        raise ValueError(
            "No `mfu` values in the run's metrics (train.py logs them on accelerators only); "
            "pass an assumed MFU instead, e.g. --mfu 0.35."
        )
    values = values[1:] if len(values) > 1 else values
    values.sort()
    mid = len(values) // 2
    mfu = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
    _check_mfu(mfu)
    return mfu


def paper_f7plus_mfu(accelerator: str = "tpu_v4") -> float:
    """MFU implied by F7+ taking ~110k TPU-v4 core hours for 8 JFT epochs (Smith et al. 2023)."""
    ref = paper_models.F7PLUS_CORE_HOURS
    if accelerator != ref["accelerator"]:
        raise ValueError(
            f"The paper's core hours are on {ref['accelerator']}; got {accelerator!r}: pass "
            "an explicit MFU for other accelerators."
        )
    cost = model_cost(ref["model"], paper_models.PRETRAIN_RESOLUTION, paper_models.JFT_NUM_CLASSES)
    flops = training_flops(cost.macs_per_example, ref["epochs"] * paper_models.JFT_NUM_EXAMPLES)
    return implied_mfu(flops, ref["core_hours"], accelerator)


def paper_table(
    accelerator: str = "tpu_v4",
    mfu: float | None = None,
    epochs: Iterable[float] = paper_models.EPOCH_BUDGETS,
) -> list[dict]:
    """Pre-training cost of the paper's models on JFT-4B at 224 px for each epoch budget.

    `mfu=None` uses the MFU implied by the paper's F7+ figure (`paper_f7plus_mfu`).
    """
    mfu = paper_f7plus_mfu(accelerator) if mfu is None else mfu
    rows = []
    for name in paper_models.MODELS:
        cost = model_cost(name, paper_models.PRETRAIN_RESOLUTION, paper_models.JFT_NUM_CLASSES)
        for ep in epochs:
            flops = training_flops(cost.macs_per_example, ep * paper_models.JFT_NUM_EXAMPLES)
            rows.append(
                dict(
                    model=name,
                    params=cost.params,
                    macs_per_example=cost.macs_per_example,
                    epochs=ep,
                    flops=flops,
                    core_hours=core_hours(flops, accelerator, mfu),
                    accelerator=accelerator,
                    mfu=mfu,
                )
            )
    return rows
