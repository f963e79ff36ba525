"""Optimizer transforms against hand-written reference formulas."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vit_p_1gf
from training import optim


def reference_unitwise_norm(x):
    """deepmind-research/nfnets optim.py `unitwise_norm`."""
    if np.squeeze(x).ndim <= 1:
        return np.sqrt(np.sum(x**2))
    axes = 0 if x.ndim in (2, 3) else (0, 1, 2)
    return np.sqrt(np.sum(x**2, axis=axes, keepdims=True))


def reference_sgd_agc_step(param, grad, momentum_buf, *, lr, clip, eps, wd, momentum, decay):
    """One update of the reference `SGD_AGC.update_param`."""
    if clip is not None:
        param_norm = np.maximum(reference_unitwise_norm(param), eps)
        grad_norm = reference_unitwise_norm(grad)
        max_norm = param_norm * clip
        clipped = grad * (max_norm / np.maximum(grad_norm, 1e-6))
        grad = np.where(grad_norm > max_norm, clipped, grad)
    if decay:
        grad = grad + param * wd
    momentum_buf = momentum * momentum_buf + grad
    update = grad + momentum * momentum_buf  # Nesterov
    return param - lr * update, momentum_buf


def make_tree(rng):
    tree = {
        "conv": {"kernel": rng.standard_normal((3, 3, 4, 8)), "gain": rng.uniform(0.5, 1.5, 8),
                 "bias": rng.standard_normal(8) * 0.1},
        "se": {"fc0": {"kernel": rng.standard_normal((8, 4))}},
        "block": {"skip_gain": np.array(0.3)},
        "head": {"kernel": rng.standard_normal((8, 5)) * 0.1, "bias": np.zeros(5)},
    }
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (6, 5), (7,), ()])
def test_agc_is_unitwise_as_the_reference(shape):
    """Conv kernels: one unit per output channel over H, W, I; linear kernels: per output
    unit over axis 0; vectors and scalars: the whole tensor."""
    rng = np.random.default_rng(0)
    param = np.asarray(rng.standard_normal(shape), np.float32)
    # Per-unit gradient scales spanning "far below" to "far above" the clipping threshold.
    scale = np.logspace(-4, 0, shape[-1]).astype(np.float32) if shape else np.float32(1.0)
    grad = np.asarray(rng.standard_normal(shape) * scale, np.float32)
    opt = optim.sgd_agc(1.0, momentum=0.0, nesterov=False, agc_clip=0.01, agc_eps=1e-3)
    updates, _ = opt.update({"w": grad}, opt.init({"w": param}), {"w": param})
    expected, _ = reference_sgd_agc_step(param, grad, 0.0, lr=1.0, clip=0.01, eps=1e-3,
                                         wd=0.0, momentum=0.0, decay=False)
    np.testing.assert_allclose(param + updates["w"], expected, rtol=1e-5, atol=1e-8)


def test_sgd_agc_matches_reference_update_for_update():
    rng = np.random.default_rng(0)
    params = make_tree(rng)
    grads = [
        jax.tree.map(lambda x, k=k: np.asarray(rng.standard_normal(x.shape) * 0.05 * (k + 1),
                                               np.float32), params)
        for k in range(3)
    ]
    hp = dict(lr=0.4, eps=1e-3, wd=2e-5, momentum=0.9)
    opt = optim.sgd_agc(0.4, momentum=0.9, weight_decay=2e-5, agc_clip=0.01, agc_eps=1e-3)
    state = opt.init(params)
    ours, ref = params, params
    bufs = jax.tree.map(np.zeros_like, params)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    for grad in grads:
        updates, state = opt.update(grad, state, ours)
        ours = optax.apply_updates(ours, updates)
        stepped = [
            reference_sgd_agc_step(
                p, g, b, **hp, clip=None if path == "['head']['kernel']" else 0.01,
                decay=p.ndim >= 2,
            )
            for path, p, g, b in zip(paths, jax.tree.leaves(ref), jax.tree.leaves(grad),
                                     jax.tree.leaves(bufs), strict=True)
        ]
        ref = jax.tree.unflatten(jax.tree.structure(params), [p for p, _ in stepped])
        bufs = jax.tree.unflatten(jax.tree.structure(params), [b for _, b in stepped])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), ours, ref)


def test_agc_leaves_head_kernel_but_clips_head_bias():
    params = {"head": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
    grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
    opt = optim.sgd_agc(1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -100.0)  # unclipped
    # Clipped to 0.01 * |bias| = 0.01 * sqrt(3) in norm.
    np.testing.assert_allclose(jnp.linalg.norm(updates["head"]["bias"]), 0.01 * np.sqrt(3),
                               rtol=1e-5)


def test_adamw_decay_is_decoupled_and_masked():
    params = {"dense": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = optim.adamw(0.1, weight_decay=0.5)
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * 2.0)  # lr * wd * w
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_schedule_warmup_then_cosine_to_zero():
    schedule = optim.learning_rate_schedule(1.6, total_steps=100, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.8)
    assert float(schedule(10)) == pytest.approx(1.6)
    assert float(schedule(55)) == pytest.approx(0.8, rel=1e-5)  # half way down the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="does not fit"):
        optim.learning_rate_schedule(1.0, total_steps=5, warmup_steps=6)


def test_lr_scaling_rule():
    import ml_collections

    c = ml_collections.ConfigDict(dict(learning_rate=0.1, reference_batch_size=256))
    assert optim.scaled_learning_rate(c, 4096) == pytest.approx(1.6)


def test_ema_warmup_and_update():
    assert float(optim.ema_decay(0, 0.99999)) == pytest.approx(0.1)
    assert float(optim.ema_decay(90, 0.99999)) == pytest.approx(91 / 100)
    assert float(optim.ema_decay(10**9, 0.99999)) == pytest.approx(0.99999)
    ema = optim.ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, step=0, decay=0.999)
    np.testing.assert_allclose(ema["w"], 0.9)  # d = 0.1 at t = 0


def test_unknown_optimizer_is_an_error():
    import ml_collections

    with pytest.raises(ValueError, match="sgd_agc"):
        optim.create_optimizer(ml_collections.ConfigDict(dict(name="lamb")), lambda s: 0.1)


def pycls_epoch_lr(epoch, base_lr, max_epoch, warmup_epochs, warmup_factor, min_lr):
    """pycls/core/optimizer.py `get_epoch_lr` with `lr_fun_cos` (branch vitconfigs), transcribed
    in float64."""
    lr = 0.5 * (1.0 + np.cos(np.pi * epoch / max_epoch))
    lr = ((1.0 - min_lr) * lr + min_lr) * base_lr
    alpha = np.asarray(epoch, np.float64) / warmup_epochs
    return np.where(epoch < warmup_epochs, lr * (warmup_factor * (1.0 - alpha) + alpha), lr)


def test_pycls_schedule_per_epoch_matches_pycls():
    # Xiao et al.'s ImageNet recipe as configs/vit.py sets it: 400 epochs, 5 of warm-up from
    # 0.1 x lr, cosine to 0.005 x lr, at batch 2048; steps as train.run_length makes them.
    config = vit_p_1gf.get_config()
    num_train, batch, lr = 1_281_167, config.global_batch_size, config.optimizer.learning_rate
    assert (batch, config.total_epochs, config.optimizer.warmup_epochs) == (2048, 400, 5)
    total_steps, warmup_steps = math.floor(400 * num_train / batch), round(5 * num_train / batch)
    schedule = optim.learning_rate_schedule(
        lr, total_steps, warmup_steps, config.optimizer.schedule,
        steps_per_epoch=Fraction(num_train, batch), **optim.schedule_options(config.optimizer),
    )
    epochs = np.array([0, 1, 4, 5, 6, 100, 200, 398, 399])
    first = np.array([-(-e * num_train // batch) for e in epochs])  # first step of each epoch
    steps = np.concatenate([first, first[1:] - 1, [total_steps - 1]])
    expected = pycls_epoch_lr(steps * batch // num_train, lr, 400, 5, 0.1, 0.005)
    # float32 evaluation: within 1e-6 of the lr and 2e-8 of the peak (the cosine near its end).
    np.testing.assert_allclose(schedule(jnp.asarray(steps)), expected, rtol=1e-6, atol=2e-8 * lr)
    assert float(schedule(0)) == pytest.approx(0.1 * lr)  # WARMUP_FACTOR x BASE_LR
    assert float(schedule(first[1])) > float(schedule(first[1] - 1))  # one step per epoch


def test_pycls_schedule_per_step_is_the_same_rule_in_steps():
    schedule = optim.learning_rate_schedule(
        2.0, 1000, 30, "pycls_per_step", warmup_factor=0.1, min_lr_fraction=0.005
    )
    steps = np.array([0, 1, 15, 29, 30, 31, 500, 999, 1000])
    np.testing.assert_allclose(
        schedule(jnp.asarray(steps)), pycls_epoch_lr(steps, 2.0, 1000, 30, 0.1, 0.005), rtol=1e-6,
        atol=2e-8 * 2.0,
    )


@pytest.mark.parametrize(
    "kind, options, message",
    [
        ("linear", {}, r"Unknown schedule 'linear'; choose one of \('cosine', 'constant', "),
        ("pycls", dict(warmup_factor=1.5), r"warmup_factor is 1.5; choose .* in \[0, 1\]"),
        ("cosine", dict(min_lr_fraction=-0.1), r"min_lr_fraction is -0.1; choose .* \[0, 1\]"),
        ("pycls", {}, "needs steps_per_epoch"),
    ],
)
def test_schedule_refuses_bad_values(kind, options, message):
    with pytest.raises(ValueError, match=message):
        optim.learning_rate_schedule(1.0, 100, 10, kind, **options)
