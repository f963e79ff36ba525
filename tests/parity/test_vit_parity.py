"""ViT outputs equal timm's and pycls's on the same (randomized) weights; big_vision checkpoints
import.

CI checks the exported tiny fixtures (no torch needed): timm's, one per pooling (class token,
global average pooling over a 4x5 token grid, MAP head), and pycls's ViT_P and ViT_C (Xiao et
al. 2021's configs, shrunk). Where torch and timm are installed, full-size B/16, timm's
position-embedding resampling and parameter counts are checked too. Regenerate the fixtures:
python tests/fixtures/export_timm_fixtures.py vit_tiny_token vit_tiny_gap vit_tiny_map
PYTHONPATH=<checkout of pycls's vitconfigs branch> python -m tests.fixtures.export_pycls_fixtures
"""

from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import vit
from modeling.weight_import import CheckpointMismatchError
from vit.model import abstract_params
from vit.posemb import resample

FIXTURES = Path(__file__).parents[1] / "fixtures"
TOLERANCE = 1e-4  # max |delta logit| <= TOLERANCE * max |logit|, float32 against float64.
POOLS = ("token", "gap", "map")


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def compiled_eval(model):
    return jax.jit(lambda params, images: model.apply({"params": params}, images, train=False))


@pytest.fixture(scope="module")
def tiny():
    """Per pooling: the timm state dict, images, timm's logits, and our compiled eval."""
    out = {}
    for pool in POOLS:
        state_dict = load_file(str(FIXTURES / f"vit_tiny_{pool}.safetensors"))
        io = np.load(FIXTURES / f"vit_tiny_{pool}_io.npz")
        model = vit.create("P-tiny", num_classes=io["logits"].shape[-1], pool=pool)
        out[pool] = dict(
            state_dict=state_dict,
            images=io["images"],
            logits=io["logits"],
            evaluate=compiled_eval(model),
        )
    return out


def import_fixture(fixture, pool, **overrides):
    resolution = fixture["images"].shape[1:3]  # The 'gap' fixture's grid is not square.
    return vit.from_timm(
        fixture["state_dict"], "P-tiny", pool=pool, resolution=resolution, **overrides
    )


@pytest.mark.parametrize("pool", POOLS)
def test_tiny_matches_timm(tiny, pool):
    fixture = tiny[pool]
    params = import_fixture(fixture, pool)
    ours = fixture["evaluate"](params, fixture["images"])
    assert relative_error(ours, fixture["logits"]) <= TOLERANCE


@pytest.mark.parametrize("pool", POOLS)
def test_fixture_is_sensitive(tiny, pool):
    """A mixed-up head split breaks the parity check; big_vision's tanh GELU, a change of
    about 1e-3 in a few activations, moves the logits hundreds of times more than the right
    model's float32 rounding does, and just past the tolerance."""
    fixture = tiny[pool]
    params = import_fixture(fixture, pool)
    right = relative_error(fixture["evaluate"](params, fixture["images"]), fixture["logits"])
    query = params["block_1"]["attention"]["query"]
    swapped = {**query, "kernel": query["kernel"][:, ::-1]}  # heads in reverse order
    block = {**params["block_1"], "attention": {**params["block_1"]["attention"], "query": swapped}}
    wrong = fixture["evaluate"]({**params, "block_1": block}, fixture["images"])
    assert relative_error(wrong, fixture["logits"]) > 100 * TOLERANCE
    model = vit.create("P-tiny", num_classes=10, pool=pool, **vit.BIG_VISION_NUMERICS)
    tanh = relative_error(compiled_eval(model)(params, fixture["images"]), fixture["logits"])
    assert tanh > max(100 * right, TOLERANCE)


def test_every_parameter_was_randomized(tiny):
    for pool in POOLS:
        for key, value in tiny[pool]["state_dict"].items():
            assert np.std(value) > 0, key
            if key.endswith(".weight") and value.ndim == 1:  # LayerNorm scales
                assert np.all(value != 1.0), key


def test_class_token_position_entry_can_be_folded_into_the_token(tiny):
    """big_vision's layout (no position entry for the class token) computes the same function
    with the entry added to the token."""
    fixture = tiny["token"]
    params = import_fixture(fixture, "token")
    folded = dict(params)
    folded["cls"] = params["cls"] + params["pos_embedding"][:, :1]
    folded["pos_embedding"] = params["pos_embedding"][:, 1:]
    model = vit.create("P-tiny", num_classes=10, class_token_posemb=False)
    ours = compiled_eval(model)(folded, fixture["images"])
    assert relative_error(ours, fixture["logits"]) <= TOLERANCE


