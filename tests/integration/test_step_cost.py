"""Cost is part of correctness: the compiled train step on N devices does one device's work / N
per device, and moves nothing but gradients, parameters and per-channel statistics.

Audited from shapes by benchmarks/step_cost.py (FLOPs of convolutions and dots, loop bodies x
trip counts; collectives from the optimized HLO) on fake CPU devices, in two subprocesses of
tests/cost_cases.py that run side by side. Tiny models, global batch 64 at 64 px, so that the
per-example work dominates.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cost_cases import BATCH, FAMILIES, FEATURES, HALVES, REMAT
from training.sam import ascent_examples

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1.1  # the bar: within 10% of the ideal
GRADIENT = "all-reduce/parameter/gradient"
SMALL = "all-reduce/small"
DATA_PARALLEL_COLLECTIVES = {GRADIENT, SMALL}
FSDP_COLLECTIVES = DATA_PARALLEL_COLLECTIVES | {
    "all-gather/parameter/gradient", "reduce-scatter/parameter/gradient"}


@pytest.fixture(scope="module")
def costs() -> dict:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="32", JAX_PLATFORMS="cpu")
    parts = [
        subprocess.Popen([sys.executable, "-m", "tests.cost_cases", part], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for part in ("convnets", "vits_and_features")
    ]
    report = {"families": {}, "features": {}}
    for process in parts:
        out, err = process.communicate()
        assert process.returncode == 0, err[-3000:]
        part = json.loads(out.strip().splitlines()[-1])
        report["families"] |= part["families"]
        report["features"] |= part["features"]
        if "grouped_conv_all_gathers" in part:
            report["grouped_conv_all_gathers"] = part["grouped_conv_all_gathers"]
    report["features"]["plain"] = report["families"]["nfnet"]
    return report


def per_device_ratio(case: dict, one_device: dict, factor: float = 1.0) -> float:
    """Per-device FLOPs / (one device's FLOPs x factor / N)."""
    return case["flops"] / (one_device["flops"] * factor / case["devices"])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_device_does_its_share_of_the_work(costs, family):
    meshes = costs["families"][family]
    for name, case in meshes.items():
        if name != "one":
            ratio = per_device_ratio(case, meshes["one"])
            assert 1 / TOLERANCE < ratio < TOLERANCE, (name, ratio)


@pytest.mark.parametrize("family", FAMILIES)
def test_data_parallelism_moves_only_gradients(costs, family):
    for name, case in costs["families"][family].items():
        if name.startswith("data") and "fsdp" not in name:
            moved = case["collective_bytes"]
            assert set(moved) <= DATA_PARALLEL_COLLECTIVES, (name, moved)
            assert moved[GRADIENT] <= TOLERANCE * case["param_bytes"], (name, moved)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_moves_only_parameters_and_gradients(costs, family):
    case = costs["families"][family]["data4_fsdp2"]
    moved = case["collective_bytes"]
    assert set(moved) <= FSDP_COLLECTIVES, moved
    assert "reduce-scatter/parameter/gradient" in moved  # sharded gradients are not all-reduced
    gathered = moved["all-gather/parameter/gradient"]
    # Each layer gathered twice at most: forward, and again in the backward pass (fsdp.py).
    assert gathered <= 2 * TOLERANCE * case["param_bytes"], moved


@pytest.mark.parametrize("family", ["nfnet", "vit_p", "vit_c"])
def test_one_device_step_costs_six_macs_per_example(costs, family):
    """The workaround adds no arithmetic: forward + backward = 6 x MACs (modeling/macs.py) x batch.
    (Not ConvNeXt: XLA:CPU rewrites a depthwise conv's kernel gradient as a dense conv, which
    its FLOP count then includes; TPUs and GPUs keep it depthwise. Nor the ResNet-50 step: at
    2 x 2 feature maps most 3 x 3 taps are padding, which modeling/macs.py counts and XLA does
    not.)"""
    one = costs["families"][family]["one"]
    assert 1 / TOLERANCE < one["flops"] / one["model_flops"] < TOLERANCE


@pytest.mark.parametrize("feature", FEATURES | HALVES)
def test_step_features_keep_each_device_to_its_share(costs, feature):
    one = costs["families"]["nfnet"]["one"]
    for name, case in costs["features"][feature].items():
        factor = 0.5 if feature in HALVES else 1.0  # 'halves' trains on half the batch
        if feature.startswith("sam"):
            changes = FEATURES[feature]
            per_group = BATCH // case["devices"] if feature == "sam_per_replica" else BATCH
            ascent = ascent_examples(per_group, changes["sam.ascent_fraction"])
            factor = 1 + ascent / per_group  # an ascent pass on a fraction of each group
        ratio = per_device_ratio(case, one, factor)
        assert 1 / TOLERANCE < ratio < TOLERANCE, (name, ratio)
        moved = case["collective_bytes"]
        assert set(moved) <= DATA_PARALLEL_COLLECTIVES, (name, moved)
        # Global SAM reduces its ascent gradient too; nothing else moves more than gradients.
        reductions = 2 if feature == "sam_global" else 1
        assert moved[GRADIENT] <= TOLERANCE * reductions * case["param_bytes"], (name, moved)


@pytest.mark.parametrize("feature", REMAT)
def test_rematerialisation_keeps_each_device_to_its_share(costs, feature):
    """Recomputing whole blocks adds at most their forward pass (2 of the step's 6 MACs per
    example: 4/3 of the step); keeping conv and matmul outputs recomputes no conv. Either way
    each device does that work for its 1/N of the batch and moves only gradients.
    (Temporaries: tests/unit/test_block_stack.py and README's compile-time table.)"""
    case = costs["features"][feature]["data8"]
    ratio = per_device_ratio(case, costs["families"]["nfnet"]["one"])
    if feature == "remat_blocks":
        assert 1.1 < ratio < 4 / 3 * TOLERANCE, ratio
    else:
        assert 1 / TOLERANCE < ratio < TOLERANCE, ratio
    moved = case["collective_bytes"]
    assert set(moved) <= DATA_PARALLEL_COLLECTIVES, moved
    assert moved[GRADIENT] <= TOLERANCE * case["param_bytes"], moved


def test_accumulation_loops_over_micro_batches_in_less_memory(costs):
    accumulated = costs["features"]["accumulation"]["data8"]
    plain = costs["features"]["plain"]["data8"]
    assert FEATURES["accumulation"]["grad_accum_steps"] in accumulated["loops"]
    assert accumulated["temp_bytes"] < plain["temp_bytes"]


def test_xla_still_gathers_the_batch_around_a_grouped_conv(costs):
    """openxla/xla#47945, the reason for training/data_parallel.py's shard_map. When this fails, the
    installed XLA keeps a grouped conv's batch sharding: the workaround can go (and this test)."""
    all_gathers = costs["grouped_conv_all_gathers"]
    assert all_gathers["1"] == 0 and all_gathers["16"] == 0  # dense and depthwise: fine
    assert all_gathers["4"] > 0, "openxla/xla#47945 is fixed in this XLA"
