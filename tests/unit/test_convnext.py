"""ConvNeXt structure: initialization, train and eval modes, dtypes, names and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import convnext
from convnext.model import drop_path_rates
from modeling.macs import abstract_variables, count_params

# Two stages: every kind of layer (stem, blocks, downsampling, head) at little compile time.
SMALL = dict(depths=(1, 2), widths=(16, 32))


def jit_apply(model):
    return jax.jit(model.apply, static_argnames="train")


def jit_init(model, images):
    # XLA compiles the 'rbg' PRNG far faster than threefry on CPU; the initializers draw from
    # the same distributions with either.
    init = jax.jit(model.init, static_argnames="train")
    return init(jax.random.key(0, impl="rbg"), images, train=False)


@pytest.fixture(scope="module")
def small():
    model = convnext.create(
        "tiny", num_classes=1000, drop_path_rate=0.5, head_init_scale=0.5, **SMALL
    )
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    return model, jit_init(model, images), images


def test_init_matches_convnext(small):
    _, variables, _ = small
    params = variables["params"]
    assert set(variables) == {"params"}  # LayerNorm only: no batch statistics
    blocks = [v for k, v in params.items() if "_block" in k]
    assert all(np.all(np.asarray(b["layer_scale"]) == np.float32(1e-6)) for b in blocks)
    # Every conv and linear kernel ~ N(0, 0.02^2) (trunc-normal at +-2, i.e. +-100 std), bias 0;
    # the head's kernel is scaled by head_init_scale.
    leaves = jax.tree_util.tree_leaves_with_path({k: v for k, v in params.items() if k != "head"})
    kernels = np.concatenate([np.ravel(x) for p, x in leaves if "kernel" in str(p)])
    assert kernels.std() == pytest.approx(0.02, rel=0.02) and np.abs(kernels).max() < 0.2
    assert np.std(params["head"]["kernel"]) == pytest.approx(0.02 * 0.5, rel=0.02)
    biases = [x for p, x in jax.tree_util.tree_leaves_with_path(params) if "bias" in str(p)]
    assert all(np.all(np.asarray(b) == 0) for b in biases)
    assert np.all(np.asarray(params["head_norm"]["scale"]) == 1)


def test_drop_path_rates_are_linear_over_all_blocks():
    # ConvNeXt: torch.linspace(0, rate, sum(depths)).
    np.testing.assert_allclose(drop_path_rates(0.4, 5), [0.0, 0.1, 0.2, 0.3, 0.4])
    assert drop_path_rates(0.4, 1) == [0.0]


def test_drop_path_keeps_the_expectation():
    from convnext.layers import DropPath

    x = jnp.ones((4000, 1, 1, 2))
    out = np.asarray(DropPath().apply({}, x, 0.25, rngs={"dropout": jax.random.key(0)}))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) <= {0.0, np.float32(1 / 0.75)}
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # whole examples
    assert per_example.mean() == pytest.approx(1.0, abs=0.05)


def test_eval_is_deterministic_and_train_draws_from_dropout_stream(small):
    model, variables, images = small
    # Open the residual branches (layer scale 1e-6 would hide them).
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.ones_like(x) if "layer_scale" in str(p) else x, variables["params"]
    )
    variables = {"params": params}
    apply = jit_apply(model)
    ev = lambda: apply(variables, images, train=False)
    np.testing.assert_array_equal(ev(), ev())
    tr = lambda seed: apply(variables, images, train=True, rngs={"dropout": jax.random.key(seed)})
    np.testing.assert_array_equal(tr(3), tr(3))
    assert not np.allclose(tr(3), tr(4))
    assert not np.allclose(tr(3), ev())
    with pytest.raises(Exception, match="dropout"):
        apply(variables, images, train=True)


def test_bfloat16_compute_keeps_float32_params_and_logits(small):
    model, variables, images = small
    bf16 = model.clone(dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits32 = jit_apply(model)(variables, images, train=False)
    logits16 = jit_apply(bf16)(variables, images, train=False)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * float(jnp.abs(logits32).max()))


@pytest.mark.parametrize("spelling", ["T", "t", "tiny", "convnext_tiny", "ConvNeXt-T"])
def test_variant_spellings(spelling):
    assert convnext.canonical_name(spelling) == "tiny"


def test_other_spellings():
    assert convnext.canonical_name("XL") == "xlarge"
    assert convnext.canonical_name("resnet50") == "roadmap_resnet50"
    assert convnext.canonical_name("convnext_roadmap_gelu") == "roadmap_gelu"


def test_model_registry_knows_the_family():
    from modeling import registry

    model = registry.create("convnext_tiny", num_classes=10)
    assert isinstance(model, convnext.ConvNeXt) and model.widths == (96, 192, 384, 768)
    assert registry.variant_info("convnext_roadmap_resnet50")["stem"] == "resnet"
    assert registry.variant_info("convnext_S")["drop_path_rate"] == 0.4


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown ConvNeXt variant 'huge'.*'tiny'.*'xlarge'"):
        convnext.create("huge")


def test_unknown_roadmap_step_names_the_steps():
    with pytest.raises(
        ValueError, match=r"Unknown roadmap step 'roadmap_swish'.*'resnet50'.*'gelu'"
    ):
        convnext.create("roadmap_swish")


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="drop_path'.*drop_path_rate"):
        convnext.create("T", drop_path=0.1)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(activation="swish"), "Unknown activation 'swish'"),
        (dict(norm="group"), "Unknown norm 'group'"),
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(depths=(3, 3, 9)), "same"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
        (dict(spatial_conv="middle"), "need spatial_conv='first'"),
        (dict(weight_init="xavier"), "Unknown weight_init"),
    ],
)
def test_bad_fields_are_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        convnext.create("T", **override)


def test_resnet_init_refuses_a_head_scale():
    model = convnext.create("resnet50", head_init_scale=0.001)
    with pytest.raises(ValueError, match="head_init_scale applies to weight_init='convnext'"):
        abstract_variables(model, 32)


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 32, 32, 1), (1, 3, 32, 32), (1, 31, 64, 3)])
def test_bad_image_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="NHWC images with 3 channels|at least 32 px"):
        convnext.create("tiny").init(jax.random.key(0), jnp.zeros(shape), train=False)


def test_summary_command_prints_the_table(capsys):
    from convnext.__main__ import main

    main(["roadmap_depthwise"])
    out = capsys.readouterr().out
    params = count_params(abstract_variables(convnext.create("roadmap_depthwise"), 32)["params"])
    assert "roadmap_depthwise" in out and f"{params:,}" in out and "2.35" in out