def test_scan_layout_import(tiny):
    fixture = tiny["map"]
    stacked = import_fixture(fixture, "map", scan=True)
    jax.tree.map(
        np.testing.assert_array_equal, stacked, vit.stack_blocks(import_fixture(fixture, "map"))
    )


def test_resolution_change_on_import(tiny):
    fixture = tiny["token"]
    params = vit.from_timm(fixture["state_dict"], "P-tiny", resolution=24, interpolation="bicubic")
    assert params["pos_embedding"].shape == (1, 1 + 6 * 6, 32)
    np.testing.assert_array_equal(  # the class token's entry is not interpolated
        params["pos_embedding"][0, 0], fixture["state_dict"]["pos_embed"][0, 0]
    )


def test_mismatch_lists_every_offending_key(tiny):
    broken = dict(tiny["token"]["state_dict"])
    del broken["blocks.1.attn.qkv.weight"]
    del broken["cls_token"]
    broken["blocks.7.attn.extra"] = np.zeros(3, np.float32)
    broken["norm.bias"] = np.zeros(31, np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        vit.from_timm(broken, "P-tiny")
    for key in ("blocks.1.attn.qkv.weight", "cls_token", "blocks.7.attn.extra", "norm.bias"):
        assert key in str(info.value)


def test_wrong_pooling_is_a_mismatch(tiny):
    with pytest.raises(CheckpointMismatchError, match=r"Missing keys \(1\): cls_token.*attn_pool"):
        vit.from_timm(tiny["map"]["state_dict"], "P-tiny", pool="token")


def test_conv_stem_cannot_come_from_timm(tiny):
    with pytest.raises(ValueError, match="no convolutional-stem ViT"):
        vit.from_timm(tiny["token"]["state_dict"], "C-tiny")


# ---------------------------------------------------------------- big_vision checkpoints


def big_vision_tree(params: dict, depth: int) -> dict:
    """Our params written in big_vision's `models/vit.py` layout, spelled out here from its
    module names: embedding, pos_embedding, cls, Transformer/encoderblock_<i>/{LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0/Dense_<j>}, Transformer/encoder_norm,
    MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}, pre_logits,
    head."""
    flat = {}

    def put(prefix, module):
        for path, value in jax.tree_util.tree_flatten_with_path(module)[0]:
            flat["/".join([prefix, *(p.key for p in path)])] = np.asarray(value)

    def put_block(prefix, block, norms, mha):
        for ours, theirs in zip(("norm1", "norm2"), norms, strict=True):
            put(f"{prefix}/{theirs}", block[ours])
        put(f"{prefix}/{mha}", block["attention"])
        put(f"{prefix}/MlpBlock_0/Dense_0", block["mlp"]["fc1"])
        put(f"{prefix}/MlpBlock_0/Dense_1", block["mlp"]["fc2"])

    put("embedding", params["embedding"])
    if "pos_embedding" in params:
        flat["pos_embedding"] = np.asarray(params["pos_embedding"])
    if "cls" in params:
        flat["cls"] = np.asarray(params["cls"])
    for i in range(depth):
        block = params[f"block_{i}"]
        put_block(
            f"Transformer/encoderblock_{i}",
            block,
            ("LayerNorm_0", "LayerNorm_1"),
            "MultiHeadDotProductAttention_0",
        )
    put("Transformer/encoder_norm", params["encoder_norm"])
    if "pre_logits" in params:
        put("pre_logits", params["pre_logits"])
    if "map_head" in params:
        head = params["map_head"]
        flat["MAPHead_0/probe"] = np.asarray(head["probe"])
        put("MAPHead_0/MultiHeadDotProductAttention_0", head["attention"])
        put("MAPHead_0/LayerNorm_0", head["norm"])
        put("MAPHead_0/MlpBlock_0/Dense_0", head["mlp"]["fc1"])
        put("MAPHead_0/MlpBlock_0/Dense_1", head["mlp"]["fc2"])
    put("head", params["head"])
    return flat


def scanned_train_state(flat: dict, depth: int) -> dict:
    """big_vision's scan=True layout inside a train state: 'params/Transformer/encoderblock/...'
    stacked over depth, next to optimizer entries."""
    out = {"opt/state/count": np.zeros(())}
    for key, value in flat.items():
        if key.startswith("Transformer/encoderblock_0/"):
            rest = key[len("Transformer/encoderblock_0/") :]
            stacked = np.stack([flat[f"Transformer/encoderblock_{i}/{rest}"] for i in range(depth)])
            out[f"params/Transformer/encoderblock/{rest}"] = stacked
        elif not key.startswith("Transformer/encoderblock_"):
            out[f"params/{key}"] = value
    return out


def test_big_vision_map_checkpoint_round_trips(tiny, tmp_path):
    fixture = tiny["map"]
    rng = np.random.default_rng(0)
    params = import_fixture(fixture, "map")
    params["pre_logits"] = {"kernel": rng.standard_normal((32, 16)), "bias": np.ones(16)}
    params["head"] = {"kernel": rng.standard_normal((16, 10)), "bias": params["head"]["bias"]}
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    flat = big_vision_tree(params, depth=2)
    assert flat["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel"].shape == (
        32,
        4,
        8,
    )  # (width, heads, head_dim), as flax's attention stores it
    np.savez(tmp_path / "plain.npz", **flat)
    np.savez(tmp_path / "scanned.npz", **scanned_train_state(flat, depth=2))
    for name in ("plain.npz", "scanned.npz"):
        imported = vit.from_big_vision(
            np.load(tmp_path / name), "P-tiny", pool="map", representation_size=16
        )
        jax.tree.map(np.testing.assert_array_equal, imported, params)


def test_big_vision_class_token_checkpoint(tiny, tmp_path):
    """big_vision adds the position embedding before the class token; imported into the
    default model (class token with its own entry) it computes the same function."""
    fixture = tiny["token"]
    params = import_fixture(fixture, "token")
    flat = big_vision_tree(params, depth=2)
    flat["cls"] = flat["cls"] + flat["pos_embedding"][:, :1]
    flat["pos_embedding"] = flat["pos_embedding"][:, 1:]
    np.savez(tmp_path / "tok.npz", **flat)
    imported = vit.from_big_vision(np.load(tmp_path / "tok.npz"), "P-tiny")
    assert np.all(imported["pos_embedding"][0, 0] == 0)
    ours = fixture["evaluate"](imported, fixture["images"])
    assert relative_error(ours, fixture["logits"]) <= TOLERANCE


def test_big_vision_mismatch_lists_keys(tiny):
    flat = big_vision_tree(import_fixture(tiny["gap"], "gap"), depth=2)
    del flat["Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"]
    with pytest.raises(CheckpointMismatchError, match=r"Dense_0/bias.*Unexpected keys.*cls"):
        vit.from_big_vision(
            {**flat, "cls": np.zeros((1, 1, 32))}, "P-tiny", pool="gap", resolution=(16, 20)
        )


# ---------------------------------------------------------------- pycls (Xiao et al. 2021)

# Float32 on CPU against pycls in float64: the right model is off by ~4e-7 of the largest
# logit (float32 rounding through a few dozen ops), pycls's library-default LayerNorm epsilon
# (1e-5 instead of the 1e-6 of Xiao et al.'s configs) by ~3e-3. 1e-5 keeps 25x headroom above
# the rounding and fails the wrong epsilon by 300x.
PYCLS_TOLERANCE = 1e-5  # max |delta logit| <= PYCLS_TOLERANCE * max |logit|
# The fixtures' sizes (SHRINK and TINY in export_pycls_fixtures.py) as overrides of Xiao et
# al.'s 1GF variants, whose other fields (LayerNorm epsilon, pooling, ...) are under test.
PYCLS_TINY = dict(width=32, mlp_dim=96, num_heads=4, patch_size=4)
PYCLS_SIZES = {
    "P": dict(PYCLS_TINY, depth=2),
    "C": dict(PYCLS_TINY, depth=1, conv_stem_widths=(8, 16, 16), conv_stem_strides=(2, 1, 2)),
}
PYCLS_LIBRARY_DEFAULT_LN_EPS = 1e-5  # pycls core/config.py _C.LN.EPS


@pytest.fixture(scope="module")
def pycls():
    """Per stem: pycls's state dict, images and float64 logits."""
    out = {}
    for stem in PYCLS_SIZES:
        io = np.load(FIXTURES / f"vit_pycls_{stem.lower()}_tiny.npz")
        state_dict = {k[len("state/") :]: io[k] for k in io.files if k.startswith("state/")}
        out[stem] = dict(state_dict=state_dict, images=io["images"], logits=io["logits"])
    return out


def pycls_logits(fixture, stem, **overrides):
    variables = vit.variables_from_pycls(
        fixture["state_dict"], f"{stem}-1GF", **PYCLS_SIZES[stem]
    )
    model = vit.create(f"{stem}-1GF", num_classes=10, **PYCLS_SIZES[stem], **overrides)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, fixture["images"])


