"""Programs compiled ahead of time by the TPU compiler (libtpu) for a v4 slice on a CPU machine,
measured as benchmarks/tpu_aot.py measures train.py's steps; prints one JSON object (read by
tests/integration/test_tpu_aot.py, which runs this in a fresh process at XLA's default
optimization level):

    python -m tests.tpu_cases

- `matmul`: a bf16 8192 x 8192 x 8192 matmul on one chip, whose time is known from first
  principles (FLOPs / peak), against the predicted time (training/compiled_cost.py);
- `loop`: ten such matmuls (2048^3) in a fori_loop against one: the loop body's trip count;
- `families`: the tiny NFNet's and tiny ViT's train steps on 4 chips (data parallelism, and
  FSDP over the 4) with the step-cost audit (benchmarks/step_cost.py): FLOPs per chip against
  one chip's / 4, and the collectives by kind and class;
- `meshes`: data x fsdp meshes over v4-128 whose sizes split its physical axes;
- `grouped_conv_all_gathers`: whether the TPU compiler keeps a grouped conv's batch sharding
  under plain jit (openxla/xla#47945, training/data_parallel.py's workaround).
"""

import json

import jax
import jax.numpy as jnp

from benchmarks import step_cost
from modeling import hardware
from tests.cost_cases import FAMILIES, config_for, grouped_conv_all_gathers, summary
from training import compiled_cost, sharding, tpu_slices

SLICE = "v4:2x2x1"


def predicted(compiled, acc) -> dict:
    cost = compiled_cost.analyze(compiled, acc, 1, model_flops=0.0)
    return {"flops": cost.flops, "cycles": cost.cycles, "step_s": cost.step_s}


def matmul_cases(device, acc) -> dict:
    big = jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16)
    small = jax.ShapeDtypeStruct((2048, 2048), jnp.bfloat16)

    def ten_times(a, b):
        return jax.lax.fori_loop(0, 10, lambda i, x: (x @ b).astype(jnp.bfloat16), a)

    return {
        "matmul": predicted(tpu_slices.compile_on(device, jnp.matmul, big, big), acc)
        | {"ideal_s": 2 * 8192**3 / acc.peak_flops_per_device},
        "single": predicted(tpu_slices.compile_on(device, jnp.matmul, small, small), acc),
        "loop": predicted(tpu_slices.compile_on(device, ten_times, small, small), acc),
    }


def family_cases(devices) -> dict:
    results = {}
    for family in ("nfnet", "vit_p"):
        model, overrides = FAMILIES[family]
        config = config_for(model, overrides, num_devices=len(devices))
        cost = step_cost.audit(config, {"data": len(devices)}, devices=devices)
        results[family] = summary(cost) | {"ideal_flops": cost.ideal_flops,
                                           "device_kind": cost.device_kind}
        # FSDP over the 4 chips, per-layer gathers (training/fsdp.py): its share of FLOPs too.
        fsdp = step_cost.audit(config, {"data": 1, "fsdp": len(devices)}, devices=devices,
                               fit=False)
        results[f"{family}_fsdp"] = summary(fsdp) | {"ideal_flops": cost.ideal_flops}
    return results


def mesh_cases() -> dict:
    """Meshes over v4-128's 4x4x4 chips whose sizes are no product of its axes (fsdp 8)."""
    devices = tpu_slices.slice_devices(tpu_slices.parse_slice("v4-128"))
    meshes = {"data8_fsdp8": {"data": 8, "fsdp": 8}, "data32_fsdp2": {"data": -1, "fsdp": 2}}
    return {name: dict(sharding.create_mesh(shape, devices).shape)
            for name, shape in meshes.items()}


def main() -> None:
    jax.config.update("jax_platforms", "cpu")
    tpu_slice = tpu_slices.parse_slice(SLICE)
    devices = tpu_slices.slice_devices(tpu_slice)
    acc = hardware.accelerator(tpu_slice.accelerator)
    print(json.dumps({"matmuls": matmul_cases(devices[0], acc),
                      "families": family_cases(devices),
                      "grouped_conv_all_gathers": grouped_conv_all_gathers(devices),
                      "meshes": mesh_cases()}))


if __name__ == "__main__":
    main()
