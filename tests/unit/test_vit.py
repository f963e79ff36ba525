"""ViT structure: sizes against the reference tables, the conv stem, modes, scan, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import traverse_util

import vit
from modeling import registry
from modeling.macs import count_macs, count_params, model_macs
from vit.layers import Attention, ConvStem, drop_path
from vit.model import abstract_params, drop_path_rates
from vit.posemb import resample, sincos_2d

# Xiao et al. 2021, Table 1 at 224 px: GFLOPs (pycls: MACs plus bias adds) and parameters.
XIAO_TABLE = {
    "P-1GF": (1.1, 4.8e6),
    "P-4GF": (3.9, 18.5e6),
    "P-18GF": (17.5, 86.6e6),
    "P-36GF": (35.9, 178.4e6),
    "C-1GF": (1.1, 4.6e6),
    "C-4GF": (4.0, 17.8e6),
    "C-18GF": (17.7, 81.6e6),
    "C-36GF": (35.0, 167.8e6),
}
# timm `vit_*` with a class token and 1000 classes (docs/reference-numbers.md).
TIMM_PARAMS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "L/16": 304_326_632,
    "g/14": 1_012_611_432,
    "G/14": 1_844_440_680,
}
TIMM_GMACS = {"B/16": 17.564, "L/16": 61.555}


def params_of(variant, **overrides):
    # Scanned blocks trace once, so big variants are counted in a fraction of a second.
    model = vit.create(variant, **{"scan": True, **overrides})
    return count_params(abstract_params(model, (224 // model.patch_size,) * 2))


@pytest.mark.parametrize("variant", list(XIAO_TABLE))
def test_xiao_parameter_counts_within_one_percent(variant):
    assert params_of(variant) == pytest.approx(XIAO_TABLE[variant][1], rel=0.01)


@pytest.mark.parametrize("variant", list(XIAO_TABLE))
def test_xiao_macs_within_three_percent(variant):
    macs = model_macs(vit.create(variant, scan=True), 224)
    assert macs / 1e9 == pytest.approx(XIAO_TABLE[variant][0], rel=0.03)


def test_conv_stem_costs_what_xiao_et_al_state():
    # Section 3: the C-4GF stem has 435M flops and 1.0M params (pycls counts BN's scale and
    # bias but not its running statistics; flops include the 1x1 conv's bias adds).
    stem = ConvStem((48, 96, 192, 384), (2, 2, 2, 2), 384)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: stem.init(jax.random.key(0), x, False), images)
    assert count_params(variables["params"]) == pytest.approx(1.0e6, rel=0.05)
    macs = count_macs(lambda v, x: stem.apply(v, x, False), variables, images)
    assert macs + 14 * 14 * 384 == pytest.approx(435e6, rel=0.005)


@pytest.mark.parametrize("variant", list(TIMM_PARAMS))
def test_parameter_counts_equal_timm(variant):
    assert params_of(variant) == TIMM_PARAMS[variant]


def test_unscanned_g14_has_the_same_count():
    assert params_of("G/14", scan=False) == TIMM_PARAMS["G/14"]


@pytest.mark.parametrize("variant", list(TIMM_GMACS))
def test_macs_equal_timm(variant):
    macs = model_macs(vit.create(variant, scan=True), 224)
    assert macs / 1e9 == pytest.approx(TIMM_GMACS[variant], rel=5e-4)


def test_so400m_with_map_head_equals_timm_siglip():
    # timm `vit_so400m_patch14_siglip_224` with a 1000-class head: no class token, MAP head.
    assert params_of("So400m/14", pool="map") == 428_833_704


# ---------------------------------------------------------------- the convolutional stem


def test_conv_stem_pads_one_pixel_on_every_side_like_pycls():
    """Hand-computed: a 3x3 all-ones kernel at stride 2 on a 4x4 all-ones image. With PyTorch's
    padding of 1 on every side, output (0, 0) covers 2x2 real pixels, (0, 1) 2x3, (1, 1) 3x3;
    TensorFlow's 'SAME' would pad only at the end and give 9 everywhere."""
    stem = ConvStem((1,), (2,), features=1)
    variables = {
        "params": {
            "conv0": {"kernel": jnp.ones((3, 3, 1, 1))},
            "bn0": {"scale": jnp.ones(1), "bias": jnp.zeros(1)},
            "embedding": {"kernel": jnp.full((1, 1, 1, 1), 2.0), "bias": jnp.full(1, 0.5)},
        },
        # var + eps = 1: BatchNorm is the identity.
        "batch_stats": {"bn0": {"mean": jnp.zeros(1), "var": jnp.full(1, 1 - 1e-5)}},
    }
    out = stem.apply(variables, jnp.ones((1, 4, 4, 1)), False)
    np.testing.assert_allclose(out[0, :, :, 0], 2 * np.array([[4, 6], [6, 9]]) + 0.5, rtol=1e-6)


