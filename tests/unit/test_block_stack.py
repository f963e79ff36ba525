"""Scanned and unrolled ConvNet stages (`block_stack`): the same function, gradients, BatchNorm
statistics, MAC and parameter counts and optimizer updates; rematerialisation changes nothing
but memory; variables convert losslessly between the layouts; bad fields are one sentence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modeling import block_stack, registry
from modeling.macs import count_params, model_macs
from training import optim

SMALL_CONVNEXT = dict(depths=(2, 1, 4, 2), widths=(16, 24, 32, 40), drop_path_rate=0.1)
SMALL_RESNET = dict(depths=(2, 1, 3, 2), widths=(16, 24, 32, 40), stem_width=8, drop_path_rate=0.1)
# name, overrides, images: every ConvNet family, a BatchNorm one included.
CASES = {
    "nfnet": ("nfnet_tiny", dict(stochastic_depth=0.2, dropout=0.1), 32),
    "convnext": ("convnext_tiny", SMALL_CONVNEXT, 32),
    "resnet": ("convnext_resnet50", SMALL_RESNET, 32),
}


def randomized(tree, seed: int):
    """Every leaf random, gains and scales around 1, so no block is hidden by a zero skip gain
    or a 1e-6 layer scale."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [
        0.3 * jax.random.normal(k, x.shape) + (x.ndim <= 1)
        for k, x in zip(keys, leaves, strict=True)
    ])


def build(case: str, **fields):
    """Both layouts of a case's model and random unrolled variables (from shapes: no init)."""
    name, overrides, resolution = CASES[case]
    unrolled = registry.create(name, num_classes=5, **{**overrides, "scan": False, **fields})
    scanned = registry.create(name, num_classes=5, **{**overrides, "scan": True, **fields})
    images = jax.random.normal(jax.random.key(1), (4, resolution, resolution, 3))
    shapes = jax.eval_shape(lambda: unrolled.init(jax.random.key(0), images, train=False))
    variables = {"params": randomized(shapes["params"], 2)}
    if "batch_stats" in shapes:  # running means around 0, variances around 1
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, x: jnp.abs(randomized(x, 3)) if path[-1].key == "var"
            else randomized(x, 4) - 1, shapes["batch_stats"])
    return unrolled, scanned, variables, images


def outputs(model, variables, images):
    """Eval logits, and a train-mode loss with its gradients and new BatchNorm statistics."""
    def loss(params):
        logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                      mutable=["batch_stats"])
        return jnp.mean(logits**2), updates.get("batch_stats", {})

    def run(variables):
        logits = model.apply(variables, images, train=False)
        return logits, jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return jax.jit(run)(variables)


def assert_close(actual, expected, rtol=2e-5):
    """Equal to `rtol` of the largest value in `expected` (a gradient that is zero in exact
    arithmetic, e.g. of a bias before a BatchNorm, is float noise in both)."""
    scale = max((float(np.max(np.abs(x))) for x in jax.tree.leaves(expected)), default=0.0)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale),
                 actual, expected)


NO_DROPS = {"nfnet": dict(stochastic_depth=0.0, dropout=0.0), "resnet": dict(drop_path_rate=0.0)}


# ConvNeXt's LayerNorm blocks: the timm parity fixture in both layouts
# (tests/parity/test_convnext_parity.py).
@pytest.mark.parametrize("case", ["nfnet", "resnet"])
def test_scanned_stages_compute_what_unrolled_ones_do(case):
    """Eval logits, and in training (no random draws) loss, gradients and BatchNorm statistics."""
    unrolled, scanned, variables, images = build(case, **NO_DROPS[case])
    stacked = block_stack.stage_layout(variables, scan=True)
    assert any(k.endswith("_blocks") for k in stacked["params"])
    scanned_shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), images, train=False))
    assert jax.tree.structure(scanned_shapes) == jax.tree.structure(stacked)
    logits, ((loss, stats), grads) = outputs(unrolled, variables, images)
    scan_logits, ((scan_loss, scan_stats), scan_grads) = outputs(scanned, stacked, images)
    assert_close(scan_logits, logits)
    assert_close(scan_loss, loss)
    assert_close(block_stack.unstack_stages(scan_grads), grads, rtol=1e-4)
    assert_close(block_stack.unstack_stages(scan_stats), stats)


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_saveable"])
def test_rematerialisation_changes_no_gradient(policy):
    _, scanned, variables, images = build("nfnet", **NO_DROPS["nfnet"])
    stacked = block_stack.stage_layout(variables, scan=True)
    _, (_, grads) = outputs(scanned, stacked, images)
    _, (_, remat_grads) = outputs(scanned.clone(remat=True, remat_policy=policy), stacked, images)
    assert_close(remat_grads, grads, rtol=1e-5)


