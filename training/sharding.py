"""The device mesh and every sharding rule of the project, inferred from shapes.

Mesh axes: 'data' (pure data parallelism) and 'fsdp' (data parallelism whose replicas also
split the parameters and optimizer state, ZeRO-3 style). The batch is split over both axes.
A parameter (or optimizer-state leaf of the same shape) is sharded over 'fsdp' along its
largest dimension that divides evenly, once it has at least `min_shard_size` elements; smaller
tensors (biases, gains, norms) are replicated. Stacked blocks (`block_stack.is_stacked`) are
never split along their depth axis, which the scan slices per layer (`training/fsdp.py` gathers
each slice). Models never annotate shardings themselves.
"""

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from modeling import block_stack

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # The global batch is split over every device.


def create_mesh(shape: Mapping[str, int], devices=None) -> Mesh:
    """Mesh of the given axis sizes; one axis may be -1 for "all remaining devices".

    >>> create_mesh({'data': -1, 'fsdp': 4})   # 32 devices: 8 x 4
    """
    devices = jax.devices() if devices is None else devices
    unknown = set(shape) - set(AXES)
    if unknown:
        raise ValueError(f"Unknown mesh axes {sorted(unknown)}; the mesh has axes {AXES}.")
    sizes = [int(shape.get(axis, 1)) for axis in AXES]
    named = lambda: dict(zip(AXES, sizes, strict=True))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"Mesh sizes {named()} must be positive, one may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"Mesh {named()} does not divide the {len(devices)} devices."
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"Mesh {named()} needs {math.prod(sizes)} devices, but "
            f"{len(devices)} are available; set config.mesh so the sizes multiply to it."
        )
    axis_types = (AxisType.Auto,) * len(AXES)
    try:
        return jax.make_mesh(tuple(sizes), AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:
        # A size that is no product of the slice's physical axes (fsdp 8 on v4-128's 4x4x4):
        # jax's device mesh then splits a physical axis, which it does only when asked.
        grid = mesh_utils.create_device_mesh(tuple(sizes), devices,
                                             allow_split_physical_axes=True)
        return Mesh(grid, AXES, axis_types=axis_types)


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_shard_size: int,
               stacked: bool = False) -> PartitionSpec:
    """Shard the largest evenly divisible dimension over 'fsdp' (not the leading depth axis of
    `stacked` blocks); replicate small tensors."""
    if fsdp_size == 1 or math.prod(shape) < min_shard_size:
        return PartitionSpec()
    for dim in np.argsort(shape, kind="stable")[::-1]:
        if shape[dim] % fsdp_size == 0 and not (stacked and dim == 0):
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def _in_stacked_blocks(path) -> bool:
    """Whether a leaf at `path` (of params, or of state holding params) has a depth axis."""
    keys = (getattr(k, "key", None) for k in path)
    return any(isinstance(k, str) and block_stack.is_stacked(k) for k in keys)


def tree_shardings(tree, mesh: Mesh, min_shard_size: int = 2**18):
    """NamedShardings for a pytree of arrays or ShapeDtypeStructs, by the shape rule. Refuses
    a tensor of at least `min_shard_size` elements that the 'fsdp' size cannot split."""
    fsdp = mesh.shape["fsdp"]

    def sharding(path, x):
        shape = tuple(x.shape)
        spec = param_spec(shape, fsdp, min_shard_size, stacked=_in_stacked_blocks(path))
        if fsdp > 1 and spec == PartitionSpec() and math.prod(shape) >= min_shard_size:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(
                f"{name} of shape {shape} has no dimension (depth axes aside) that the fsdp "
                f"size {fsdp} divides, so every device would hold it whole: set config.mesh.fsdp "
                "to a divisor of one of its dimensions, or raise config.fsdp_min_shard_size "
                f"above its {math.prod(shape)} elements to replicate it."
            )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, tree)


def with_shardings(tree, shardings):
    """ShapeDtypeStructs of a pytree's arrays carrying `shardings` (to compile from shapes)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe(shardings, tree) -> list[str]:
    """One line per leaf: path, shape, partition spec (for --dry_run)."""
    lines = []
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings), strict=True
    ):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        lines.append(f"{name:<60} {str(tuple(leaf.shape)):<22} {sharding.spec}")
    return lines
