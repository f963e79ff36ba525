"""The compiled-cost audit (benchmarks/step_cost.py) of train.py's step for each family and step
feature, on one device and on meshes of 8 and 32, plus XLA's grouped-conv partitioning on a
bare convolution. Run with 32 CPU devices; prints one JSON object (read by test_step_cost.py).
The cases come in two parts of about equal compile time, so that two processes share the work;
`--full` audits every case on 32 devices too (the tests audit NFNet's plain step there):

    JAX_NUM_CPU_DEVICES=32 python -m tests.cost_cases convnets [--full]
    JAX_NUM_CPU_DEVICES=32 python -m tests.cost_cases vits_and_features [--full]
"""

import json
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import step_cost
from configs import quickstart
from training import hlo_cost

# 64 px: padding taps, which modeling/macs.py counts and XLA skips, are few
BATCH, RESOLUTION = 64, 64
SMALL_CONVNEXT = dict(depths=(1, 1, 1, 1), widths=(32, 64, 128, 256), drop_path_rate=0.1)
SMALL_RESNET = dict(depths=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem_width=16,
                    drop_path_rate=0.1)
FAMILIES = {  # name: (model, overrides)
    "nfnet": ("nfnet_tiny", dict(stochastic_depth=0.1, dropout=0.2)),
    "convnext": ("convnext_tiny", SMALL_CONVNEXT),
    "resnet50_roadmap": ("convnext_roadmap_resnet50", SMALL_RESNET),
    "vit_p": ("vit_P-tiny", dict(stochastic_depth=0.1)),
    "vit_c": ("vit_C-tiny", dict(stochastic_depth=0.1)),
}
FEATURES = {  # name: config changes, applied to NFNet (grouped convs: the hard case)
    "accumulation": {"grad_accum_steps": 2},
    "sam_per_replica": {"sam.rho": 0.05, "sam.ascent_fraction": 0.25},  # num_groups = N
    "sam_global": {"sam.rho": 0.05, "sam.num_groups": 1, "sam.ascent_fraction": 1.0},
    # With PCA lighting, as in Xiao et al.'s ViT recipe: the offsets enter the step per example.
    "mixup_cutmix_lighting": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0,
                              "data.pca_lighting_std": 0.1},
}
# The NFNet reference's mixing, each trained example mixing two read: the step trains on half
# the batch. Audited in the convnets part, which has fewer cases.
HALVES = {"mixup_cutmix_halves": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_mode": "halves"}}
REMAT = {  # name: NFNet field overrides that scan stages and rematerialise every block
    "remat_blocks": dict(scan=True, remat=True, remat_policy="nothing_saveable"),
    "remat_dots": dict(scan=True, remat=True, remat_policy="dots_saveable"),
}
ONE = {"one": dict(data=1)}
MESHES = {"data8": dict(data=8), "data4_fsdp2": dict(data=4, fsdp=2)}
MANY = {"data32": dict(data=32)}


def config_for(model, overrides, changes=None, num_devices=1):
    c = quickstart.get_config()
    c.model.name, c.model.overrides = model, overrides
    c.global_batch_size, c.data.train_resolution = BATCH, RESOLUTION
    c.sam.num_groups = num_devices  # per-replica SAM, where SAM is on
    c.fsdp_min_shard_size = 1024  # so that the tiny models have FSDP-sharded params
    c.update_from_flattened_dict(dict(changes or {}))
    return c


def summary(cost: step_cost.StepCost) -> dict:
    kinds = {}
    for collective in cost.collectives:
        key = f"{collective.kind}/{collective.cls}"
        kinds[key] = kinds.get(key, 0) + collective.bytes * collective.count
    return {
        "devices": cost.devices,
        "flops": cost.flops,
        "model_flops": cost.model_flops,
        "temp_bytes": cost.temp_bytes,
        "param_bytes": cost.param_bytes,
        "loops": [loop.get("trip_count") for loop in cost.loops],
        "collective_bytes": kinds,  # 'kind/class' -> bytes per step
    }


def audit(changes_by_mesh: dict, model, overrides, changes=None) -> dict:
    results = {}
    for mesh_name, mesh in changes_by_mesh.items():
        devices = mesh.get("data", 1) * mesh.get("fsdp", 1)
        config = config_for(model, overrides, changes, devices)
        results[mesh_name] = summary(step_cost.audit(config, mesh, fit=False))
    return results


def grouped_conv_all_gathers(devices=None) -> dict:
    """All-gathers in the compiled gradient of a bare batch-sharded conv, by group count, on
    `devices` (default: the first 8)."""
    devices = list(devices) if devices is not None else jax.devices()[:8]
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    counts = {}
    for groups in (1, 4, 16):  # dense, grouped, depthwise
        def loss(x, w, groups=groups):
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=groups,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(y**2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1)), out_shardings=(batch, replicated))
        x = jax.ShapeDtypeStruct((64, 8, 8, 16), jnp.float32, sharding=batch)
        w = jax.ShapeDtypeStruct((3, 3, 16 // groups, 16), jnp.float32, sharding=replicated)
        module = hlo_cost.parse_hlo(step.lower(x, w).compile().as_text())
        counts[groups] = sum(c.count for c in hlo_cost.hlo_collectives(module, len(devices))
                             if c.kind == "all-gather")
    return counts


def main(part: str, full: bool):
    report = {"families": {}, "features": {}}
    families = ("nfnet", "convnext", "resnet50_roadmap") if part == "convnets" else (
        "vit_p", "vit_c")
    for name in families:
        model, overrides = FAMILIES[name]
        many = MANY if full or name == "nfnet" else {}
        report["families"][name] = audit(ONE | MESHES | many, model, overrides)
    # One remat case in each part, so that the two take about as long.
    model, overrides = FAMILIES["nfnet"]
    name = "remat_blocks" if part == "convnets" else "remat_dots"
    report["features"][name] = audit({"data8": MESHES["data8"]}, model,
                                     {**overrides, **REMAT[name]})
    if part == "convnets":
        model, overrides = FAMILIES["nfnet"]
        for name, changes in HALVES.items():
            report["features"][name] = audit({"data8": MESHES["data8"]}, model, overrides,
                                             changes)
    if part == "vits_and_features":
        model, overrides = FAMILIES["nfnet"]
        for name, changes in FEATURES.items():
            meshes = {"data8": MESHES["data8"]} | (MANY if full else {})
            report["features"][name] = audit(meshes, model, overrides, changes)
        report["grouped_conv_all_gathers"] = grouped_conv_all_gathers()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], "--full" in sys.argv[2:])
