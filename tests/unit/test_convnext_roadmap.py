"""The ResNet-50 -> ConvNeXt-T roadmap: its table, ResNet's initialization, and BatchNorm
statistics in training, evaluation and across devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import convnext

# Two stages of ResNet-50 blocks (a projection shortcut in each, a stride in the second).
SMALL_RESNET = dict(depths=(1, 2), widths=(64, 128))
ROOT = Path(__file__).resolve().parents[2]


def test_ends_are_resnet50_and_convnext_t():
    first, *_, last = convnext.ROADMAP
    assert first == "resnet50" and last == "separate_downsampling"
    assert convnext.create("roadmap_separate_downsampling") == convnext.create("T")
    resnet = convnext.create("roadmap_resnet50")
    assert (resnet.depths, resnet.widths, resnet.kernel_size) == (
        (3, 4, 6, 3),
        (256, 512, 1024, 2048),
        3,
    )


def test_every_step_is_the_same_network_with_other_fields():
    fields = set(convnext.ROADMAP["resnet50"])
    for step, knobs in convnext.ROADMAP.items():
        assert set(knobs) == fields, step
        convnext.create(f"roadmap_{step}")  # valid field values


def test_micro_design_steps_change_one_thing_each():
    # Section 2.6 applies one change per step on top of the kernel-7 network.
    diff = lambda a, b: {
        k: v for k, v in convnext.ROADMAP[b].items() if convnext.ROADMAP[a][k] != v
    }
    assert diff("kernel_7", "gelu") == {"activation": "gelu"}
    assert diff("gelu", "fewer_activations") == {"activations": "one"}
    assert diff("fewer_activations", "fewer_norms") == {"norms": "one"}
    assert diff("fewer_norms", "layer_norm") == {"norm": "layer"}
    assert diff("move_up_depthwise", "kernel_11") == {"kernel_size": 11}


def jit_init(model, images):
    # 'rbg' compiles far faster than threefry on CPU; the distributions are the same.
    init = jax.jit(model.init, static_argnames="train")
    return init(jax.random.key(0, impl="rbg"), images, train=False)


@pytest.fixture(scope="module")
def resnet():
    model = convnext.create("resnet50", num_classes=1000, **SMALL_RESNET)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    train_step = jax.jit(
        lambda v, x: model.apply(
            v,
            x,
            train=True,
            rngs={"dropout": jax.random.key(0)},
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=True,
        )
    )
    return model, jit_init(model, images), images, train_step


def test_resnet_init(resnet):
    _, variables, _, _ = resnet
    params = variables["params"]
    # kaiming_normal_(mode='fan_out'): std sqrt(2 / (out_channels * k * k)).
    kernel = np.asarray(params["stage1_block1"]["conv2"]["kernel"])  # 3x3, 32 -> 32
    assert kernel.std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.05)
    # Each residual branch starts at zero through its last BatchNorm (timm's zero_init_last).
    for block in ("stage0_block0", "stage1_block0", "stage1_block1"):
        assert np.all(np.asarray(params[block]["norm3"]["scale"]) == 0)
        assert np.all(np.asarray(params[block]["norm2"]["scale"]) == 1)
        assert "bias" not in params[block]["conv2"]  # BatchNorm follows: no conv bias
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias.
    bound = 128**-0.5
    for leaf in params["head"].values():
        assert bound >= np.abs(leaf).max() > 0.9 * bound
    stats = variables["batch_stats"]["stem_norm"]
    assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)


def test_training_updates_running_statistics_like_pytorch(resnet):
    _, variables, images, train_step = resnet
    _, updates = train_step(variables, images)
    stem_out = np.asarray(updates["intermediates"]["stem_conv"]["__call__"][0], np.float64)
    stats = updates["batch_stats"]["stem_norm"]
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic (from mean 0, var 1).
    # The batch variance is the biased one (flax); PyTorch's running_var uses the unbiased one.
    np.testing.assert_allclose(stats["mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * stem_out.var(axis=(0, 1, 2)), rtol=1e-5)
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])


def test_evaluation_uses_running_statistics(resnet):
    model, variables, images, train_step = resnet
    # Non-trivial running statistics, and residual branches switched on.
    rng = np.random.default_rng(0)
    stats = jax.tree.map(
        lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32), variables["batch_stats"]
    )
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.ones_like(x) if "scale" in str(p) else x, variables["params"]
    )
    variables = {"params": params, "batch_stats": stats}
    other = images.at[1:].set(jax.random.normal(jax.random.key(2), images[1:].shape))

    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    np.testing.assert_array_equal(evaluate(variables, images)[0], evaluate(variables, other)[0])
    # In training the other examples change example 0's output: batch statistics.
    assert not np.allclose(train_step(variables, images)[0][0], train_step(variables, other)[0][0])


def sharded_statistics_are_global() -> None:
    """On a 2-device mesh, a jitted train step with the batch sharded gives the same logits and
    running statistics as on one device: the BatchNorm mean is over the global batch."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    assert jax.device_count() >= 2, "needs two devices"
    model = convnext.create("resnet50", drop_path_rate=0.0, **SMALL_RESNET)
    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
    step = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])

    logits, stats = jax.jit(step)(variables, images)
    mesh = jax.make_mesh((2,), ("batch",), axis_types=(AxisType.Auto,), devices=jax.devices()[:2])
    sharded = jax.jit(
        step,
        in_shardings=(
            NamedSharding(mesh, PartitionSpec()),
            NamedSharding(mesh, PartitionSpec("batch")),
        ),
    )
    logits2, stats2 = sharded(
        variables, jax.device_put(images, NamedSharding(mesh, PartitionSpec("batch")))
    )
    np.testing.assert_allclose(logits2, logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats2, stats)
    # The statistics of one device's half of the batch differ: the mean above was global.
    _, half = jax.jit(step)(variables, images[:2])
    assert not np.allclose(
        half["batch_stats"]["stem_norm"]["mean"], stats["batch_stats"]["stem_norm"]["mean"]
    )


def test_batch_statistics_are_global_across_devices():
    if jax.device_count() >= 2:
        sharded_statistics_are_global()
        return
    # This process has one device; fake two in a fresh one (XLA reads the flag at start-up).
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    code = "import tests.unit.test_convnext_roadmap as t; t.sharded_statistics_are_global()"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
