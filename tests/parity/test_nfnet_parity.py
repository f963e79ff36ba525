"""NFNet outputs equal timm's on the same (randomized) weights.

CI checks the exported tiny fixture (no torch needed); where torch and timm are installed,
full-size NFNet-F0 is checked too. Regenerate the fixtures with
tests/fixtures/export_timm_fixtures.py.
"""

from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import nfnets
from modeling.weight_import import CheckpointMismatchError

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOLERANCE = 1e-4  # max |delta logit| <= TOLERANCE * max |logit|, float32 against float64.


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def tiny():
    state_dict = load_file(str(FIXTURES / "nfnet_tiny.safetensors"))
    io = np.load(FIXTURES / "nfnet_tiny_io.npz")
    return state_dict, io["images"], io["logits"]


@pytest.mark.parametrize("scan", [False, True])
def test_tiny_matches_timm(tiny, scan):
    state_dict, images, logits = tiny
    params = nfnets.from_timm(state_dict, "tiny", scan=scan)
    assert ("stage1_blocks" in params) == scan
    model = nfnets.create("tiny", num_classes=logits.shape[-1], scan=scan, **nfnets.TIMM_NUMERICS)
    ours = jax.jit(model.apply, static_argnames="train")({"params": params}, images, train=False)
    assert relative_error(ours, logits) <= TOLERANCE


def test_fixture_is_sensitive_to_numerics(tiny):
    """The reference numerics (tanh GELU, max-eps WS) differ visibly from timm's: the parity
    check above would catch a wrong activation or standardization."""
    state_dict, images, logits = tiny
    params = nfnets.from_timm(state_dict, "tiny")
    model = nfnets.create("tiny", num_classes=logits.shape[-1])
    ours = jax.jit(model.apply, static_argnames="train")({"params": params}, images, train=False)
    assert relative_error(ours, logits) > 1e-3


def test_every_parameter_was_randomized(tiny):
    state_dict, _, _ = tiny
    for key, value in state_dict.items():
        assert np.std(value) > 0 or value.size == 1, key
        if key.endswith(("skipinit_gain", ".gain")):
            assert np.all(value != 1.0) and np.all(value != 0.0), key


def test_mismatch_lists_every_offending_key(tiny):
    state_dict, _, _ = tiny
    broken = dict(state_dict)
    del broken["stem.conv1.weight"]
    del broken["stages.1.1.conv2.gain"]
    broken["stages.9.0.extra.weight"] = np.zeros(3, np.float32)
    broken["final_conv.bias"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        nfnets.from_timm(broken, "tiny")
    message = str(info.value)
    for key in ("stem.conv1.weight", "stages.1.1.conv2.gain", "stages.9.0.extra.weight",
                "final_conv.bias"):
        assert key in message


def test_wrong_variant_is_a_mismatch(tiny):
    state_dict, _, _ = tiny
    with pytest.raises(CheckpointMismatchError, match="Missing keys"):
        nfnets.from_timm(state_dict, "F0")


def test_full_size_f0_matches_timm():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from tests.fixtures.export_timm_fixtures import randomize_, reference_logits

    model = timm.create_model("dm_nfnet_f0", pretrained=False)
    randomize_(model, seed=0)
    state_dict = {k: v.float().numpy() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).standard_normal((2, 67, 67, 3)).astype(np.float32)
    logits = reference_logits(model, images)
    model = nfnets.create("F0", **nfnets.TIMM_NUMERICS)
    params = nfnets.from_timm(state_dict, "dm_nfnet_f0")
    ours = jax.jit(model.apply, static_argnames="train")({"params": params}, images, train=False)
    del torch
    assert relative_error(ours, logits) <= TOLERANCE
