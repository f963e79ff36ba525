"""The per-device, per-example step (training/data_parallel.py): MixUp pairs, BatchNorm axes,
sub-batch rules refused where they would cross devices, and every step feature giving the same step
on one device and on eight (FSDP's per-layer gathers included)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import train
from tests.integration.test_train import small_config
from training import steps
from training.mixing import mix_batch, neighbours

REPO = Path(__file__).resolve().parents[2]


def test_mixup_mixes_each_example_with_its_neighbour():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 4, 4, 3)).astype(np.float32)
    targets = np.eye(6, dtype=np.float32)
    mixed, mixed_targets = mix_batch(jax.random.key(1), images, targets, mixup_alpha=0.4,
                                     cutmix_alpha=0.0)
    lam = mixed_targets[0, 0]
    assert 0 < lam < 1
    partner = [1, 0, 3, 2, 5, 4]
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[partner], rtol=1e-5)
    np.testing.assert_allclose(mixed_targets, lam * targets + (1 - lam) * targets[partner],
                               rtol=1e-6)


def test_cutmix_pastes_from_the_neighbour_only():
    images = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 8, 8, 3), np.float32)
    mixed, _ = mix_batch(jax.random.key(3), images, np.eye(4, dtype=np.float32), mixup_alpha=0.0,
                         cutmix_alpha=1.0)
    for i, partner in enumerate([1, 0, 3, 2]):
        assert set(np.unique(np.asarray(mixed[i]))) <= {float(i), float(partner)}


def test_odd_batches_cannot_be_paired():
    with pytest.raises(ValueError, match="must be even"):
        neighbours(jnp.zeros((5, 2)))


class UnnamedBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, images, train):
        x = nn.BatchNorm(use_running_average=not train)(images.reshape(images.shape[0], -1))
        return nn.Dense(3)(x)


def test_a_batchnorm_without_axis_names_is_refused():
    model = UnnamedBatchNorm()
    state = steps.create_state(model, optax.sgd(0.1), jax.random.key(0), (2, 2, 1), ema=False)
    step = steps.make_train_step(model, optax.sgd(0.1), lambda s: 0.1, seed=0, num_classes=3,
                                 normalize=lambda x: x.astype(jnp.float32))
    batch = {"image": np.zeros((4, 2, 2, 1), np.uint8), "label": np.zeros(4, np.int32)}
    with pytest.raises(ValueError, match="batch_norm_axis_name"):
        jax.jit(step)(state, batch)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sam.rho": 0.1, "sam.num_groups": 4, "sam.ascent_fraction": 0.2},
         "multiple of the device count"),
        ({"sam.rho": 0.1, "sam.num_groups": 1, "sam.ascent_fraction": 0.2},
         "sam.ascent_fraction=1"),
        ({"global_batch_size": 8, "mixup_alpha": 0.2}, "must be even"),
    ],
)
def test_sub_batches_that_would_cross_devices_are_refused(changes, message):
    eight_devices = types.SimpleNamespace(devices=np.zeros(8))
    with pytest.raises(train.ConfigError, match=message):
        train.validate_config(small_config(**changes), eight_devices)


def test_every_step_feature_gives_the_same_step_on_one_device_and_on_eight():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "tests.mesh_agreement"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(cases) == 5
    for name, diffs in cases.items():
        assert np.isfinite(diffs["loss"]), name
        assert diffs["metrics"] < 1e-5, (name, diffs)
        assert diffs["params"] < 2e-4, (name, diffs)
        assert diffs["batch_stats"] < 1e-4, (name, diffs)
