"""FSDP (ZeRO-3) per layer: inside the per-device step, each layer's FSDP-sharded parameters are
all-gathered just before the layer runs, and their gradient leaves it reduce-scattered.

A device so holds the whole parameters of about one layer at a time, not the whole model, as in
big_vision's and MaxText's FSDP. A layer is each direct child of the model (stem, head, every
unrolled block) and each iteration of a scanned block stack (`modeling/block_stack.py`). The
models stay free of sharding code: a flax method interceptor (`per_layer`) catches the first
call into a layer whose parameters are still shards and runs it through `nn.map_variables`,
whose input transform gathers them by their PartitionSpecs. The model's own (root) parameters,
e.g. a ViT's position embedding, are gathered the same way around the whole model call.

Each gathered layer runs under `nn.remat` keeping only matmul and conv outputs, so the backward
pass gathers the layer again instead of keeping every gathered layer alive from the forward
pass to the backward one; in a scanned stack that happens per iteration of the backward loop,
and the gather's transpose, a reduce-scatter, runs per block there too. A layer's gather waits
for the layer's input (an optimization barrier): XLA would otherwise hoist the gathers of all
unrolled layers, which depend on the parameters alone, to the start of the step.

The gather is a `jax.custom_vjp`: it may gather in a cheaper dtype (config `fsdp.gather_dtype`,
bfloat16 halves the traffic) while its backward pass reduce-scatters the gradient in float32.
"""

import contextlib
import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec

from modeling import block_stack

