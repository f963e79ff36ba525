"""Sharding rules, the mesh, and one training run on 1 device vs a data x FSDP mesh of 8."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from training import sharding
from training.metric_logging import WALL_CLOCK_FIELDS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "shape, fsdp, expected",
    [
        ((3, 3, 64, 128), 4, P(None, None, None, "fsdp")),  # largest divisible dim
        ((3, 3, 1536, 768), 4, P(None, None, "fsdp", None)),
        ((1000, 3), 4, P("fsdp", None)),
        ((7, 9), 4, P()),  # nothing divides
        ((128,), 4, P()),  # below min_shard_size
        ((4096, 4096), 1, P()),  # no fsdp axis
    ],
)
def test_param_spec(shape, fsdp, expected):
    assert sharding.param_spec(shape, fsdp, min_shard_size=1000) == expected


def test_create_mesh_resolves_minus_one_and_rejects_bad_shapes():
    devices = jax.devices()
    mesh = sharding.create_mesh({"data": -1, "fsdp": 1}, devices)
    assert dict(mesh.shape) == {"data": len(devices), "fsdp": 1}
    with pytest.raises(ValueError, match="needs 2 devices"):
        sharding.create_mesh({"data": 2, "fsdp": 1}, devices[:1])
    with pytest.raises(ValueError, match="Unknown mesh axes"):
        sharding.create_mesh({"model": 2}, devices)
    with pytest.raises(ValueError, match="one may be -1"):
        sharding.create_mesh({"data": -1, "fsdp": -1}, devices)


def run_train(workdir: Path, num_devices: int, *flags: str) -> list[dict]:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(num_devices), JAX_PLATFORMS="cpu")
    command = [  # A relative --workdir, as users type it.
        sys.executable, "train.py", "--config=configs/quickstart.py",
        f"--workdir={os.path.relpath(workdir, REPO)}",
        "--config.global_batch_size=32", "--config.eval_batch_size=64",
        "--config.total_steps=3", "--config.optimizer.warmup_steps=1",
        "--config.log_every_steps=1", "--config.eval_every_steps=3",
        "--config.fsdp_min_shard_size=1024", *flags,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS}
            for line in lines]


def test_one_device_and_eight_device_data_fsdp_mesh_agree(tmp_path):
    single = run_train(tmp_path / "one", 1)
    sharded = run_train(tmp_path / "eight", 8, "--config.mesh.data=4", "--config.mesh.fsdp=2")
    assert [r["step"] for r in single] == [r["step"] for r in sharded] == [1, 2, 3]
    for a, b in zip(single, sharded, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_mesh_larger_than_the_devices_is_refused(tmp_path):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "train.py", "--config=configs/quickstart.py", "--dry_run",
         "--config.mesh.data=4"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "needs 4 devices, but 2 are available" in result.stderr
