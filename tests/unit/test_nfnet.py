"""NFNet structure: sizes against the reference table, bookkeeping, modes and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets
from modeling.macs import abstract_variables, count_params, model_macs
from nfnets.layers import standardize_weight
from nfnets.model import block_betas, bottleneck_width

# docs/reference-numbers.md, 1000 classes. F7's table entry reads 499,503,992, 96 below this figure;
# every step F(k) -> F(k+1) adds exactly 61,144,972 parameters (one more block per stage
# fraction, identical block shapes), which the table's own F0..F6 entries obey and its F7
# entry alone breaks, so the table's F7 figure is a typo. See test_parameter_progression.
EXACT_PARAMS = {
    "F0": 71_489_284,
    "F1": 132_634_256,
    "F2": 193_779_228,
    "F3": 254_924_200,
    "F4": 316_069_172,
    "F5": 377_214_144,
    "F6": 438_359_116,
    "F7": 499_504_088,
}
APPROX_PARAMS = {"F3+": 423.4e6, "F7+": 829.6e6}


def params_of(variant, num_classes=1000, **overrides):
    model = nfnets.create(variant, num_classes=num_classes, **overrides)
    return count_params(abstract_variables(model, resolution=32)["params"])


@pytest.mark.parametrize("variant", list(EXACT_PARAMS))
def test_parameter_counts_are_exact(variant):
    assert params_of(variant) == EXACT_PARAMS[variant]


def test_parameter_progression():
    steps = np.diff([EXACT_PARAMS[f"F{k}"] for k in range(8)])
    assert np.all(steps == 61_144_972)


@pytest.mark.parametrize("variant", list(APPROX_PARAMS))
def test_plus_variants_within_a_tenth_of_a_percent(variant):
    assert params_of(variant) == pytest.approx(APPROX_PARAMS[variant], rel=1e-3)


def test_f7plus_with_jft_head():
    assert params_of("F7+", num_classes=30_000) == pytest.approx(948.4e6, rel=1e-3)


def test_unrounded_bottleneck_reproduces_published_f4plus():
    # Brock et al. 2021a report 527M params for F4+: the first stage keeps a 192-wide bottleneck.
    assert params_of("F4+", bottleneck_rounding="none") == pytest.approx(527e6, rel=1e-3)
    assert params_of("F4+") != pytest.approx(527e6, rel=1e-3)  # released rounding: 525.0M


@pytest.mark.parametrize(
    "variant, resolution, gmacs",
    [("F0", 256, 12.384), ("F0", 224, 9.487), ("F0", 192, 6.977), ("F1", 320, 35.539),
     ("F3+", 224, 51.72)],
)
def test_macs_match_reference(variant, resolution, gmacs):
    macs = model_macs(nfnets.create(variant), resolution)
    assert macs / 1e9 == pytest.approx(gmacs, rel=5e-3)


def test_bottleneck_rounding():
    assert bottleneck_width(384, 0.5, 128, "group") == 128  # F+ first stage, released code
    assert bottleneck_width(384, 0.5, 128, "none") == 192
    assert bottleneck_width(1536, 0.5, 128, "group") == 768
    with pytest.raises(ValueError, match="rounding"):
        bottleneck_width(384, 0.5, 128, "up")


def test_betas_follow_expected_std_bookkeeping():
    alpha = 0.2
    s = lambda n: 1 / np.sqrt(1 + n * alpha**2)  # beta after n blocks since the last reset
    # F0, depths 1, 2, 6, 3: a stage's first block sees the previous stage's accumulated std;
    # the variance restarts from 1 after it (its shortcut is a fresh projection).
    expected = [1.0, s(1), s(1), s(2), s(1), s(2), s(3), s(4), s(5), s(6), s(1), s(2)]
    np.testing.assert_allclose(block_betas((1, 2, 6, 3), alpha), expected)


def test_weight_standardization_formulas():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    gain = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    fan_in = 3 * 3 * 4
    mean = kernel.mean(axis=(0, 1, 2))
    var = kernel.var(axis=(0, 1, 2))
    reference = (kernel - mean) / np.sqrt(np.maximum(var * fan_in, 1e-4)) * gain
    timm = (kernel - mean) / np.sqrt(var + 1e-5) * gain / np.sqrt(fan_in)
    np.testing.assert_allclose(standardize_weight(kernel, gain, "reference"), reference, atol=1e-6)
    np.testing.assert_allclose(standardize_weight(kernel, gain, "timm"), timm, atol=1e-6)
    # The max(., 1e-4) floor matters for a constant kernel: no division by zero.
    assert np.all(np.isfinite(standardize_weight(np.ones_like(kernel), gain, "reference")))


@pytest.fixture(scope="module")
def tiny():
    model = nfnets.create("tiny", num_classes=7, stochastic_depth=0.5, dropout=0.5)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), images, train=False)
    return model, variables, images


def jit_apply(model):
    return jax.jit(model.apply, static_argnames="train")


def test_init_matches_reference(tiny):
    model, variables, _ = tiny
    params = variables["params"]
    assert set(variables) == {"params"}  # no batch statistics
    blocks = [v for k, v in params.items() if "_block" in k]
    assert all(np.all(np.asarray(b["skip_gain"]) == 0.0) for b in blocks)
    assert all(np.all(np.asarray(b["conv1"]["gain"]) == 1.0) for b in blocks)
    head = np.asarray(params["head"]["kernel"])
    assert head.std() == pytest.approx(0.01, rel=0.1) and np.all(params["head"]["bias"] == 0)


def test_eval_is_deterministic_and_train_draws_from_dropout_stream(tiny):
    model, variables, images = tiny
    params = jax.tree.map(lambda x: x, variables["params"])
    # Switch the residual branches on so stochastic depth is visible.
    for key in params:
        if "_block" in key:
            params[key]["skip_gain"] = jnp.ones_like(params[key]["skip_gain"])
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


def test_stochastic_depth_drops_whole_examples():
    from nfnets.layers import StochasticDepth

    x = jnp.ones((1000, 2, 2, 3))
    out = StochasticDepth().apply({}, x, 0.3, rngs={"dropout": jax.random.key(0)})
    per_example = np.asarray(out).reshape(1000, -1)
    assert set(np.unique(per_example)) <= {0.0, 1.0}  # no 1 / keep_prob rescaling (reference)
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    assert per_example[:, 0].mean() == pytest.approx(0.7, abs=0.05)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
    model, variables, images = tiny
    bf16 = nfnets.create("tiny", num_classes=7, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits32 = jit_apply(model)(variables, images, train=False)
    logits16 = jit_apply(bf16)(variables, images, train=False)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * float(jnp.abs(logits32).max()))


@pytest.mark.parametrize("spelling", ["F3+", "f3plus", "nfnet_f3plus", "dm_nfnet_f3+"])
def test_variant_spellings(spelling):
    assert nfnets.canonical_name(spelling) == "F3+"


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown NFNet variant 'F9'.*'F0'.*'F7\+'"):
        nfnets.create("F9")


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="stochdepth"):
        nfnets.create("F0", stochdepth=0.1)
    with pytest.raises(ValueError, match="activation"):
        nfnets.create("tiny", activation="swishy").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
        )


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 32, 32, 1), (1, 3, 32, 32)])
def test_bad_image_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="NHWC images with 3 channels"):
        nfnets.create("tiny").init(jax.random.key(0), jnp.zeros(shape), train=False)


def test_summary_command_prints_the_table(capsys):
    from nfnets.__main__ import main

    main(["tiny"])
    out = capsys.readouterr().out
    assert "tiny" in out and f"{params_of('tiny'):,}" in out
