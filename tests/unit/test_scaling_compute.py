"""Compute accounting: MACs table vs counter, FLOPs, core hours, MFU, the `compute` command."""

import pytest

from modeling import macs, registry
from scaling import cli, compute, paper_models


def test_table_matches_the_counter_on_the_smallest_paper_model():
    cost = compute.model_cost("nfnet_f0", 224, paper_models.JFT_NUM_CLASSES)
    counted = compute.model_cost("nfnet_f0", 224, paper_models.JFT_NUM_CLASSES, use_table=False)
    assert cost == counted
    # The 1000-class entry agrees with the published NFNet count (F0 at 224 px: 9.487 GMACs).
    assert compute.model_cost("nfnet_f0", 224).macs_per_example / 1e9 == pytest.approx(
        9.487, abs=1e-3
    )


def test_models_outside_the_table_are_counted_and_cached():
    cost = compute.model_cost("nfnet_tiny", 64, 10)
    model = registry.create("nfnet_tiny", num_classes=10)
    assert cost.macs_per_example == macs.model_macs(model, 64)
    assert compute.model_cost("nfnet_tiny", 64, 10) is cost


def test_model_names_resolve_through_the_registry():
    assert compute.canonical_model_name("nfnet_f7plus") == "nfnet_F7+"
    assert compute.model_cost("nfnet_F7+", 224) == compute.model_cost("nfnet_f7plus", 224)
    with pytest.raises(ValueError, match="Unknown model family"):
        compute.canonical_model_name("resnet_50")


def test_training_flops_are_six_per_mac_and_example():
    assert compute.training_flops(2e9, 1e6) == 6 * 2e9 * 1e6


def test_f7plus_reproduces_the_papers_compute_and_core_hours():
    cost = compute.model_cost("nfnet_f7plus", 224, paper_models.JFT_NUM_CLASSES)
    flops = compute.training_flops(cost.macs_per_example, 8 * 4e9)
    assert flops == pytest.approx(1.9e22, rel=0.02)  # reference: ~1.9e22 training FLOPs
    mfu = compute.paper_f7plus_mfu()
    assert 0.34 < mfu < 0.37  # reference: 110k TPU-v4 core hours imply ~35% MFU
    assert compute.core_hours(flops, "tpu_v4", 0.35) == pytest.approx(110e3, rel=0.03)
    table = compute.paper_table(mfu=mfu)
    row = next(r for r in table if r["model"] == "nfnet_f7plus" and r["epochs"] == 8)
    assert row["core_hours"] == pytest.approx(110e3, rel=1e-9)
    smallest = min(r["core_hours"] for r in table)
    assert 250 < smallest < 500  # the paper's smallest budget is ~0.4k core hours


def test_core_hours_and_implied_mfu_are_inverse():
    hours = compute.core_hours(1e21, "h100_sxm", 0.4)
    assert hours == pytest.approx(1e21 / (989.4e12 * 0.4 * 3600))
    assert compute.implied_mfu(1e21, hours, "h100_sxm") == pytest.approx(0.4)


def test_measured_mfu_is_the_median_after_the_first_line():
    metrics = [
        {"step": 1, "mfu": 0.05},
        {"step": 2, "mfu": 0.41},
        {"step": 3},
        {"step": 4, "mfu": 0.43},
    ]
    assert compute.measured_mfu(metrics) == pytest.approx(0.42)
    with pytest.raises(ValueError, match="--mfu"):
        compute.measured_mfu([{"step": 1, "train_loss": 2.0}])


@pytest.mark.parametrize(
    "call",
    [
        lambda: compute.training_flops(-1, 10),
        lambda: compute.training_flops(1e9, 0),
        lambda: compute.core_hours(1e20, "tpu_v4", 0.0),
        lambda: compute.core_hours(1e20, "tpu_v4", 35),
        lambda: compute.model_cost("nfnet_f0", 0),
    ],
)
def test_bad_input_is_rejected(call):
    with pytest.raises(ValueError):
        call()


def test_compute_command_prints_flops_and_core_hours(capsys):
    argv = ["compute", "--model", "nfnet_f7plus", "--epochs", "8", "--examples", "4e9"]
    assert cli.main(argv + ["--resolution", "224", "--num-classes", "30000", "--mfu", "0.35"]) == 0
    out = capsys.readouterr().out
    assert "1.936e+22" in out and "111,772 TPU v4 core hours at 35.0% MFU" in out
    assert cli.main(["compute", "--table"]) == 0
    assert "110,000" in capsys.readouterr().out
