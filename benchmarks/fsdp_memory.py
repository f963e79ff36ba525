r"""Per-device memory of the compiled train step under FSDP, against its ideal.

Compiles train.py's train step from shapes (`step_cost.compile_step`) on fake CPU devices and
reads XLA's `memory_analysis()`: arguments (the sharded train state and the batch) plus
temporaries is the step's peak. The ideal of a ZeRO-3 step that gathers one layer at a time:

    sharded state (the arguments) + a gradient shard (parameter bytes / fsdp)
    + two gathered layers in float32 (the largest layer's bytes, twice: one in use, the next
      arriving) + activations (temporaries(2 B) - temporaries(B): what the batch costs)

    python -m benchmarks.fsdp_memory --config=configs/nfnet_f7plus.py --fsdp 8 --data 1
    python -m benchmarks.fsdp_memory --config=configs/vit_p_1gf.py --model vit_G/14 --scan \
        --fsdp 8 --data 1 --batch 16 --resolution 224 --dtype bfloat16

`--no_ideal` skips the second compile (at twice the batch) that the activations need.
"""

import argparse
import json
import sys

from benchmarks import step_cost

if __name__ == "__main__":  # Fake CPU devices before jax starts.
    step_cost.force_host_devices(step_cost._devices_flag(sys.argv[1:]) or 8)

import jax  # noqa: E402

import train  # noqa: E402
from modeling import block_stack  # noqa: E402
from training import sharding  # noqa: E402

GIB = 2**30


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def largest_layer_bytes(params) -> int:
    """Bytes of the largest layer as `training/fsdp.py` gathers them: a direct child of the
    model, one block of a stack (`block_stack.is_stacked`), or the model's own parameters."""
    root = {k: v for k, v in params.items() if not isinstance(v, dict)}
    sizes = [nbytes(root)]
    for name, layer in params.items():
        if isinstance(layer, dict):
            depth = jax.tree.leaves(layer)[0].shape[0] if block_stack.is_stacked(name) else 1
            sizes.append(nbytes(layer) // depth)
    return max(sizes)


def step_memory(config, mesh_shape: dict, batch: int, resolution: int) -> dict:
    """Per-device bytes of the compiled step: arguments, temporaries, their sum (the peak)."""
    devices = jax.devices()[: mesh_shape["data"] * mesh_shape["fsdp"]]
    mesh = sharding.create_mesh(mesh_shape, devices)
    model = train.create_model(config)
    compiled, abstract_state, _ = step_cost.compile_step(config, model, mesh, batch, resolution)
    memory = compiled.memory_analysis()
    args, temps = memory.argument_size_in_bytes, memory.temp_size_in_bytes
    return {"arguments": args, "temporaries": temps, "peak": args + temps,
            "params": abstract_state.params}


def ideal_bytes(small: dict, large: dict, fsdp: int) -> int:
    """The ideal peak (module docstring) from the step compiled at batch B (`small`) and 2 B."""
    params = small["params"]
    activations = large["temporaries"] - small["temporaries"]
    return (small["arguments"] + nbytes(params) // fsdp + 2 * largest_layer_bytes(params)
            + activations)


def measure(config, mesh_shape: dict, batch: int, resolution: int, ideal: bool = True) -> dict:
    """{'arguments', 'temporaries', 'peak', 'ideal'} in bytes ('ideal' None without `ideal`)."""
    small = step_memory(config, mesh_shape, batch, resolution)
    result = {k: small[k] for k in ("arguments", "temporaries", "peak")}
    result["ideal"] = None
    if ideal:
        large = step_memory(config, mesh_shape, 2 * batch, resolution)
        result["ideal"] = ideal_bytes(small, large, mesh_shape["fsdp"])
    return result


def configure(args, config_args: list[str]):
    config = step_cost.load_config(config_args)
    if args.model:
        config.model.name = args.model
    layout = {}
    if args.scan:  # scanned blocks, rematerialised keeping matmul and conv outputs
        layout = block_stack.variant_layout(True)
    if args.unrolled:
        layout = dict(scan=False, remat=False)
    with config.unlocked():
        config.model.overrides.update(layout)
    config.compute_dtype = args.dtype
    config.global_batch_size = args.batch
    config.data.train_resolution = args.resolution
    if args.gather_dtype and "fsdp" in config:
        config.fsdp.gather_dtype = args.gather_dtype
    return config


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=None, help="fake CPU devices")
    parser.add_argument("--model", default=None, help="config.model.name, e.g. vit_G/14")
    parser.add_argument("--scan", action="store_true", help="scanned, rematerialised blocks")
    parser.add_argument("--unrolled", action="store_true", help="unrolled blocks, no remat")
    parser.add_argument("--fsdp", type=int, default=8)
    parser.add_argument("--data", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", help="config.compute_dtype")
    parser.add_argument("--gather_dtype", default=None, help="config.fsdp.gather_dtype")
    parser.add_argument("--no_ideal", action="store_true", help="skip the compile at 2 x batch")
    return parser.parse_known_args(argv)


def main(argv=None):
    args, config_args = parse_args(sys.argv[1:] if argv is None else argv)
    config = configure(args, config_args)
    mesh_shape = {"data": args.data, "fsdp": args.fsdp}
    result = measure(config, mesh_shape, args.batch, args.resolution, ideal=not args.no_ideal)
    gib = {k: None if v is None else round(v / GIB, 2) for k, v in result.items()}
    print(json.dumps({"model": config.model.name, "mesh": mesh_shape, "batch": args.batch,
                      "GiB": gib}))


if __name__ == "__main__":
    main()
