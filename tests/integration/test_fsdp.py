"""FSDP gathers each layer's parameters as it runs (training/fsdp.py): bad layouts and gather
dtypes refused in one sentence; the compiled step of a small scanned ViT on 4 fake devices
within 1.25x of the ideal memory (below the data-parallel step's), one device's FLOPs / 4 per
device, and no collective but parameter gathers and gradient reductions.

The compiled-step checks run in a subprocess with 4 CPU devices:

    JAX_NUM_CPU_DEVICES=4 python -m tests.integration.test_fsdp
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from modeling import block_stack
from training import fsdp, sharding, steps

REPO = Path(__file__).resolve().parents[2]
BATCH, RESOLUTION = 8, 32
# Parameters (3.2M) outweigh activations, as in the large models FSDP is for.
SMALL_VIT = dict(width=256, depth=4, mlp_dim=1024, num_heads=4, patch_size=8, scan=True,
                 remat=True, remat_policy="dots_saveable")
MEMORY_TOLERANCE = 1.25  # the bar
FLOPS_TOLERANCE = 1.1  # as tests/integration/test_step_cost.py
SMALL_ELEMENTS = 4096  # all-reduced losses, norms and counters


def test_a_bad_gather_dtype_is_refused():
    with pytest.raises(ValueError, match="fsdp.gather_dtype 'int8' is not one of"):
        steps.make_eval_step(None, lambda x: x, fsdp_gather_dtype="int8")


@pytest.mark.parametrize("spec", [P("data", None), P("fsdp", "fsdp"), P(("data", "fsdp"))])
def test_a_parameter_split_other_than_once_over_fsdp_is_refused(spec):
    params = {"dense": {"kernel": np.zeros((8, 8))}}
    with pytest.raises(ValueError, match="Parameter dense/kernel has the sharding"):
        fsdp.layouts(params, {"dense": {"kernel": spec}})


def test_stacked_blocks_are_never_split_along_their_depth():
    mesh = AbstractMesh((1, 4), sharding.AXES)
    state = {"blocks": {"kernel": np.zeros((8, 4, 6))}, "head": {"kernel": np.zeros((8, 6))}}
    specs = jax.tree.map(lambda s: s.spec, sharding.tree_shardings(state, mesh, 16))
    assert specs == {"blocks": {"kernel": P(None, "fsdp", None)},
                     "head": {"kernel": P("fsdp", None)}}
    with pytest.raises(ValueError, match="blocks/kernel is sharded over 'fsdp' along its depth"):
        fsdp.layouts(state, {"blocks": {"kernel": P("fsdp")}, "head": {"kernel": P()}})


def test_a_large_parameter_that_fsdp_cannot_split_is_refused():
    mesh = AbstractMesh((1, 4), sharding.AXES)
    with pytest.raises(ValueError, match=r"head/kernel of shape \(7, 9\) has no dimension .* "
                                         "set config.mesh.fsdp"):
        sharding.tree_shardings({"head": {"kernel": np.zeros((7, 9))}}, mesh, 16)


def test_a_bfloat16_gather_reduces_the_gradient_in_float32():
    mesh = jax.make_mesh((1,), ("fsdp",), devices=jax.devices()[:1])

    def loss(shard):
        return jnp.sum(fsdp.gather(shard, 0, jnp.bfloat16).astype(jnp.float32) ** 2)

    grad = jax.shard_map(jax.grad(loss), mesh=mesh, in_specs=P(),
                         out_specs=P(), check_vma=False)
    jaxpr = str(jax.make_jaxpr(grad)(jnp.ones((4, 3))))
    assert re.search(r"bf16\[4,3\] = all_gather", jaxpr), jaxpr
    assert re.search(r"f32\[4,3\] = reduce_scatter", jaxpr), jaxpr


# ----------------------------------------------------------------------------------------------
# The compiled step, in a subprocess with 4 devices.
# ----------------------------------------------------------------------------------------------


def small_vit_config():
    from configs import quickstart

    c = quickstart.get_config()
    c.model.name, c.model.overrides = "vit_P-tiny", SMALL_VIT
    c.global_batch_size, c.data.train_resolution = BATCH, RESOLUTION
    c.fsdp_min_shard_size = 2**14  # kernels sharded; biases, norms, the head's bias replicated
    return c


def hlo_collectives(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, result dims) of every collective instruction of an optimized HLO module."""
    pattern = re.compile(r"= \w+\[([\d,]*)\]\S* (all-gather|reduce-scatter|all-reduce|"
                         r"all-to-all|collective-permute)(?:-start)?\(")
    found = []
    for line in text.splitlines():
        if match := pattern.search(line):
            found.append((match[2], tuple(int(d) for d in match[1].split(",") if d)))
        elif re.search(r"\b(all-to-all|collective-permute|all-reduce)(-start)?\(", line):
            found.append(("tuple", ()))  # a combined (tuple-shaped) collective
    return found