@pytest.mark.parametrize("stem", PYCLS_SIZES)
def test_xiao_variants_match_pycls(pycls, stem):
    fixture = pycls[stem]
    assert relative_error(pycls_logits(fixture, stem), fixture["logits"]) <= PYCLS_TOLERANCE


@pytest.mark.parametrize("stem", PYCLS_SIZES)
def test_pycls_fixture_fails_pycls_library_default_epsilon(pycls, stem):
    fixture = pycls[stem]
    wrong = pycls_logits(fixture, stem, layer_norm_eps=PYCLS_LIBRARY_DEFAULT_LN_EPS)
    assert relative_error(wrong, fixture["logits"]) > 100 * PYCLS_TOLERANCE


def test_every_pycls_parameter_was_randomized(pycls):
    for stem in PYCLS_SIZES:
        for key, value in pycls[stem]["state_dict"].items():
            if key.endswith("num_batches_tracked"):
                continue
            assert np.std(value) > 0, key
            if key.endswith(("ln_1.weight", "ln_2.weight", "ln.weight", "bn.weight", "_var")):
                assert np.all(value != 1.0), key  # LayerNorm, BatchNorm scales; BN variances
    assert any("_bn.running_mean" in key for key in pycls["C"]["state_dict"])


def test_pycls_import_layouts_and_errors(pycls):
    conv = pycls["C"]["state_dict"]
    with pytest.raises(ValueError, match="variables_from_pycls"):
        vit.from_pycls(conv, "C-1GF", **PYCLS_SIZES["C"])
    stacked = vit.variables_from_pycls(conv, "C-1GF", **PYCLS_SIZES["C"], scan=True)
    unrolled = vit.variables_from_pycls(conv, "C-1GF", **PYCLS_SIZES["C"])
    assert set(stacked["batch_stats"]["stem"]) == {"bn0", "bn1", "bn2"}
    jax.tree.map(
        np.testing.assert_array_equal,
        stacked["params"],
        vit.stack_blocks(unrolled["params"]),
    )
    # CLASSIFIER_TYPE 'pooled': no class token nor its position entry.
    pooled = {k: v for k, v in pycls["P"]["state_dict"].items() if k != "class_token"}
    pooled["pos_embedding"] = pooled["pos_embedding"][:, 1:]
    params = vit.from_pycls(pooled, "P-1GF", **PYCLS_SIZES["P"], pool="gap")
    assert "cls" not in params and params["pos_embedding"].shape == (1, 16, 32)
    deeper = {**PYCLS_SIZES["P"], "depth": 3}
    with pytest.raises(CheckpointMismatchError, match=r"Missing keys \(\d+\): encoder.block_2"):
        vit.from_pycls(pycls["P"]["state_dict"], "P-1GF", **deeper)