def reference_conv_stem(x, variables, strides, eps=1e-5):
    """pycls `ViTStemConv` in eval mode, written with explicit loops over output pixels."""
    params, stats = variables["params"], variables["batch_stats"]
    for i, stride in enumerate(strides):
        kernel = np.asarray(params[f"conv{i}"]["kernel"])  # HWIO
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        rows, cols = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
        out = np.zeros((x.shape[0], rows, cols, kernel.shape[-1]))
        for r in range(rows):
            for c in range(cols):
                window = padded[:, r * stride : r * stride + 3, c * stride : c * stride + 3]
                out[:, r, c] = np.einsum("nhwi,hwio->no", window, kernel)
        bn, st = params[f"bn{i}"], stats[f"bn{i}"]
        out = (out - st["mean"]) / np.sqrt(st["var"] + eps) * bn["scale"] + bn["bias"]
        x = np.maximum(out, 0.0)
    kernel = np.asarray(params["embedding"]["kernel"])[0, 0]
    return x @ kernel + np.asarray(params["embedding"]["bias"])


def random_variables(shapes, seed):
    """Random values of sensible scale for a pytree of shapes (no initializer to compile)."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.1
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(value, shapes)


def test_conv_stem_matches_pycls_on_random_weights():
    stem = ConvStem((4, 6, 6), (2, 1, 2), features=5)
    x = np.random.default_rng(0).standard_normal((2, 9, 8, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: stem.init(jax.random.key(0), x, False), x)
    variables = random_variables(shapes, seed=1)
    out = jax.jit(lambda v, x: stem.apply(v, x, False))(variables, x)
    assert out.shape == (2, 3, 2, 5)  # ceil(9 / 4), ceil(8 / 4): stride 2 rounds up with pad 1.
    np.testing.assert_allclose(out, reference_conv_stem(x, variables, (2, 1, 2)), atol=1e-5)


def test_conv_stem_batch_norm_uses_batch_statistics_in_training():
    stem = ConvStem((3,), (1,), features=2)
    x = np.random.default_rng(0).standard_normal((4, 5, 5, 2)).astype(np.float32)
    variables = random_variables(
        jax.eval_shape(lambda x: stem.init(jax.random.key(0), x, False), x), seed=2
    )
    _, updates = stem.apply(variables, x, True, mutable=["batch_stats"])
    kernel = np.asarray(variables["params"]["conv0"]["kernel"])
    conv = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    old = variables["batch_stats"]["bn0"]
    new = updates["batch_stats"]["bn0"]
    # PyTorch momentum 0.1 (pycls BN.MOM): stat <- 0.9 stat + 0.1 batch_stat.
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv.mean((0, 1, 2)), 1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * conv.var((0, 1, 2)), 1e-5)


# ---------------------------------------------------------------- initialization and modes


@pytest.fixture(scope="module")
def initialized():
    """A real init of P-tiny and of a conv stem. The 'rbg' key compiles far faster on CPU than
    threefry; the distributions are the same."""
    key = jax.random.key(0, impl="rbg")
    model = vit.create("P-tiny", num_classes=7)
    images = jnp.zeros((1, 16, 16, 3))
    variables = jax.jit(model.init, static_argnames="train")(key, images, train=False)
    stem = ConvStem((8, 16), (2, 2), features=32)
    stem_variables = jax.jit(stem.init, static_argnums=2)(key, images, False)
    return variables, stem_variables


def test_init_follows_big_vision_and_pycls(initialized):
    variables, stem_variables = initialized
    params = variables["params"]
    assert set(variables) == {"params"}  # No BatchNorm, no statistics.
    assert np.all(params["cls"] == 0)
    assert np.all(params["head"]["kernel"] == 0) and np.all(params["head"]["bias"] == 0)
    assert np.std(params["pos_embedding"]) == pytest.approx(1 / np.sqrt(32), rel=0.15)
    mlp = params["block_0"]["mlp"]["fc1"]
    assert np.std(mlp["bias"]) < 1e-5 and np.any(mlp["bias"] != 0)
    limit = np.sqrt(6 / (32 + 32))  # xavier uniform over (width, heads * head_dim)
    query = params["block_0"]["attention"]["query"]["kernel"]
    assert np.abs(query).max() <= limit and np.abs(query).max() > 0.8 * limit
    assert np.all(params["block_1"]["norm2"]["scale"] == 1)

    stats = stem_variables["batch_stats"]
    assert np.all(stats["bn0"]["mean"] == 0) and np.all(stats["bn1"]["var"] == 1)
    conv = stem_variables["params"]["conv1"]["kernel"]  # PyTorch default: U(+-1/sqrt(fan_in))
    assert np.abs(conv).max() <= 1 / np.sqrt(9 * 8)
    kernel = stem_variables["params"]["embedding"]["kernel"]
    assert kernel.shape == (1, 1, 16, 32)
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / 32), rel=0.15)


@pytest.fixture(scope="module")
def tiny():
    """P-tiny with random (non-zero) weights and its compiled eval function."""
    model = vit.create("P-tiny", num_classes=7, stochastic_depth=0.5, dropout=0.1)
    params = random_variables(abstract_params(model, (4, 4)), seed=0)
    images = np.random.default_rng(1).standard_normal((4, 16, 16, 3)).astype(np.float32)
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return model, {"params": params}, images, evaluate


def test_eval_is_deterministic_and_train_draws_from_dropout_stream(tiny):
    model, variables, images, evaluate = tiny
    np.testing.assert_array_equal(evaluate(variables, images), evaluate(variables, images))
    train_fn = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    train = lambda seed: train_fn(variables, images, jax.random.key(seed))
    np.testing.assert_array_equal(train(3), train(3))
    assert not np.allclose(train(3), train(4))
    assert not np.allclose(train(3), evaluate(variables, images))
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, images)


def test_drop_path_drops_whole_examples_and_rescales():
    x = jnp.ones((4000, 3, 2))
    out = np.asarray(drop_path(x, 0.25, jax.random.key(0))).reshape(4000, -1)
    np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.75], rtol=1e-6)
    assert np.all(out.min(axis=1) == out.max(axis=1))
    assert (out[:, 0] > 0).mean() == pytest.approx(0.75, abs=0.03)
    np.testing.assert_array_equal(drop_path(x, 0.0, jax.random.key(0)), x)


def test_drop_path_rates_grow_linearly():
    np.testing.assert_allclose(drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3])


def test_scanned_and_rematerialized_blocks_compute_the_same(tiny):
    model, variables, images, evaluate = tiny
    scanned = vit.create("P-tiny", num_classes=7, scan=True, remat=True)
    stacked = vit.stack_blocks(variables["params"])
    assert stacked["blocks"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    loss = lambda p: jnp.sum(scanned.apply({"params": p}, images, train=False) ** 2)
    value, grads = jax.jit(jax.value_and_grad(loss))(stacked)
    np.testing.assert_allclose(value, jnp.sum(evaluate(variables, images) ** 2), rtol=1e-5)
    # The backward pass through the rematerialized scan reaches every block's weights.
    fc1 = np.asarray(grads["blocks"]["mlp"]["fc1"]["kernel"])
    assert np.all(np.isfinite(fc1)) and np.all(np.abs(fc1).reshape(2, -1).max(axis=1) > 0)
    roundtrip = vit.unstack_blocks(stacked)
    jax.tree.map(np.testing.assert_array_equal, roundtrip, variables["params"])


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
    model, variables, images, evaluate = tiny
    bf16 = vit.create("P-tiny", num_classes=7, dtype=jnp.bfloat16)
    logits32 = evaluate(variables, images)
    logits16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, images)
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * float(jnp.abs(logits32).max()))


def test_conv_stem_model_trains_batch_norm_statistics():
    model = vit.create("C-tiny", num_classes=7)
    images = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    variables = random_variables(shapes, seed=3)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = apply(variables, images)
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
    old = variables["batch_stats"]["stem"]["bn0"]["mean"]
    assert not np.allclose(updates["batch_stats"]["stem"]["bn0"]["mean"], old)


# ---------------------------------------------------------------- position embeddings


def test_sincos_embedding_by_hand():
    # width 8: omega = (1, 1e-4); tokens in row-major order over a 2x3 grid.
    pe = sincos_2d(2, 3, 8)
    assert pe.shape == (1, 6, 8)
    y, x = 1, 2  # token 5
    w = np.array([1.0, 1e-4])
    expected = np.concatenate([np.sin(x * w), np.cos(x * w), np.sin(y * w), np.cos(y * w)])
    np.testing.assert_allclose(pe[0, 5], expected, rtol=1e-6)
    model = vit.create("P-tiny", num_classes=7, posemb="sincos2d")
    assert "pos_embedding" not in abstract_params(model, (4, 4))


def test_bilinear_resampling_is_half_pixel_bilinear():
    pe = np.random.default_rng(0).standard_normal((1, 1 + 16, 5)).astype(np.float32)
    out = resample(pe, (6, 8), num_prefix_tokens=1)
    np.testing.assert_array_equal(out[0, 0], pe[0, 0])  # the class entry is kept
    grid = pe[0, 1:].reshape(4, 4, 5)
    expected = scipy.ndimage.zoom(grid, (6 / 4, 8 / 4, 1), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(out[0, 1:].reshape(6, 8, 5), expected, atol=1e-6)
    np.testing.assert_array_equal(resample(pe, (4, 4), num_prefix_tokens=1), pe)
    constant = np.full((1, 36, 2), 3.0, np.float32)
    for method in ("bilinear", "bicubic"):
        np.testing.assert_allclose(resample(constant, (4, 4), method=method), 3.0, rtol=1e-6)


def test_fine_tuning_at_another_resolution(tiny):
    model, variables, _, _ = tiny
    images = np.random.default_rng(3).standard_normal((1, 24, 24, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="adapt_to_resolution"):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    adapted = vit.adapt_to_resolution(variables["params"], model, 24)
    assert adapted["pos_embedding"].shape == (1, 1 + 36, 32)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": adapted}, images)
    assert np.all(np.isfinite(logits))


# ---------------------------------------------------------------- names and bad input


@pytest.mark.parametrize(
    "spelling, name",
    [
        ("P-4GF", "P-4GF"),
        ("ViT_P-4GF", "P-4GF"),
        ("vit_c4gf", "C-4GF"),
        ("c_36gf", "C-36GF"),
        ("B/16", "B/16"),
        ("vit_B/16", "B/16"),
        ("vit_b16", "B/16"),
        ("so400m14", "So400m/14"),
        ("So400m/14", "So400m/14"),
        ("vit_g14", "g/14"),
        ("G/14", "G/14"),
        ("vit_G14", "G/14"),
        ("vit_gigantic_patch14_224", "G/14"),
        ("vit_base_patch16_224", "B/16"),
        ("ti16", "Ti/16"),
        ("B/7", "B/7"),
        ("p-tiny", "P-tiny"),
    ],
)
def test_variant_spellings(spelling, name):
    assert vit.canonical_name(spelling) == name


def test_any_patch_size_is_a_variant():
    assert vit.VARIANTS["B/7"]["patch_size"] == 7
    assert "B/7" not in vit.VARIANTS  # derived on lookup, not stored
    assert registry.variant_info("vit_b7")["width"] == 768
    assert registry.create("vit_B/16", num_classes=10).num_classes == 10


@pytest.mark.parametrize("variant", ["F0", "B", "X/16", "B/0", "P-2GF"])
def test_unknown_variant_names_the_valid_ones(variant):
    with pytest.raises(ValueError, match=r"Unknown ViT variant.*'C-36GF'.*'So400m'"):
        vit.create(variant)


def test_stem_strides_must_multiply_to_the_patch_size():
    with pytest.raises(ValueError, match=r"multiply to 8, not to the patch size 16"):
        vit.create("C-4GF", conv_stem_strides=(2, 2, 2, 1))


def test_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        vit.create("B/16", num_heads=5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(conv_stem_widths=(8,), conv_stem_strides=(4,)), "only to stem='conv'"),
        (dict(stem="conv", conv_stem_widths=(8, 8), conv_stem_strides=(4,)), "one stride per"),
        (dict(pool="cls"), "Unknown pool"),
        (dict(posemb="sincos2d", width=30, num_heads=3), "divisible by 4 and at least 8"),
        (dict(remat_policy="save_only_these_names"), "Unknown remat_policy"),
        (dict(stochastic_depth=1.0), r"stochastic_depth must be in \[0, 1\)"),
        (dict(activation="relu"), "Unknown activation"),
        (dict(attention_implementation="flash"), "Unknown attention_implementation"),
    ],
)
def test_bad_fields_are_errors_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        vit.create("P-tiny", **overrides)


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="stochdepth"):
        vit.create("B/16", stochdepth=0.1)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((16, 16, 3), "NHWC images with 3 channels"),
        ((1, 16, 16, 1), "NHWC images with 3 channels"),
        ((1, 3, 16, 16), "NHWC images with 3 channels"),
        ((1, 18, 16, 3), "not multiples of the patch size 4"),
    ],
)
def test_bad_image_shape_is_a_clear_error(shape, message):
    model = vit.create("P-tiny")
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros(shape))


def test_summary_command_prints_the_table(capsys):
    from vit.__main__ import main

    main(["P-tiny", "B/16"])
    out = capsys.readouterr().out
    assert f"{TIMM_PARAMS['B/16']:,}" in out and "17.564" in out


def test_flat_param_names_are_self_explanatory():
    model = vit.create("P-tiny", pool="map", representation_size=16)
    names = {"/".join(k) for k in traverse_util.flatten_dict(abstract_params(model, (4, 4)))}
    assert {
        "embedding/kernel",
        "pos_embedding",
        "block_1/attention/out/kernel",
        "block_0/mlp/fc2/bias",
        "encoder_norm/scale",
        "map_head/probe",
        "map_head/mlp/fc1/kernel",
        "pre_logits/kernel",
        "head/bias",
    } <= names


@pytest.mark.parametrize("implementation", ["xla", None])
def test_attention_is_softmax_of_scaled_dot_products(implementation):
    """jax.nn.dot_product_attention against the formula, every weight randomized."""
    rng = np.random.default_rng(0)
    x_q, x_kv = rng.standard_normal((2, 3, 16)), rng.standard_normal((2, 5, 16))
    layer = Attention(num_heads=4, implementation=implementation)
    params = layer.init(jax.random.key(0), x_q, x_kv)["params"]
    params = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
    p = {name: (v["kernel"], v["bias"]) for name, v in params.items()}
    q, k, v = (np.einsum("btw,whd->bthd", x, p[n][0]) + p[n][1]
               for n, x in (("query", x_q), ("key", x_kv), ("value", x_kv)))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(4)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqk,bkhd->bqhd", weights, v)
    expected = np.einsum("bqhd,hdw->bqw", heads, p["out"][0]) + p["out"][1]
    np.testing.assert_allclose(layer.apply({"params": params}, x_q, x_kv), expected,
                               rtol=2e-5, atol=2e-5)
