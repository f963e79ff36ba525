"""SAM against a hand-written two-step reference on a small MLP, alone and composed with
SGD + AGC + weight decay + Nesterov momentum; SAM inside the train step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from tests.unit.test_optim import reference_sgd_agc_step
from training import optim, sam, sharding, steps

# ----------------------------------------------------------------------------------------------
# A one-hidden-layer tanh MLP with softmax cross-entropy, and its gradient by hand.
# ----------------------------------------------------------------------------------------------


def mlp_loss(params, x, y):
    hidden = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    logits = hidden @ params["head"]["kernel"] + params["head"]["bias"]
    return jnp.mean(optax.softmax_cross_entropy(logits, y))


def reference_grad(p, x, y):
    """Backpropagation written out in numpy (float64)."""
    a = np.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    z = a @ p["head"]["kernel"] + p["head"]["bias"]
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    dz = (prob - y) / len(x)
    da = dz @ p["head"]["kernel"].T * (1 - a**2)
    return {"hidden": {"kernel": x.T @ da, "bias": da.sum(0)},
            "head": {"kernel": a.T @ dz, "bias": dz.sum(0)}}


def tree_map(fn, *trees):
    return {m: {k: fn(*(t[m][k] for t in trees)) for k in trees[0][m]} for m in trees[0]}


def reference_sam_grad(p, x, y, *, rho, fraction, groups):
    """Each group: ascent gradient on its first round(fraction * size) examples, normalised by
    its global norm, descent gradient at w + e on the whole group; then the mean."""
    size = len(x) // groups
    n_ascent = max(1, int(fraction * size + 0.5))
    descent = []
    for g in range(groups):
        xg, yg = x[g * size:(g + 1) * size], y[g * size:(g + 1) * size]
        ascent = reference_grad(p, xg[:n_ascent], yg[:n_ascent])
        norm = np.sqrt(sum(np.sum(v**2) for m in ascent.values() for v in m.values()))
        perturbed = tree_map(lambda w, a, n=norm: w + rho * a / n, p, ascent)
        descent.append(reference_grad(perturbed, xg, yg))
    return tree_map(lambda *gs: np.mean(gs, axis=0), *descent)


def problem(seed=0, n=24, d=5, h=7, k=3):
    rng = np.random.default_rng(seed)
    params = {"hidden": {"kernel": rng.standard_normal((d, h)), "bias": rng.standard_normal(h)},
              "head": {"kernel": rng.standard_normal((h, k)), "bias": rng.standard_normal(k)}}
    x = rng.standard_normal((n, d))
    y = np.eye(k)[rng.integers(0, k, n)]
    return params, x, y


def as_f32(tree):
    return jax.tree.map(lambda v: np.asarray(v, np.float32), tree)


def jax_grad_fn(params, batch, rng):
    del rng
    return jax.grad(mlp_loss)(params, batch["x"], batch["y"]), None


# ----------------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------------


def test_hand_written_gradient_is_right():
    params, x, y = problem()
    ours = jax.grad(mlp_loss)(as_f32(params), x.astype(np.float32), y.astype(np.float32))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 ours, as_f32(reference_grad(params, x, y)))


@pytest.mark.parametrize("rho, fraction, groups", [(0.5, 1.0, 1), (0.5, 0.2, 1), (0.3, 0.25, 3)])
def test_sam_gradient_matches_the_reference(rho, fraction, groups):
    params, x, y = problem()
    sam_grad = jax.jit(sam.sam_gradient(jax_grad_fn, rho=rho, ascent_fraction=fraction,
                                        num_groups=groups))
    ours, _ = sam_grad(as_f32(params), as_f32({"x": x, "y": y}), jax.random.key(0))
    expected = reference_sam_grad(params, x, y, rho=rho, fraction=fraction, groups=groups)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 ours, as_f32(expected))
    plain = reference_grad(params, x, y)  # The test can tell SAM from no SAM.
    assert not np.allclose(plain["head"]["kernel"], expected["head"]["kernel"], rtol=1e-2)


def test_groups_differ_from_global_sam():
    params, x, y = problem()
    one = reference_sam_grad(params, x, y, rho=0.5, fraction=1.0, groups=1)
    three = reference_sam_grad(params, x, y, rho=0.5, fraction=1.0, groups=3)
    assert not np.allclose(one["hidden"]["kernel"], three["hidden"]["kernel"], rtol=1e-3)


def test_sam_with_sgd_agc_two_steps_match_the_reference():
    """SAM gives the gradient; AGC clips it against the unperturbed params, then coupled weight
    decay and Nesterov momentum, as the reference SGD_AGC (the head kernel is not clipped)."""
    params, x, y = problem(seed=1)
    hp = dict(lr=0.3, eps=1e-3, wd=1e-2, momentum=0.9)
    rho, fraction, groups = 0.4, 0.5, 2
    opt = optim.sgd_agc(0.3, momentum=0.9, weight_decay=1e-2, agc_clip=0.01, agc_eps=1e-3)
    sam_grad = jax.jit(sam.sam_gradient(jax_grad_fn, rho=rho, ascent_fraction=fraction,
                                        num_groups=groups))
    ours, state = as_f32(params), opt.init(as_f32(params))
    ref, bufs = params, tree_map(np.zeros_like, params)
    for step in range(2):
        batch = {"x": x[step::2], "y": y[step::2]}  # a different batch each step
        grads, _ = sam_grad(ours, as_f32(batch), jax.random.key(step))
        updates, state = opt.update(grads, state, ours)
        ours = optax.apply_updates(ours, updates)

        g = reference_sam_grad(ref, batch["x"], batch["y"], rho=rho, fraction=fraction,
                               groups=groups)
        stepped = {
            m: {k: reference_sgd_agc_step(ref[m][k], g[m][k], bufs[m][k], **hp,
                                          clip=None if (m, k) == ("head", "kernel") else 0.01,
                                          decay=ref[m][k].ndim >= 2)
                for k in ref[m]}
            for m in ref
        }
        ref = tree_map(lambda s: s[0], stepped)
        bufs = tree_map(lambda s: s[1], stepped)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 ours, as_f32(ref))


def test_ascent_examples_and_bad_arguments():
    assert sam.ascent_examples(64, 0.2) == 13  # 12.8 rounds to 13
    assert sam.ascent_examples(8, 0.2) == 2  # 1.6
    assert sam.ascent_examples(3, 0.1) == 1  # at least one
    with pytest.raises(ValueError, match="ascent_fraction"):
        sam.ascent_examples(8, 0.0)
    with pytest.raises(ValueError, match="rho"):
        sam.sam_gradient(jax_grad_fn, rho=-1.0)
    params, x, y = problem()
    with pytest.raises(ValueError, match="does not split into 5"):
        sam.sam_gradient(jax_grad_fn, rho=0.1, num_groups=5)(
            as_f32(params), as_f32({"x": x, "y": y}), jax.random.key(0))


class NormalizedLinear(nn.Module):
    """BatchNorm straight on the inputs, then a linear head: the running statistics a step
    produces do not depend on the params, only on which examples the pass saw."""

    batch_norm_axis_name: tuple[str, ...] | None = None  # set by the train step

    @nn.compact
    def __call__(self, images, train):
        x = images.reshape(images.shape[0], -1)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         axis_name=self.batch_norm_axis_name)(x)
        return nn.Dense(3, name="head")(x)


def test_train_step_with_sam_uses_descent_batchnorm_statistics():
    model = NormalizedLinear()
    opt = optim.sgd_agc(0.1, agc_clip=None)
    state = steps.create_state(model, opt, jax.random.key(0), (2, 2, 1), ema=False)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((20, 2, 2, 1)).astype(np.float32) * 3 + 1
    batch = {"image": images, "label": rng.integers(0, 3, 20)}
    step = jax.jit(steps.make_train_step(
        model, opt, lambda s: 0.1, seed=0, num_classes=3, normalize=lambda x: x,
        sam_rho=0.05, sam_ascent_fraction=0.2, sam_num_groups=2,
    ))
    new_state, metrics = step(state, batch)
    flat = images.reshape(2, 10, 4)  # the two groups
    stats = new_state.batch_stats["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(1).mean(0), rtol=1e-5)
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["train_top1"] <= 1
    assert not np.allclose(new_state.params["head"]["kernel"], state.params["head"]["kernel"])


def test_train_step_refuses_sam_with_gradient_accumulation():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        steps.make_train_step(NormalizedLinear(), optax.sgd(0.1), lambda s: 0.1, seed=0,
                              num_classes=3, normalize=lambda x: x, grad_accum_steps=2,
                              sam_rho=0.05)


MESH_SCRIPT = """
import json, sys
from training import sharding
from tests.unit.test_sam import sam_step_result
mesh = sharding.create_mesh({'data': -1, 'fsdp': 1})
print(json.dumps(sam_step_result(mesh)))
"""


def sam_step_result(mesh) -> list[float]:
    """The head kernel after one SAM step (4 groups) with the batch split over `mesh`."""
    model = NormalizedLinear()
    opt = optim.sgd_agc(0.1, agc_clip=0.01)
    state = steps.create_state(model, opt, jax.random.key(0), (2, 2, 1), ema=False)
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((16, 2, 2, 1)).astype(np.float32),
             "label": rng.integers(0, 3, 16)}
    step = steps.make_train_step(model, opt, lambda s: 0.1, seed=0, num_classes=3,
                                 normalize=lambda x: x, sam_rho=0.1, sam_ascent_fraction=0.25,
                                 sam_num_groups=4)
    with jax.set_mesh(mesh):
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        new_state, _ = jax.jit(step)(state, batch)
    return np.asarray(new_state.params["head"]["kernel"]).ravel().tolist()


def test_sam_groups_do_not_depend_on_the_device_count():
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    four_devices = json.loads(result.stdout.strip().splitlines()[-1])
    one_device = sam_step_result(sharding.create_mesh({"data": 1}, jax.devices()[:1]))
    np.testing.assert_allclose(four_devices, one_device, rtol=1e-6, atol=1e-7)