# ---------------------------------------------------------------- against timm itself


def timm_model(name, **kwargs):
    pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, **kwargs)


def test_full_size_b16_matches_timm():
    model = timm_model("vit_base_patch16_224")
    from tests.fixtures.export_timm_fixtures import randomize_, reference_logits

    randomize_(model, seed=0)
    state_dict = {k: v.float().numpy() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    logits = reference_logits(model, images)
    params = vit.from_timm(state_dict, "vit_base_patch16_224")
    ours = compiled_eval(vit.create("B/16", scan=True))(vit.stack_blocks(params), images)
    error = relative_error(ours, logits)
    print(f"B/16 max |delta logit| / max |logit| = {error:.2e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("new_grid", [(24, 24), (10, 12)])
def test_resampling_matches_timm(method, new_grid):
    torch = pytest.importorskip("torch")
    layers = pytest.importorskip("timm.layers")

    pe = np.random.default_rng(0).standard_normal((1, 1 + 14 * 14, 8)).astype(np.float32)
    theirs = layers.resample_abs_pos_embed(
        torch.from_numpy(pe),
        list(new_grid),
        num_prefix_tokens=1,
        interpolation=method,
        antialias=True,
    ).numpy()
    ours = resample(pe, new_grid, num_prefix_tokens=1, method=method)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(
    "timm_name, variant, overrides",
    [
        ("vit_tiny_patch16_224", "Ti/16", {}),
        ("vit_small_patch16_224", "S/16", {}),
        ("vit_base_patch16_224", "B/16", {}),
        ("vit_large_patch16_224", "L/16", {}),
        ("vit_giant_patch14_224", "g/14", {}),
        ("vit_gigantic_patch14_224", "G/14", {}),
        ("vit_so400m_patch14_siglip_224", "So400m/14", {"pool": "map"}),
    ],
)
def test_parameter_counts_equal_timm_models(timm_name, variant, overrides):
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only, no memory
        model = timm_model(timm_name, num_classes=1000)
    ours = vit.create(variant, scan=True, **overrides)
    shapes = abstract_params(ours, (224 // ours.patch_size,) * 2)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert count == sum(p.numel() for p in model.parameters())
