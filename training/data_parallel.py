"""Data parallelism by hand: the steps' model computation runs per device under `jax.shard_map`
over the batch axes, and per example under `vmap`.

Why by hand. XLA's SPMD partitioner does not keep the batch sharding of a convolution with
1 < feature_group_count < input features (openxla/xla#47945; the fix proposed in
openxla/xla#48086 is not released): it all-gathers the global batch, runs the grouped conv on
all of it on every device, then slices. NFNets' grouped 3x3 convs would make every device do
most of the global batch's work, more so the more devices there are. Under `shard_map` a device
runs its own examples whatever the ops, and the only collectives are the ones written here:
FSDP parameter all-gathers (per layer, `training/fsdp.py`), the gradient reduction
(reduce-scatter over 'fsdp', all-reduce over 'data'), BatchNorm's per-channel statistics and
scalar metrics.
tests/integration/test_step_cost.py keeps the bug's reproduction on a bare grouped conv; when it
fails, a released XLA partitions grouped convs and this module could give way to plain `jit`.
The TPU compiler does partition them (libtpu 0.0.52, compiled for 4 v4 chips: no all-gather, a
quarter of one chip's FLOPs each; tests/integration/test_tpu_aot.py); the per-device step stays
for XLA:GPU and XLA:CPU, which do not.

Mesh independence. A device sees only its examples, so whatever combines examples is defined to
give the same result on every mesh:
- randomness is per example: example j of the global batch draws from fold_in(key, j), and the
  model runs per example (`vmap` over EXAMPLE_AXIS), so a dropout or stochastic-depth mask does
  not depend on which device holds the example;
- BatchNorm averages its statistics over EXAMPLE_AXIS and the batch axes: the global batch
  (models take the axis names as `batch_norm_axis_name`; see `with_batch_norm_axes`);
- the steps pick sub-batches that no device boundary cuts, for any mesh that splits the batch
  evenly: MixUp pairs and SAM groups lie whole on one device, and each micro-batch of gradient
  accumulation has an equal part on every device.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec

from training.sharding import AXES, BATCH_AXES

EXAMPLE_AXIS = "example"  # the `vmap` axis of the model applied to one example at a time
BATCH_NORM_FIELD = "batch_norm_axis_name"


def resolve_mesh(mesh: Mesh | None):
    """`mesh`, else the mesh set by `jax.set_mesh`, else a mesh of one device."""
    if mesh is not None:
        return mesh
    context = jax.sharding.get_abstract_mesh()
    if not context.empty:
        return context
    return jax.make_mesh((1,) * len(AXES), AXES, devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def num_batch_shards(mesh) -> int:
    """Devices the batch is split over."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def param_specs(params, shardings=None):
    """The PartitionSpec of each parameter: from its NamedSharding, or replicated."""
    if shardings is None:
        return jax.tree.map(lambda _: PartitionSpec(), params)
    return jax.tree.map(lambda s: s.spec, shardings)


def _fsdp_dim(spec: PartitionSpec) -> int | None:
    for dim, entry in enumerate(spec):
        if entry == "fsdp" or (isinstance(entry, tuple) and "fsdp" in entry):
            if entry != "fsdp":
                raise ValueError(f"Parameter spec {spec} shards over more than 'fsdp'.")
            return dim
    return None


def gather_params(params, specs):
    """Inside shard_map: each device's FSDP shards all-gathered into whole parameters."""

    def gather(x, spec):
        dim = _fsdp_dim(spec)
        return x if dim is None else jax.lax.all_gather(x, "fsdp", axis=dim, tiled=True)

    return jax.tree.map(gather, params, specs)


def mean_gradients(grads, specs, num_devices: int, scattered: bool = False):
    """Inside shard_map: the mean over devices of each device's gradients, returned in the
    parameters' sharding: reduce-scattered over 'fsdp' where a parameter is FSDP-sharded (unless
    `scattered`: the per-layer gathers' backward pass did it, `training/fsdp.py`), summed over
    the other batch axes."""
    others = tuple(a for a in BATCH_AXES if a != "fsdp")

    def reduce(g, spec):
        dim = _fsdp_dim(spec)
        if dim is None:
            g = jax.lax.psum(g, BATCH_AXES)
        else:
            if not scattered:
                g = jax.lax.psum_scatter(g, "fsdp", scatter_dimension=dim, tiled=True)
            g = jax.lax.psum(g, others)
        return g / num_devices

    return jax.tree.map(reduce, grads, specs)


def example_positions(local_batch: int) -> jax.Array:
    """Inside shard_map: the positions in the global batch of this device's examples (the batch
    is split over BATCH_AXES in order, as `sharding.batch_sharding`)."""
    return jax.lax.axis_index(BATCH_AXES) * local_batch + jnp.arange(local_batch)


def example_keys(key: jax.Array, positions: jax.Array) -> jax.Array:
    """One key per example: fold_in(key, position in the global batch)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)


def with_batch_norm_axes(model: nn.Module, axes: tuple[str, ...]) -> nn.Module:
    """`model` with its BatchNorm statistics averaged over the named `axes`; unchanged for models
    without a `batch_norm_axis_name` field (those without BatchNorm)."""
    if BATCH_NORM_FIELD in {f.name for f in dataclasses.fields(model)}:
        return model.clone(**{BATCH_NORM_FIELD: axes})
    return model


def check_batch_norm_axes(axes: tuple[str, ...]):
    """A flax method interceptor refusing a training-mode BatchNorm that averages over other
    axes than `axes`: under `vmap` and `shard_map` such a BatchNorm would normalise each example
    or each device by its own statistics."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
            running = args[1] if len(args) > 1 else kwargs.get("use_running_average")
            running = module.use_running_average if running is None else running
            names = module.axis_name
            names = (names,) if isinstance(names, str) else tuple(names or ())
            if not running and set(names) != set(axes):
                raise ValueError(
                    f"BatchNorm {module.name} averages over axes {names}, not the "
                    f"batch's {axes}: give the model a `{BATCH_NORM_FIELD}` field passed to "
                    "every nn.BatchNorm as axis_name."
                )
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)
