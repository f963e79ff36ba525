"""ConvNeXt sizes against the paper: T-XL parameters exact and MACs within 0.5%; every roadmap
step's MACs within 2% of Liu et al. 2022, Table 10; the first step is ResNet-50."""

import jax
import pytest

import convnext
from modeling.macs import count_params, jaxpr_macs, model_macs

# docs/reference-numbers.md (facebookresearch/ConvNeXt), 1000 classes, GMACs at 224 px.
SIZES = {
    "tiny": (28_589_128, 4.456),
    "small": (50_223_688, 8.684),
    "base": (88_591_464, 15.355),
    "large": (197_767_336, 34.361),
    "xlarge": (350_196_968, 60.921),
}

# Liu et al. 2022, Table 10 (GFLOPs there are GMACs), in roadmap order.
ROADMAP_GMACS = {
    "resnet50": 4.09,
    "stage_ratio": 4.53,
    "patchify_stem": 4.42,
    "depthwise": 2.35,
    "width_96": 5.27,
    "inverted_bottleneck": 4.64,
    "move_up_depthwise": 4.07,
    "kernel_5": 4.10,
    "kernel_7": 4.15,
    "kernel_9": 4.21,
    "kernel_11": 4.29,
    "gelu": 4.15,
    "fewer_activations": 4.15,
    "fewer_norms": 4.15,
    "layer_norm": 4.15,
    "separate_downsampling": 4.49,
}


def params_and_macs(model, resolution: int = 224) -> tuple[int, int]:
    """Parameters and inference MACs per example from ONE trace of `model.init`.

    `init` runs the forward pass, and the initializers contain no conv or matmul, so the MACs
    of its jaxpr are the forward MACs (test_one_trace_counts_like_model_macs checks this).
    """
    images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), "float32")
    init = lambda x: model.init(jax.random.key(0), x, train=False)
    jaxpr, variables = jax.make_jaxpr(init, return_shape=True)(images)
    return count_params(variables["params"]), jaxpr_macs(jaxpr)


def test_one_trace_counts_like_model_macs():
    model = convnext.create("roadmap_resnet50", depths=(1, 1, 1, 1))
    assert params_and_macs(model, 64)[1] == model_macs(model, 64)


@pytest.mark.parametrize("variant", list(SIZES))
def test_sizes_match_the_paper(variant):
    params, macs = params_and_macs(convnext.create(variant))
    assert params == SIZES[variant][0]
    assert macs / 1e9 == pytest.approx(SIZES[variant][1], rel=5e-3)


def test_base_at_384():
    _, macs = params_and_macs(convnext.create("B"), 384)
    assert macs / 1e9 == pytest.approx(45.122, rel=5e-3)


def test_roadmap_table_is_the_papers():
    assert list(convnext.ROADMAP) == list(ROADMAP_GMACS)
    assert {k: v[0] for k, v in convnext.PAPER_FIGURES.items()} == ROADMAP_GMACS


@pytest.mark.parametrize("step", list(ROADMAP_GMACS))
def test_roadmap_step_macs_within_two_percent(step):
    _, macs = params_and_macs(convnext.create(f"roadmap_{step}"))
    assert macs / 1e9 == pytest.approx(ROADMAP_GMACS[step], rel=0.02)


def test_first_step_is_resnet50():
    # torchvision / pycls ResNet-50: 25,557,032 parameters, 4.09 GMACs at 224 px.
    params, macs = params_and_macs(convnext.create("resnet50"))
    assert params == 25_557_032
    assert macs / 1e9 == pytest.approx(4.089, abs=5e-4)