def test_rematerialised_blocks_keep_at_most_half_the_temporaries():
    """The gradient of an NFNet whose memory is in its blocks (eight at 16 x 16): recomputing
    whole blocks keeps under half the temporaries of plain scanned blocks, keeping conv outputs
    fewer than plain (XLA's memory analysis; README's compile-time table at full size)."""
    images = jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)

    def temporaries(**fields):
        model = registry.create("nfnet_tiny", num_classes=10, depths=(8, 1, 1, 1), scan=True,
                              **fields)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                   train=False))["params"]
        loss = lambda p, x: jnp.mean(model.apply({"params": p}, x, train=True) ** 2)
        compiled = jax.jit(jax.grad(loss)).lower(params, images).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain = temporaries()
    assert temporaries(remat=True, remat_policy="nothing_saveable") <= plain / 2
    assert temporaries(remat=True, remat_policy="dots_saveable") < plain


def test_training_draws_differ_per_key():
    """Scanned blocks draw their stochastic depth from the key (ConvNeXt's drop path:
    tests/mesh_agreement.py's scanned ResNet)."""
    _, scanned, variables, images = build("nfnet")
    stacked = block_stack.stage_layout(variables, scan=True)
    run = jax.jit(lambda key: scanned.apply(stacked, images, train=True, rngs={"dropout": key},
                                            mutable=["batch_stats"])[0])
    first, second = run(jax.random.key(3)), run(jax.random.key(4))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(run(jax.random.key(3)), first)


@pytest.mark.parametrize("name, resolution", [("nfnet_f0", 192), ("convnext_tiny", 224)])
def test_both_layouts_count_the_same_macs_and_params(name, resolution):
    unrolled, scanned = (registry.create(name, scan=s) for s in (False, True))
    assert model_macs(scanned, resolution) == model_macs(unrolled, resolution)
    assert count_params(
        jax.eval_shape(lambda: scanned.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                            train=False))
    ) == count_params(
        jax.eval_shape(lambda: unrolled.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
    )


def test_deep_variants_scan_and_rematerialise_keeping_conv_outputs():
    for name in ("nfnet_f1", "nfnet_f7plus", "convnext_small", "convnext_xlarge"):
        model = registry.create(name)
        assert model.scan and model.remat and model.remat_policy == "dots_saveable", name
    for name in ("nfnet_f0", "convnext_tiny", "convnext_resnet50"):
        assert not registry.create(name).scan, name


@pytest.mark.parametrize("case", ["nfnet", "convnext"])
def test_optimizer_updates_do_not_depend_on_the_layout(case):
    """AGC's unit-wise norms, weight decay's mask and layer-wise lr decay treat each stacked
    block as the unrolled block it stands for."""
    _, _, variables, _ = build(case)
    params = variables["params"]
    grads = randomized(params, 7)
    stacked, stacked_grads = block_stack.stack_stages(params), block_stack.stack_stages(grads)
    optimizers = [optim.sgd_agc(0.1, weight_decay=1e-3, agc_clip=0.01)]
    if case == "convnext":
        optimizers.append(optax.chain(optim.adamw(0.1), optim.layer_decay(0.7, "convnext")))
    for optimizer in optimizers:
        update = jax.jit(lambda g, p, o=optimizer: o.update(g, o.init(p), p)[0])
        updates, scan_updates = update(grads, params), update(stacked_grads, stacked)
        assert_close(block_stack.unstack_stages(scan_updates), updates, rtol=1e-6)


def test_variables_convert_losslessly():
    _, _, variables, _ = build("resnet")
    stacked = block_stack.stage_layout(variables, scan=True)
    assert set(stacked["params"]) >= {"stage0_block0", "stage0_blocks", "stage2_blocks"}
    assert "stage1_blocks" not in stacked["params"]  # a one-block stage has nothing to stack
    assert stacked["batch_stats"]["stage2_blocks"]["norm1"]["mean"].shape[0] == 2
    assert block_stack.stage_layout(stacked, scan=True) is stacked
    jax.tree.map(np.testing.assert_array_equal, block_stack.stage_layout(stacked, scan=False),
                 variables)
    with pytest.raises(ValueError, match="already hold stacked"):
        block_stack.stack_stages(stacked["params"])


@pytest.mark.parametrize("path, stacked", [
    ("stage2_blocks/conv1/kernel", True), ("blocks/mlp/fc1/bias", True),
    ("stage2_block3/conv1/kernel", False), ("block_0/norm1/scale", False), ("head/kernel", False),
])
def test_stacked_paths_are_recognised(path, stacked):
    assert block_stack.is_stacked(path) == stacked


@pytest.mark.parametrize("name", ["nfnet_tiny", "convnext_tiny"])
def test_an_unknown_remat_policy_is_one_sentence(name):
    with pytest.raises(ValueError, match=r"Unknown remat_policy 'everything'; choose one of"):
        registry.create(name, remat=True, remat_policy="everything")
