"""The accelerator peak table (modeling/hardware.py)."""

import pytest

from modeling import hardware


@pytest.mark.parametrize(
    "device_kind, peak",
    [
        ("TPU v3", 61.5e12),  # one TensorCore per JAX device
        ("TPU v4", 275e12),  # megacore: the whole chip per JAX device
        ("TPU v5 lite", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        (" tpu v4 ", 275e12),  # case and spaces do not matter
    ],
)
def test_peak_per_device(device_kind, peak):
    assert hardware.peak_flops_per_second(device_kind) == pytest.approx(peak)


@pytest.mark.parametrize("device_kind", ["cpu", "TPU v99", "NVIDIA GeForce GTX 480"])
def test_no_peak_for_cpus_and_unknown_kinds(device_kind):
    assert hardware.peak_flops_per_second(device_kind) is None


def test_per_core_peaks_count_budgets_in_core_hours():
    assert hardware.accelerator("tpu_v4").peak_flops_per_core == pytest.approx(137.5e12)
    assert hardware.accelerator("tpu_v3").peak_flops_per_core == pytest.approx(61.5e12)
    assert hardware.accelerator("h100_sxm").peak_flops_per_core == pytest.approx(989.4e12)


def test_device_kinds_name_one_accelerator_each():
    kinds = [k.lower() for acc in hardware.ACCELERATORS.values() for k in acc.device_kinds]
    assert len(kinds) == len(set(kinds))


def test_unknown_accelerator_names_the_choices():
    with pytest.raises(ValueError, match="tpu_v4"):
        hardware.accelerator("tpu_v9")
