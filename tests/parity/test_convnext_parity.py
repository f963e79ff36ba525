"""ConvNeXt and the roadmap's ResNet-50 compute what timm computes on the same (randomized)
weights.

CI checks small exported fixtures (no torch needed); where torch and timm are installed,
full-size ConvNeXt-T and ResNet-50 are checked too. Regenerate fixtures:
python tests/fixtures/export_timm_fixtures.py convnext_test resnet50_test
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import convnext
from convnext import layers
from modeling.weight_import import CheckpointMismatchError

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOLERANCE = 1e-4  # max |delta logit| <= TOLERANCE * max |logit|, float32 against float64.
# The sizes of the fixtures (CONVNEXT_TEST_SIZE, RESNET_TEST_SIZE in export_timm_fixtures.py).
# Unrolled blocks, except where a test asks for scanned ones.
CONVNEXT_SIZE = dict(depths=(1, 2, 1, 1), widths=(16, 32, 48, 64), scan=False)
RESNET_SIZE = dict(depths=(1, 2, 1, 1), widths=(32, 64, 96, 128), scan=False)


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def load(name):
    io = np.load(FIXTURES / f"{name}_io.npz")
    return load_file(str(FIXTURES / f"{name}.safetensors")), io["images"], io["logits"]


def evaluator(variant, num_classes, **size):
    model = convnext.create(variant, num_classes=num_classes, **size)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture(scope="module")
def small_convnext():
    state_dict, images, logits = load("convnext_test")
    return state_dict, images, logits, evaluator("T", logits.shape[-1], **CONVNEXT_SIZE)


@pytest.fixture(scope="module")
def small_resnet():
    state_dict, images, logits = load("resnet50_test")
    return state_dict, images, logits, evaluator("resnet50", logits.shape[-1], **RESNET_SIZE)


@pytest.mark.parametrize("scan", [False, True])
def test_convnext_matches_timm(small_convnext, scan):
    state_dict, images, logits, _ = small_convnext
    size = dict(CONVNEXT_SIZE, scan=scan)
    params = convnext.from_timm(state_dict, "T", **size)
    assert ("stage1_blocks" in params) == scan
    evaluate = evaluator("T", logits.shape[-1], **size)
    assert relative_error(evaluate({"params": params}, images), logits) <= TOLERANCE


@pytest.mark.parametrize("scan", [False, True])
def test_resnet50_matches_timm(small_resnet, scan):
    state_dict, images, logits, _ = small_resnet
    size = dict(RESNET_SIZE, scan=scan)
    variables = convnext.variables_from_timm(state_dict, "resnet50", **size)
    assert set(variables) == {"params", "batch_stats"}
    assert ("stage1_blocks" in variables["batch_stats"]) == scan
    evaluate = evaluator("resnet50", logits.shape[-1], **size)
    assert relative_error(evaluate(variables, images), logits) <= TOLERANCE


def test_convnext_fixture_sees_every_block(small_convnext):
    """With layer scales at their 1e-6 init the blocks would vanish from the logits; the
    fixture's random scales make every block count."""
    state_dict, images, logits, evaluate = small_convnext
    params = convnext.from_timm(state_dict, "T", **CONVNEXT_SIZE)
    for block in ("stage0_block0", "stage1_block1", "stage3_block0"):
        changed = jax.tree.map(lambda x: x, params)
        changed[block]["layer_scale"] = jnp.full_like(changed[block]["layer_scale"], 1e-6)
        assert relative_error(evaluate({"params": changed}, images), logits) > 100 * TOLERANCE


def test_convnext_fixture_tells_exact_from_tanh_gelu(small_convnext, monkeypatch):
    state_dict, images, logits, _ = small_convnext
    monkeypatch.setitem(layers.ACTIVATIONS, "gelu", lambda x: jax.nn.gelu(x, approximate=True))
    evaluate = evaluator("T", logits.shape[-1], **CONVNEXT_SIZE)
    params = convnext.from_timm(state_dict, "T", **CONVNEXT_SIZE)
    # About 3.6x the tolerance: the parity check would catch a tanh GELU.
    assert relative_error(evaluate({"params": params}, images), logits) > 2 * TOLERANCE


def test_resnet_fixture_needs_the_running_statistics(small_resnet):
    state_dict, images, logits, evaluate = small_resnet
    variables = convnext.variables_from_timm(state_dict, "resnet50", **RESNET_SIZE)
    for stat in ("mean", "var"):
        changed = jax.tree_util.tree_map_with_path(
            lambda p, x, s=stat: np.full_like(x, 1.0) if s in str(p[-1]) else x,
            variables["batch_stats"],
        )
        out = evaluate({"params": variables["params"], "batch_stats": changed}, images)
        assert relative_error(out, logits) > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["convnext_test", "resnet50_test"])
def test_every_parameter_was_randomized(name):
    state_dict, _, _ = load(name)
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert np.std(value) > 0, key
        if key.endswith((".gamma", "running_var")):
            assert np.all(value >= 0.5), key  # layer scales far from their 1e-6 init


def test_mismatch_lists_every_offending_key(small_convnext):
    state_dict, _, _, _ = small_convnext
    broken = dict(state_dict)
    del broken["stem.0.weight"]
    del broken["stages.1.blocks.1.gamma"]
    broken["stages.9.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    broken["stages.2.blocks.0.mlp.fc1.bias"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        convnext.from_timm(broken, "T", **CONVNEXT_SIZE)
    message = str(info.value)
    for key in (
        "stem.0.weight",
        "stages.1.blocks.1.gamma",
        "stages.9.blocks.0.extra.weight",
        "stages.2.blocks.0.mlp.fc1.bias",
    ):
        assert key in message


def test_resnet_mismatch_lists_statistics_too(small_resnet):
    state_dict, _, _, _ = small_resnet
    broken = {k: v for k, v in state_dict.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(CheckpointMismatchError, match=r"layer2\.1\.bn2\.running_var"):
        convnext.variables_from_timm(broken, "resnet50", **RESNET_SIZE)


def test_wrong_size_is_a_mismatch(small_convnext):
    state_dict, _, _, _ = small_convnext
    with pytest.raises(CheckpointMismatchError, match="Missing keys"):
        convnext.from_timm(state_dict, "T")


def test_steps_without_a_timm_model_are_refused(small_convnext):
    state_dict, _, _, _ = small_convnext
    with pytest.raises(ValueError, match="timm has no model laid out as 'roadmap_gelu'"):
        convnext.from_timm(state_dict, "roadmap_gelu")


def test_from_timm_does_not_drop_running_statistics(small_resnet):
    state_dict, _, _, _ = small_resnet
    with pytest.raises(ValueError, match="variables_from_timm"):
        convnext.from_timm(state_dict, "resnet50", **RESNET_SIZE)


def full_size_error(timm_name, variant):
    pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from tests.fixtures.export_timm_fixtures import randomize_, reference_logits

    model = timm.create_model(timm_name, pretrained=False)
    randomize_(model, seed=0)
    state_dict = {k: v.float().numpy() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    logits = reference_logits(model, images)
    variables = convnext.variables_from_timm(state_dict, variant)
    ours = evaluator(variant, 1000)(variables, images)
    return relative_error(ours, logits)


def test_full_size_convnext_tiny_matches_timm():
    assert full_size_error("convnext_tiny", "T") <= TOLERANCE


def test_full_size_resnet50_matches_timm():
    assert full_size_error("resnet50", "resnet50") <= TOLERANCE