def parameter_shapes(params, layouts) -> dict[str, list]:
    """Dimensions (sorted: XLA may transpose) of the parameters as a layer sees them (a stack's
    slice): 'whole' and 'shards' of the FSDP-sharded ones, 'replicated' of the others."""
    shapes = {"whole": set(), "shards": set(), "replicated": set()}

    def add(path, x, layout):
        shape = list(x.shape)[1 if block_stack.is_stacked(str(path[0].key)) else 0:]
        if layout.dim is None:
            shapes["replicated"].add(tuple(sorted(shape)))
            return
        shapes["whole"].add(tuple(sorted(shape)))
        shape[layout.dim - (x.ndim - len(shape))] //= 4
        shapes["shards"].add(tuple(sorted(shape)))

    jax.tree_util.tree_map_with_path(add, params, layouts)
    return {k: sorted(v) for k, v in shapes.items()}


def compiled_costs() -> dict:
    from benchmarks import fsdp_memory, step_cost

    config, devices = small_vit_config(), jax.devices()[:4]
    fsdp4, data4 = {"data": 1, "fsdp": 4}, {"data": 4, "fsdp": 1}
    memory = fsdp_memory.measure(config, fsdp4, BATCH, RESOLUTION)
    data_parallel = fsdp_memory.measure(config, data4, BATCH, RESOLUTION, ideal=False)
    model = step_cost.train.create_model(config)
    mesh = sharding.create_mesh(fsdp4, devices)
    compiled, state, shardings = step_cost.compile_step(config, model, mesh, BATCH, RESOLUTION)
    one_mesh = sharding.create_mesh({"data": 1, "fsdp": 1}, devices[:1])
    one = step_cost.compile_step(config, model, one_mesh, BATCH, RESOLUTION)[0]
    specs = jax.tree.map(lambda s: s.spec, shardings.params)
    layouts = fsdp.layouts(state.params, specs)
    flops = lambda c: step_cost._cost_analysis(c)["flops"]
    return {
        "fsdp": memory, "data_parallel": data_parallel,
        "flops": flops(compiled), "one_device_flops": flops(one),
        "collectives": hlo_collectives(compiled.as_text()),
        "shapes": parameter_shapes(state.params, layouts),
        "sharded_params": sum(layout.dim is not None for layout in jax.tree.leaves(layouts)),
    }


@pytest.fixture(scope="module")
def costs() -> dict:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "tests.integration.test_fsdp"], cwd=REPO,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fsdp_step_memory_is_near_its_ideal_and_below_data_parallelism(costs):
    peak, ideal = costs["fsdp"]["peak"], costs["fsdp"]["ideal"]
    assert peak <= MEMORY_TOLERANCE * ideal, (peak, ideal)
    # Gathering the whole model up front (the step before per-layer gathers) costs as much as
    # data parallelism: the whole model's parameters and gradients in float32.
    assert costs["data_parallel"]["peak"] > MEMORY_TOLERANCE * ideal, costs


def test_each_device_does_a_quarter_of_one_devices_work(costs):
    ratio = costs["flops"] * 4 / costs["one_device_flops"]
    assert 1 / FLOPS_TOLERANCE < ratio < FLOPS_TOLERANCE, ratio


def test_collectives_gather_parameters_and_reduce_scatter_gradients_only(costs):
    whole, shards, replicated = ({tuple(s) for s in costs["shapes"][k]}
                                 for k in ("whole", "shards", "replicated"))
    kinds = {}
    for kind, dims in costs["collectives"]:
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "all-gather":
            assert tuple(sorted(dims)) in whole, dims
        elif kind == "reduce-scatter":  # a shard's elements, scattered as a 2-D array (fsdp.py)
            assert np.prod(dims) in {np.prod(shard) for shard in shards}, dims
        elif kind == "all-reduce":  # losses, norms, gradients of the replicated parameters
            assert np.prod(dims) <= SMALL_ELEMENTS or tuple(sorted(dims)) in replicated, dims
        else:
            assert kind == "tuple", kind  # combined all-reduces of such arrays
    # Each sharded parameter is gathered for the forward pass and again for the backward pass,
    # and its gradient reduce-scattered once (a scanned block's inside the loops, per block);
    # but the patch embedding, whose backward pass computes no gradient of the images, is not
    # gathered again.
    count = costs["sharded_params"]
    assert kinds["all-gather"] == 2 * count - 1, kinds
    assert kinds["reduce-scatter"] == count, kinds
    assert not {"all-to-all", "collective-permute"} & set(kinds), kinds


if __name__ == "__main__":
    print(json.dumps(compiled_costs()))