AXIS = "fsdp"
GATHER_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a parameter is sharded: `dim`, the dimension split over 'fsdp' (None: replicated),
    of a parameter of global `shape` (a scanned stack's slice lacks the first dimension)."""

    dim: int | None
    shape: tuple[int, ...]


def check_gather_dtype(name: str | None) -> jnp.dtype | None:
    """The dtype of config `fsdp.gather_dtype` (None: the parameters' own)."""
    if name is None or name == "":
        return None
    if name not in GATHER_DTYPES:
        raise ValueError(f"fsdp.gather_dtype {name!r} is not one of {GATHER_DTYPES}; set "
                         "config.fsdp.gather_dtype to one of them, or None for the params' own.")
    return jnp.dtype(name)


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _fsdp_dim(name: str, spec: PartitionSpec) -> int | None:
    """The dimension `spec` splits over 'fsdp'; refuses any other split, naming the parameter."""
    dims = [dim for dim, entry in enumerate(spec) if entry is not None]
    if len(dims) > 1 or any(spec[d] != AXIS for d in dims):
        raise ValueError(
            f"Parameter {name} has the sharding {spec}, but the per-device step only gathers "
            f"parameters split along one dimension over '{AXIS}': shard it by "
            "sharding.tree_shardings, or replicate it."
        )
    return dims[0] if dims else None


def layouts(params, specs):
    """The Layout of each parameter from its PartitionSpec, checked (one sentence naming the
    parameter): one dimension over 'fsdp' at most, and never the depth axis of stacked blocks,
    which the scan slices per layer."""

    def layout(path, param, spec):
        name = _name(path)
        dim = _fsdp_dim(name, spec)
        if dim == 0 and block_stack.is_stacked(name):
            raise ValueError(
                f"Parameter {name} is sharded over '{AXIS}' along its depth axis, which the "
                "scan over its blocks slices: shard another dimension (sharding.tree_shardings "
                "never picks the depth axis)."
            )
        return Layout(dim, tuple(param.shape))

    return jax.tree_util.tree_map_with_path(layout, params, specs)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def gather(shard: jax.Array, dim: int, dtype) -> jax.Array:
    """Inside shard_map: the whole parameter from each device's `shard` along `dim`, in `dtype`
    (None: the shard's); its gradient is reduce-scattered back in the shard's dtype."""
    return jax.lax.all_gather(shard.astype(dtype or shard.dtype), AXIS, axis=dim, tiled=True)


def _gather_fwd(shard, dim, dtype):
    return gather(shard, dim, dtype), jnp.zeros((0,), shard.dtype)  # the residual: a dtype


def _gather_bwd(dim, dtype, residual, cotangent):
    # The sum of every device's gradient, each device keeping its shard, in float32. Scattered
    # as a 2-D array along its leading dimension: the TPU compiler (libtpu 0.0.52) refuses
    # NFNet's step when it scatters the kernels in place ("UNIMPLEMENTED: AllReduceScatterFusion
    # not implemented for 2nd-minor compaction"); tests/integration/test_tpu_aot.py compiles it.
    leading = jnp.moveaxis(cotangent.astype(residual.dtype), dim, 0)
    flat = leading.reshape(leading.shape[0], -1)
    grad = jax.lax.psum_scatter(flat, AXIS, scatter_dimension=0, tiled=True)
    grad = grad.reshape(grad.shape[0], *leading.shape[1:])
    return (jnp.moveaxis(grad, 0, dim),)


gather.defvjp(_gather_fwd, _gather_bwd)


def gather_tree(variables, tree_layouts, dtype):
    """`variables` with every sharded leaf gathered (a scanned stack's per-layer slices too:
    one dimension fewer than their Layout, the depth axis first)."""

    def one(x, layout):
        if layout.dim is None:
            return x
        dim = layout.dim - (len(layout.shape) - x.ndim)
        return gather(x, dim, dtype)

    return jax.tree.map(one, variables, tree_layouts)


def is_root(tree_layouts, key: str) -> bool:
    """Whether the parameter `key` belongs to the model itself rather than to a layer."""
    return isinstance(tree_layouts[key], Layout)


def gather_root(params, tree_layouts, dtype):
    """(params, layouts): the model's own parameters (e.g. a ViT's position embedding) gathered
    now, the layers' left sharded for `per_layer`, and their layouts marking the model's own
    ones as whole. For steps that change the model's own parameters before applying it."""
    params = {
        k: gather_tree(v, tree_layouts[k], dtype) if is_root(tree_layouts, k) else v
        for k, v in params.items()
    }
    whole = lambda layout: Layout(None, layout.shape)
    tree_layouts = {
        k: whole(v) if is_root(tree_layouts, k) else v for k, v in tree_layouts.items()
    }
    return params, tree_layouts


def _has_sharded(tree_layouts) -> bool:
    return any(leaf.dim is not None for leaf in jax.tree.leaves(tree_layouts))


def _subtree(tree_layouts, path: tuple[str, ...]):
    for key in path:
        if not isinstance(tree_layouts, dict) or key not in tree_layouts:
            return None
        tree_layouts = tree_layouts[key]
    return tree_layouts


def _policy():
    """What a gathered layer keeps for its backward pass: matmul and conv outputs only. The rest
    (gathered parameters, their casts and weight standardisation, cheap elementwise results) is
    recomputed there, so no gathered parameter outlives its layer's forward pass."""
    return jax.checkpoint_policies.dots_saveable


def _is_shard(x: jax.Array, layout: Layout) -> bool:
    """Whether `x` (a parameter, or its slice in a scan) is a shard of a sharded parameter."""
    if layout.dim is None:
        return False
    dim = layout.dim - (len(layout.shape) - x.ndim)
    return x.shape[dim] != layout.shape[layout.dim]


def _still_sharded(params, tree_layouts) -> bool:
    """Whether `params` (a layer's variables, or their slice in a scan) hold shards to gather:
    False once gathered (inside the gathered layer) and where nothing is sharded."""
    try:
        shards = jax.tree.map(_is_shard, params, tree_layouts)
    except ValueError:  # not a whole layer's variables
        return False
    return any(jax.tree.leaves(shards))


def _static_args(args) -> tuple[list[int], Any]:
    """(positions of the array arguments, a function putting arrays back in their places):
    the others (a block's `train` flag, Python floats) stay static, closed over."""
    dynamic = [i for i, a in enumerate(args) if isinstance(a, jax.Array)]

    def merge(arrays):
        full = list(args)
        for i, a in zip(dynamic, arrays, strict=True):
            full[i] = a
        return full

    return dynamic, merge


@contextlib.contextmanager
def per_layer(tree_layouts, dtype):
    """Within the context, flax models applied to sharded `params` gather each layer's
    parameters as the layer runs (see the module docstring). Use inside `shard_map`."""
    root_layouts = {k: v for k, v in tree_layouts.items() if is_root(tree_layouts, k)}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        # Flax's own wrapped functions (transforms') and unbound modules pass through.
        if module.scope is None or not hasattr(type(module), context.method_name):
            return next_fun(*args, **kwargs)
        params = module.variables.get("params", {})
        if not module.path:
            if not _still_sharded({k: params.get(k) for k in root_layouts}, root_layouts):
                return next_fun(*args, **kwargs)
            return gathered_model(module, context.method_name, args, kwargs)
        layer = _subtree(tree_layouts, module.path)
        if layer is None or not _still_sharded(params, layer):
            return next_fun(*args, **kwargs)
        return gathered_layer(module, context.method_name, layer, args, kwargs)

    def gathered_layer(module, method, layer, args, kwargs):
        dynamic, merge = _static_args(args)

        def call(clone, *arrays):
            return getattr(clone, method)(*merge(arrays), **kwargs)

        def gather_in(variables):
            params = variables["params"]
            if dynamic:  # not before the layer's input exists (else XLA hoists every gather)
                params, _ = jax.lax.optimization_barrier((params, args[dynamic[0]]))
            return {**variables, "params": gather_tree(params, layer, dtype)}

        run = nn.remat(nn.map_variables(call, "params", trans_in_fn=gather_in),
                       policy=_policy(), prevent_cse=True)
        return run(module, *(args[i] for i in dynamic))

    def gathered_model(module, method, args, kwargs):
        """The model's own parameters gathered for the whole call (they are few and small)."""

        def gather_in(variables):
            params = variables["params"]
            gathered = {k: gather_tree(params[k], v, dtype) for k, v in root_layouts.items()}
            return {**variables, "params": {**params, **gathered}}

        def call(clone, *args, **kwargs):
            return getattr(clone, method)(*args, **kwargs)

        return nn.map_variables(call, "params", trans_in_fn=gather_in)(module, *args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def sharded_layouts(params, specs) -> Any:
    """`layouts`, or None when no parameter is FSDP-sharded (nothing to gather)."""
    tree_layouts = layouts(params, specs)
    return tree_layouts if _has_sharded(tree_layouts) else None
