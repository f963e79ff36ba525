"""TPU slices by name, and their devices from the TPU compiler on any machine (no TPU needed).

libtpu (`pip install -e .[tpu]`, or the `test` extra) describes a slice's topology to JAX
(`jax.experimental.topologies.get_topology_desc`); a mesh of those devices lowers and compiles a
program ahead of time with the real TPU compiler, while nothing runs (JAX_PLATFORMS=cpu keeps
execution on the CPU).

Names as Cloud TPU gives them count TensorCores for the megacore chips (v4-256 is 128 chips,
v5p-128 is 64) and chips for the one-core chips (v5litepod-64, v6e-64 are 64 chips); with
megacore a v4 or v5p chip is one JAX device. Slices take the standard shapes of the Cloud TPU
docs: 3D for v4 and v5p (v4-8 2x2x1, v4-16 2x2x2, v4-32 2x2x4, ..., v4-128 4x4x4, v4-256
4x4x8), 2D for v5e and v6e (4 chips 2x2, 8 2x4, 16 4x4, ..., 256 16x16). An explicit
`v4:4x4x8` names the shape itself.
"""

import dataclasses
import math
import os
import re

import jax

# Cloud name prefix -> (libtpu's name, TensorCores per chip in the name's count, torus rank,
# modeling.hardware key).
GENERATIONS = {
    "v3": ("v3", 2, 2, "tpu_v3"),
    "v4": ("v4", 2, 3, "tpu_v4"),
    "v5p": ("v5p", 2, 3, "tpu_v5p"),
    "v5litepod": ("v5e", 1, 2, "tpu_v5e"),
    "v5e": ("v5e", 1, 2, "tpu_v5e"),
    "v6e": ("v6e", 1, 2, "tpu_v6e"),
}
MEGACORE = {"v4", "v5p"}  # Both TensorCores of a chip behind one JAX device.
# libtpu refuses to start without these on a machine that is not a TPU VM; any value serves.
LIBTPU_ENVIRONMENT = {"TPU_ACCELERATOR_TYPE": "v4-8", "TPU_WORKER_HOSTNAMES": "localhost",
                      # A compile-only use: several processes (tests, a table run) may load it.
                      "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


class SliceError(ValueError):
    """A slice name, mesh or batch that cannot work; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    name: str  # as the user gave it
    generation: str  # libtpu's: v4, v5p, v5e, v6e, v3
    shape: tuple[int, ...]  # chips along each torus dimension
    accelerator: str  # modeling.hardware.ACCELERATORS key

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def topology(self) -> str:
        """libtpu's topology name, e.g. 'v4:4x4x8'."""
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def chip_config(self) -> str | None:
        return "megacore" if self.generation in MEGACORE else None

    @property
    def devices_per_chip(self) -> int:
        return 2 if self.generation == "v3" else 1  # v3: each TensorCore is a device.


def standard_shape(chips: int, rank: int) -> tuple[int, ...]:
    """The Cloud TPU docs' shape of a slice: from 2x2(x1), double the smallest dimension (the
    last of equals) and sort, until the chips are there: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4..."""
    if chips < 4 or chips & (chips - 1):
        raise SliceError(f"{chips} chips is not a standard slice (a power of two, 4 or more); "
                         "name the shape explicitly, e.g. v4:2x2x1.")
    shape = [2, 2] + [1] * (rank - 2)
    while math.prod(shape) < chips:
        smallest = min(shape)
        index = max(i for i, size in enumerate(shape) if size == smallest)
        shape[index] *= 2
        shape.sort()
    return tuple(shape)


def parse_slice(name: str) -> TpuSlice:
    """'v4-256', 'v5p-128', 'v5litepod-64', 'v6e-64' or an explicit 'v4:4x4x8'."""
    text = name.strip().lower()
    explicit = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", text)
    cloud = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text)
    prefix = (explicit or cloud).group(1) if (explicit or cloud) else None
    if prefix not in GENERATIONS:
        raise SliceError(
            f"Unknown TPU slice {name!r}; give a Cloud TPU name such as v4-256, v5p-128, "
            "v5litepod-64 or v6e-64, or a shape such as v4:4x4x8.")
    generation, cores_per_chip, rank, accelerator = GENERATIONS[prefix]
    if explicit:
        shape = tuple(int(size) for size in explicit.group(2).split("x"))
        if len(shape) != rank or min(shape) < 1:
            raise SliceError(f"A {generation} slice has {rank} dimensions; {name!r} gives "
                             f"{len(shape)}, e.g. {generation}:{'x'.join(['2'] * rank)}.")
    else:
        count = int(cloud.group(2))
        if count % cores_per_chip:
            raise SliceError(f"{name!r}: {prefix} names count TensorCores, {cores_per_chip} per "
                             "chip; give an even count such as "
                             f"{prefix}-{cores_per_chip * 4}.")
        shape = standard_shape(count // cores_per_chip, rank)
    return TpuSlice(name, generation, shape, accelerator)


def compile_on(device, fn, *shapes):
    """`fn` jitted and compiled ahead of time on one device, its arguments replicated there."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    replicated = NamedSharding(Mesh([device], ("d",)), PartitionSpec())
    return jax.jit(fn, in_shardings=(replicated,) * len(shapes)).lower(*shapes).compile()


def slice_devices(tpu_slice: TpuSlice) -> list:
    """The slice's JAX devices from libtpu's topology description (compile only)."""
    for variable, value in LIBTPU_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    try:
        import libtpu  # noqa: F401  (the TPU compiler; `pip install -e .[tpu]`)
    except ImportError:
        raise SliceError("Compiling for a TPU slice needs libtpu; install it with "
                         "`pip install -e '.[tpu]'` (or the test extra) and rerun.") from None
    from jax.experimental import topologies

    options = {"chip_config_name": tpu_slice.chip_config} if tpu_slice.chip_config else {}
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=tpu_slice.topology, **options)
    except Exception as error:  # libtpu's own words: an unsupported shape, a lock, ...
        raise SliceError(f"libtpu did not describe the slice {tpu_slice.topology}: "
                         f"{str(error).splitlines()[0]}") from None
    return list(description.devices)
