"""Cloud TPU slice names and their shapes (training/tpu_slices.py)."""

import pytest

from training import tpu_slices


@pytest.mark.parametrize(("name", "topology", "chips"), [
    ("v4-8", "v4:2x2x1", 4),
    ("v4-16", "v4:2x2x2", 8),
    ("v4-32", "v4:2x2x4", 16),
    ("v4-64", "v4:2x4x4", 32),
    ("v4-128", "v4:4x4x4", 64),  # Cloud names count TensorCores: 2 per v4 chip
    ("v4-256", "v4:4x4x8", 128),
    ("v4-4096", "v4:8x16x16", 2048),
    ("v5p-128", "v5p:4x4x4", 64),
    ("v5litepod-8", "v5e:2x4", 8),  # one TensorCore per chip: names count chips
    ("v5litepod-64", "v5e:8x8", 64),
    ("v6e-256", "v6e:16x16", 256),
    ("V4:4x4x8", "v4:4x4x8", 128),
    ("v3-32", "v3:4x4", 16),
])
def test_cloud_names_give_the_docs_shapes(name, topology, chips):
    tpu_slice = tpu_slices.parse_slice(name)
    assert (tpu_slice.topology, tpu_slice.chips) == (topology, chips)


def test_megacore_chips_are_one_device():
    assert tpu_slices.parse_slice("v4-8").chip_config == "megacore"
    assert tpu_slices.parse_slice("v5p-8").chip_config == "megacore"
    assert tpu_slices.parse_slice("v6e-8").chip_config is None
    assert tpu_slices.parse_slice("v4-8").accelerator == "tpu_v4"


@pytest.mark.parametrize(("name", "message"), [
    ("v9-8", "Unknown TPU slice 'v9-8'; give a Cloud TPU name such as v4-256"),
    ("tpu", "Unknown TPU slice 'tpu'"),
    ("v4-7", "v4 names count TensorCores, 2 per chip"),
    ("v4-12", "6 chips is not a standard slice"),
    ("v4:2x2", "A v4 slice has 3 dimensions; 'v4:2x2' gives 2"),
    ("v5litepod-2", "2 chips is not a standard slice"),
])
def test_bad_names_are_refused_in_one_sentence(name, message):
    with pytest.raises(tpu_slices.SliceError, match=None) as error:
        tpu_slices.parse_slice(name)
    assert message in str(error.value) and str(error.value).count(". ") <= 1
