"""One train step of each step feature on a one-device mesh and on an 8-device mesh, in one
process (run with 8 CPU devices). Prints one JSON line: per case, the largest relative
difference of the metrics and of the new params and BatchNorm statistics between the meshes.

    JAX_NUM_CPU_DEVICES=8 python -m tests.mesh_agreement
"""

import json

import jax
import numpy as np
import optax

import train
from benchmarks.train_throughput_benchmark import abstract_train_state
from configs import quickstart
from training import optim, sharding, steps

RESNET = dict(depths=(1, 1, 1, 1), widths=(16, 32, 32, 32), stem_width=8, drop_path_rate=0.2)
# Stage 1 scanned: stacked BatchNorm statistics under FSDP.
SCANNED_RESNET = dict(RESNET, depths=(1, 2, 1, 1), scan=True)
# name: (model, model overrides, config changes, 8-device mesh). Under FSDP each layer's
# parameters are gathered as it runs (training/fsdp.py): inside a rematerialised scan, in
# unrolled blocks, around BatchNorm and gradient accumulation; SAM gathers them whole.
CASES = {
    "nfnet_scan_remat_dropout_mixup_fsdp": (
        "nfnet_tiny", dict(stochastic_depth=0.2, dropout=0.3, scan=True, remat=True),
        dict(mixup_alpha=0.4, cutmix_alpha=1.0), dict(data=2, fsdp=4)),
    "resnet_batchnorm_accumulation_fsdp": (
        "convnext_roadmap_resnet50", SCANNED_RESNET, dict(grad_accum_steps=2),
        dict(data=4, fsdp=2)),
    "vit_conv_stem_per_replica_sam_fsdp": (
        "vit_C-tiny", dict(stochastic_depth=0.2),
        {"sam.rho": 0.1, "sam.num_groups": 8, "sam.ascent_fraction": 0.25}, dict(data=4, fsdp=2)),
    "resnet_global_sam": ("convnext_roadmap_resnet50", RESNET,
                          {"sam.rho": 0.1, "sam.num_groups": 1, "sam.ascent_fraction": 1.0},
                          dict(data=8)),
    "vit_unrolled_fsdp": ("vit_P-tiny", dict(stochastic_depth=0.2), {}, dict(fsdp=8)),
}
BATCH, RESOLUTION = 32, 32


def config_for(model, overrides, changes):
    c = quickstart.get_config()
    c.model.name, c.model.overrides = model, overrides
    c.global_batch_size = BATCH
    c.fsdp_min_shard_size = 256
    c.optimizer.learning_rate = 0.5
    c.update_from_flattened_dict(dict(changes or {}))
    return c


def one_step(config, mesh_shape, devices, batch):
    mesh = sharding.create_mesh(mesh_shape, devices)
    model = train.create_model(config)
    schedule = optax.constant_schedule(config.optimizer.learning_rate)  # no warm-up
    optimizer = optim.create_optimizer(config.optimizer, schedule)
    init, _, state_sharding = abstract_train_state(model, config, optimizer, RESOLUTION, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
        step = steps.jit_train_step(config, model, optimizer, schedule, mesh, state_sharding)
        state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    return jax.device_get((metrics, state.params, state.batch_stats))


def max_relative_difference(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(x - y) / (np.abs(x) + 1e-3))), a, b
    )
    return max(jax.tree.leaves(diffs), default=0.0)


def main():
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (BATCH, RESOLUTION, RESOLUTION, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, BATCH).astype(np.int32),
        "replaced": np.zeros(BATCH, bool),
    }
    devices = jax.devices()
    results = {}
    for name, (model, overrides, changes, mesh_shape) in CASES.items():
        config = config_for(model, overrides, changes)
        one = one_step(config, dict(data=1), devices[:1], batch)
        eight = one_step(config, mesh_shape, devices[:8], batch)
        results[name] = {
            "metrics": max_relative_difference(one[0], eight[0]),
            "params": max_relative_difference(one[1], eight[1]),
            "batch_stats": max_relative_difference(one[2], eight[2]),
            "loss": float(one[0]["train_loss"]),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
