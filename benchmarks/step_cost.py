r"""Cost audit of the compiled train step: FLOPs, memory, collectives, against their ideals.

Compiles train.py's own train step (`steps.jit_train_step`: config -> model -> optimizer ->
abstract train state sharded by `sharding.tree_shardings` -> jit with donation) from abstract
shapes only, nothing allocated, on fake CPU devices or real ones, and reports per device:

- FLOPs counted over the optimized HLO (`compiled.as_text()`): every `convolution` and `dot`,
  inside fusions too, times the number of times its computation runs, so a `while` body counts
  once per iteration (`known_trip_count` of the while; nested loops multiply) and each branch of
  a `conditional` once (the step's skip-update branch is nearly free). FLOPs per instruction
  follow XLA's HloCostAnalysis: a dot is 2 x output elements x contracted size; a convolution is
  2 x (input features / feature_group_count) x output features x (batch / batch_group_count) x
  the kernel taps that land inside the input (padding taps skipped); XLA:GPU's cuBLAS and cuDNN
  custom-calls are mapped back to their dot or convolution. XLA's own
  `cost_analysis()['flops']` is shown beside it: it also counts elementwise ops, but a loop body
  only once.
- Bytes accessed (`cost_analysis()`: loop bodies counted once, like its FLOPs), temporaries,
  arguments, outputs and aliased bytes (`compiled.memory_analysis()`).
- Every collective of the HLO: kind (async -start/-done pairs once; a tuple-shaped combined
  all-reduce split into its arrays), the whole array's shape, dtype and bytes (the gathered
  array of an all-gather, the scattered one of a reduce-scatter), executions per step (loop trip
  counts included), devices per replica group, and a class: 'parameter/gradient' when its shape
  is a parameter's full shape or its FSDP shard (in any order of dimensions, size-1 ones
  ignored, scalars excluded; for an all-gather, the whole shape of an FSDP-sharded parameter
  gathered over as many devices as it has shards),
  'small' when it has at most SMALL_ELEMENTS elements (losses, norms, BatchNorm statistics),
  else 'activation'. A shape test: an activation that happens to have a parameter's shape is
  classed as the parameter.
- Ideals. FLOPs: the one-device step is compiled at two global batch sizes, flops(B) = a B + c
  (a per example, c per step: optimizer, weight standardization); on N devices of which F along
  'fsdp' the ideal per device is a B / N + c / F. Collectives: pure data parallelism reduces the
  gradients once (one all-reduce of the parameter bytes); FSDP all-gathers the sharded
  parameters twice (per layer, in the forward pass and again in the backward pass, which keeps
  no gathered layer: training/fsdp.py), reduce-scatters their gradients, all-reduces the
  replicated parameters' gradients (over all devices) and the shards' (over 'data'); small
  arrays aside, nothing else, and nothing classed 'activation'.
- A roofline estimate on a named accelerator (modeling/hardware.py): step time = max(FLOPs / peak
  FLOP/s, bytes accessed / HBM bandwidth) + bytes each device sends in collectives / its share of
  the chip's one-way interconnect bandwidth (half the two-way ICI or NVLink figure). Bytes sent
  follow ring algorithms over a group of n devices: all-reduce 2 (n - 1) / n of the array,
  all-gather and reduce-scatter (n - 1) / n of the whole array, all-to-all (n - 1) / n,
  collective-permute all of it. Compute and memory traffic overlap perfectly and collectives not at
  all; every link is used at its peak. MFU = model FLOPs per device (6 x MACs per example x batch /
  N, as train.py) / (step time x peak).

On fake CPU devices the SPMD partitioning, hence the collectives, is the one any backend gets
from the same shardings; fusion, layouts and so bytes accessed and temporaries are XLA:CPU's.

    python -m benchmarks.step_cost --config=configs/quickstart.py --devices 8
    python -m benchmarks.step_cost --config=configs/nfnet_f0.py --devices 64 \
        --mesh data=16,fsdp=4 --batch 4096 --resolution 224 --accelerator tpu_v4 --json f0.json

`--devices N` makes N CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N,
JAX_PLATFORMS=cpu) when jax is not started yet; without it the local devices are used.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def force_host_devices(count: int) -> None:
    """N fake CPU devices for a jax that is not imported yet (else only jax's own setting)."""
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
        return
    import jax

    try:  # jax refuses this setting once it has made its devices.
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        return
    jax.config.update("jax_platforms", "cpu")


def _devices_flag(argv: list[str]) -> int | None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--devices", type=int, default=None)
    return parser.parse_known_args(argv)[0].devices


if __name__ == "__main__" and _devices_flag(sys.argv[1:]):  # Before jax is imported.
    force_host_devices(_devices_flag(sys.argv[1:]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import train  # noqa: E402
from benchmarks.train_throughput_benchmark import (  # noqa: E402
    abstract_train_state,
    make_optimizer,
)
from modeling import hardware, macs  # noqa: E402
from training import sharding, steps  # noqa: E402
from training.hlo_cost import (  # noqa: E402
    ACTIVATION,
    COLLECTIVES,
    PARAMETER,
    SMALL,
    Collective,
    classify,
    hlo_collectives,
    hlo_flops,
    parameter_shapes,
    parse_hlo,
    while_loops,
)

# ----------------------------------------------------------------------------------------------
# Ideals and the roofline.
# ----------------------------------------------------------------------------------------------


def hlo_dtype(dtype) -> str:
    """numpy's dtype name as HLO writes it: float32 -> f32, bfloat16 -> bf16, bool -> pred."""
    name = str(dtype)
    match = re.fullmatch(r"(bfloat|float|uint|int|complex)(\d+)", name)
    prefixes = {"bfloat": "bf", "float": "f", "uint": "u", "int": "s", "complex": "c"}
    return "pred" if name == "bool" else f"{prefixes[match[1]]}{match[2]}" if match else name


def ideal_collectives(params, param_shardings, mesh_shape: dict) -> list[Collective]:
    """The collectives a data x FSDP step needs, per step, small arrays aside: one gradient
    all-reduce (data parallelism), or FSDP's per-layer parameter all-gathers (forward and
    backward pass) and gradient reduce-scatter plus all-reduces of the replicated parameters'
    gradients and, over 'data', of the shards."""
    data, fsdp = mesh_shape["data"], mesh_shape["fsdp"]
    sharded = replicated = 0
    for leaf, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_shardings), strict=True):
        size = math.prod(leaf.shape) * leaf.dtype.itemsize
        if s.shard_shape(tuple(leaf.shape)) == tuple(leaf.shape):
            replicated += size
        else:
            sharded += size
    dtype = hlo_dtype(jax.tree.leaves(params)[0].dtype) if jax.tree.leaves(params) else "f32"
    ideal = lambda kind, size, group: Collective(kind, dtype, (), size, 1, group, PARAMETER)
    collectives = [ideal("all-reduce", replicated, data * fsdp)]
    if sharded:
        collectives += [ideal("all-gather", 2 * sharded, fsdp),
                        ideal("reduce-scatter", sharded, fsdp),
                        ideal("all-reduce", sharded // fsdp, data)]
    return [c for c in collectives if c.bytes and c.group_size > 1]


@dataclasses.dataclass
class Roofline:
    """Step time and MFU of a roofline model on one accelerator (see the module docstring)."""

    accelerator: str
    peak_flops: float  # per device
    hbm_bandwidth: float  # per device, bytes/s
    interconnect_egress: float  # per device, bytes/s one way
    compute_s: float
    memory_s: float
    collective_s: float
    step_s: float
    mfu: float
    ideal_step_s: float  # with the ideal FLOPs and collectives, the same bytes accessed
    ideal_mfu: float


def roofline(acc: hardware.Accelerator, flops: float, bytes_accessed: float, bytes_sent: float,
             model_flops: float, ideal_flops: float, ideal_bytes_sent: float) -> Roofline:
    """max(FLOPs / peak, bytes accessed / HBM) + bytes sent / interconnect egress, per device."""
    peak, hbm = acc.peak_flops_per_device, acc.hbm_bandwidth_per_device
    link = acc.interconnect_egress_per_device
    compute, memory, collective = flops / peak, bytes_accessed / hbm, bytes_sent / link
    step = max(compute, memory) + collective
    ideal_step = max(ideal_flops / peak, memory) + ideal_bytes_sent / link
    return Roofline(acc.name, peak, hbm, link, compute, memory, collective, step,
                    model_flops / (step * peak), ideal_step, model_flops / (ideal_step * peak))


# ----------------------------------------------------------------------------------------------
# The audit.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepCost:
    """Per-device costs of one train step with their ideals; FLOPs and bytes per step."""

    model: str
    global_batch: int
    resolution: int
    compute_dtype: str
    mesh: dict[str, int]
    devices: int
    device_kind: str
    params: int
    param_bytes: int
    flops: int  # convolutions and dots, loop bodies x trip counts (hlo_flops)
    xla_flops: float  # compiled.cost_analysis()['flops']: loop bodies once, elementwise too
    ideal_flops: float | None  # a B / N + c / F
    flops_per_example: float | None  # a, one device
    flops_per_step: float | None  # c, one device
    model_flops: float  # 6 x MACs per example x B / N
    bytes_accessed: float  # cost_analysis: loop bodies once
    temp_bytes: int | None
    argument_bytes: int | None
    output_bytes: int | None
    alias_bytes: int | None
    loops: list[dict]  # while loops: name, trip_count, runs
    collectives: list[Collective]
    ideal: list[Collective]
    roofline: Roofline | None

    def collective_bytes(self, cls: str | None = None, kind: str | None = None) -> int:
        """Bytes of the arrays moved per step, of one class and kind (None: all)."""
        return sum(c.total_bytes for c in self.collectives
                   if cls in (None, c.cls) and kind in (None, c.kind))

    @property
    def bytes_sent(self) -> float:
        return sum(c.bytes_sent_per_device for c in self.collectives)

    @property
    def ideal_bytes_sent(self) -> float:
        small = sum(c.bytes_sent_per_device for c in self.collectives if c.cls == SMALL)
        return small + sum(c.bytes_sent_per_device for c in self.ideal)


def _mesh_text(mesh_shape: dict) -> str:
    return ", ".join(f"{axis}={size}" for axis, size in mesh_shape.items())


def select_devices(mesh_shape: dict | None, devices=None) -> list:
    """The devices of the mesh: `devices`, or the first ones jax offers."""
    if devices is not None:
        return list(devices)
    available = jax.devices()
    sizes = [s for s in (mesh_shape or {}).values() if s != -1]
    needed = math.prod(sizes) if mesh_shape and -1 not in mesh_shape.values() else len(available)
    if needed > len(available):
        raise ValueError(
            f"The mesh {_mesh_text(mesh_shape)} needs {needed} devices but the "
            f"{jax.default_backend()} platform offers {len(available)}; start a fresh process "
            f"with --devices {needed} (it sets XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{needed} before jax starts)."
        )
    return available[:needed]


def check_axes(mesh_shape: dict | None) -> None:
    unknown = set(mesh_shape or {}) - set(sharding.AXES)
    if unknown:
        raise ValueError(f"Unknown mesh axes {sorted(unknown)}; use {' and '.join(sharding.AXES)}.")


def resolve_mesh(mesh_shape: dict | None, num_devices: int) -> dict[str, int]:
    """{'data': d, 'fsdp': f} with d x f = num_devices; one size may be -1 (the rest). Axes
    are checked by `check_axes` first."""
    shape = {"data": num_devices, "fsdp": 1} if mesh_shape is None else dict(mesh_shape)
    shape = {axis: int(shape.get(axis, 1)) for axis in sharding.AXES}
    known = math.prod(s for s in shape.values() if s != -1)
    for axis, size in shape.items():
        if size == -1 and num_devices % known == 0:
            shape[axis] = num_devices // known
    if math.prod(shape.values()) != num_devices or min(shape.values()) < 1:
        raise ValueError(
            f"Mesh sizes {_mesh_text(shape)} do not multiply to the {num_devices} devices; "
            f"give --mesh sizes whose product is {num_devices} (one may be -1)."
        )
    return shape


def select_accelerator(name: str | None, devices) -> hardware.Accelerator | None:
    """The named accelerator, else the devices' own (None on CPUs)."""
    if name is not None:
        return hardware.accelerator(name)  # ValueError naming the known ones.
    return hardware.accelerator_for_device_kind(devices[0].device_kind)


def check_batch(config, num_devices: int) -> None:
    batch, accum = config.global_batch_size, config.grad_accum_steps
    if batch % (num_devices * accum):
        raise ValueError(
            f"Global batch {batch} must be divisible by devices ({num_devices}) x "
            f"grad_accum_steps ({accum}); set global_batch_size (--batch) to a multiple of "
            f"{num_devices * accum}, or use fewer devices or accumulation steps."
        )


def compile_step(config, model, mesh, batch: int, resolution: int):
    """train.py's jitted train step compiled from shapes: (compiled, abstract state, shardings)."""
    optimizer, schedule = make_optimizer(config, batch)
    _, abstract_state, state_sharding = abstract_train_state(
        model, config, optimizer, resolution, mesh
    )
    state = sharding.with_shardings(abstract_state, state_sharding)
    images = train.abstract_batch(batch, resolution, "replaced", sharding.batch_sharding(mesh),
                                  lighting=config.data.pca_lighting_std > 0)
    with jax.set_mesh(mesh):
        jitted = steps.jit_train_step(config, model, optimizer, schedule, mesh, state_sharding)
        compiled = jitted.lower(state, images).compile()
    return compiled, abstract_state, state_sharding


def _smaller_batch(config, batch: int) -> int:
    """A second batch size for the FLOP fit that the step accepts: B / 2, else 2 B."""
    step = config.grad_accum_steps * math.lcm(config.sam.num_groups, 2)
    return batch // 2 if batch % (2 * step) == 0 else 2 * batch


def fit_flops(config, model, device, batch: int, resolution: int) -> tuple[float, float]:
    """(a, c) with flops(B) = a B + c for the step on one device, from two batch sizes."""
    mesh = sharding.create_mesh({"data": 1, "fsdp": 1}, [device])
    other = _smaller_batch(config, batch)
    flops = {b: hlo_flops(compile_step(config, model, mesh, b, resolution)[0].as_text())
             for b in (batch, other)}
    a = (flops[batch] - flops[other]) / (batch - other)
    return a, round(flops[batch] - a * batch)


def _cost_analysis(compiled) -> dict:
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list | tuple) else analysis) or {}


def audit(config, mesh_shape: dict | None = None, *, devices=None,
          accelerator: str | None = None, fit: bool = True) -> StepCost:
    """Compiles the config's train step on a data x FSDP mesh and measures it (StepCost).

    `mesh_shape`: {'data': d, 'fsdp': f} (default: every device on 'data'); `devices`: those of
    the mesh (default: the first d x f of jax.devices()); `accelerator`: a hardware.ACCELERATORS
    key for the roofline (default: the devices' own, none on CPUs); `fit`: also compile the
    one-device step at two batch sizes for the ideal FLOPs. Bad input raises ValueError.
    """
    acc = select_accelerator(accelerator, devices or jax.devices())
    check_axes(mesh_shape)
    devices = select_devices(mesh_shape, devices)
    mesh_shape = resolve_mesh(mesh_shape, len(devices))
    check_batch(config, len(devices))
    mesh = sharding.create_mesh(mesh_shape, devices)
    checked = copy.deepcopy(config)
    checked.eval_batch_size = len(devices)  # No eval step is compiled here.
    train.validate_config(checked, mesh)

    batch, resolution = config.global_batch_size, config.data.train_resolution
    model = train.create_model(config)
    compiled, abstract_state, state_sharding = compile_step(config, model, mesh, batch,
                                                            resolution)
    module = parse_hlo(compiled.as_text())
    costs, memory = _cost_analysis(compiled), compiled.memory_analysis()
    params = abstract_state.params
    shapes = parameter_shapes(params, state_sharding.params)
    collectives = hlo_collectives(module, len(devices))
    for collective in collectives:
        collective.cls = classify(collective.shape, shapes, collective.kind,
                                  collective.group_size)
    a, c = fit_flops(config, model, devices[0], batch, resolution) if fit else (None, None)
    ideal_flops = None if a is None else a * batch / len(devices) + c / mesh_shape["fsdp"]
    model_flops = 6 * macs.model_macs(model, resolution) * batch / len(devices)
    memory_field = lambda name: getattr(memory, name, None) if memory else None
    result = StepCost(
        model=config.model.name, global_batch=batch, resolution=resolution,
        compute_dtype=config.compute_dtype, mesh=mesh_shape, devices=len(devices),
        device_kind=devices[0].device_kind, params=macs.count_params(params),
        param_bytes=sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)),
        flops=hlo_flops(module), xla_flops=float(costs.get("flops", 0.0)),
        ideal_flops=ideal_flops, flops_per_example=a, flops_per_step=c,
        model_flops=model_flops, bytes_accessed=float(costs.get("bytes accessed", 0.0)),
        temp_bytes=memory_field("temp_size_in_bytes"),
        argument_bytes=memory_field("argument_size_in_bytes"),
        output_bytes=memory_field("output_size_in_bytes"),
        alias_bytes=memory_field("alias_size_in_bytes"),
        loops=while_loops(module), collectives=collectives,
        ideal=ideal_collectives(params, state_sharding.params, mesh_shape), roofline=None,
    )
    if acc is not None:
        result.roofline = roofline(
            acc, result.flops, result.bytes_accessed, result.bytes_sent, model_flops,
            result.flops if ideal_flops is None else ideal_flops, result.ideal_bytes_sent,
        )
    return result


# ----------------------------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------------------------


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _seconds(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x >= 1e-3 else f"{x * 1e6:.3g} us"


def _ratio(measured: float, ideal: float | None) -> str:
    if not ideal:
        return "n/a" if measured else "1.00x"
    return f"{measured / ideal:.2f}x"


def format_collectives(result: StepCost, max_rows: int = 25) -> list[str]:
    rows = sorted(result.collectives, key=lambda c: -c.total_bytes)
    lines = [f"  {'kind':<19}{'class':<20}{'dtype':<6}{'shape':<22}{'group':>6}{'bytes':>11}"
             f"{'count':>7}{'total':>11}"]
    for c in rows[:max_rows]:
        shape = "[" + ",".join(map(str, c.shape)) + "]"
        lines.append(f"  {c.kind:<19}{c.cls:<20}{c.dtype:<6}{shape:<22}{c.group_size:>6}"
                     f"{_bytes(c.bytes):>11}{c.count:>7}{_bytes(c.total_bytes):>11}")
    if len(rows) > max_rows:
        lines.append(f"  ... {len(rows) - max_rows} more rows, "
                     f"{_bytes(sum(c.total_bytes for c in rows[max_rows:]))} in all")
    return lines


def format_collective_summary(result: StepCost) -> list[str]:
    """Bytes moved per step by kind and class, against the ideal."""
    ideal = Counter()
    for c in result.ideal:
        ideal[c.kind] += c.total_bytes
    lines = [f"  {'kind':<19}{'param/grad':>12}{'ideal':>12}{'small':>12}{'activation':>12}"
             f"{'(ideal 0)':>10}"]
    for kind in COLLECTIVES:
        got = {cls: result.collective_bytes(cls, kind) for cls in (PARAMETER, SMALL, ACTIVATION)}
        if any(got.values()) or ideal[kind]:
            lines.append(f"  {kind:<19}{_bytes(got[PARAMETER]):>12}{_bytes(ideal[kind]):>12}"
                         f"{_bytes(got[SMALL]):>12}{_bytes(got[ACTIVATION]):>12}")
    sent, ideal_sent = result.bytes_sent, result.ideal_bytes_sent
    lines.append(f"  sent per device (ring algorithms): {_bytes(sent)}, ideal {_bytes(ideal_sent)} "
                 f"({_ratio(sent, ideal_sent)})")
    return lines


def format_report(result: StepCost) -> str:
    r = result
    per_device = r.global_batch // r.devices
    lines = [
        f"{r.model}: {r.params:,} params ({_bytes(r.param_bytes)}), global batch {r.global_batch} "
        f"({per_device} per device), {r.resolution} px, {r.compute_dtype}; mesh "
        f"{_mesh_text(r.mesh)} over {r.devices} x {r.device_kind}",
        "per device and step:",
        f"  FLOPs (convs + dots, x loop trips)  {_si(r.flops):>11}   ideal "
        f"{_si(r.ideal_flops):>11}   {_ratio(r.flops, r.ideal_flops)}",
        f"  XLA cost_analysis flops             {_si(r.xla_flops):>11}   (elementwise too; loop "
        "bodies once)",
        f"  model FLOPs (6 x MACs x B / N)      {_si(r.model_flops):>11}",
    ]
    if r.flops_per_example is not None:
        lines.append(f"  one-device fit: {_si(r.flops_per_example)} FLOPs per example + "
                     f"{_si(r.flops_per_step)} per step")
    lines += [
        f"  bytes accessed (XLA)                {_bytes(r.bytes_accessed):>11}   (loop bodies "
        "once)",
        f"  temporaries {_bytes(r.temp_bytes)}, arguments {_bytes(r.argument_bytes)}, outputs "
        f"{_bytes(r.output_bytes)} ({_bytes(r.alias_bytes)} aliased to arguments)",
    ]
    for loop in r.loops:
        lines.append(f"  while loop {loop['name']}: {loop['trip_count'] or 'unknown (1 assumed)'}"
                     f" iterations, runs {loop['runs']} x per step")
    lines.append("collectives per step (bytes of whole arrays):")
    lines += format_collective_summary(r) if r.collectives or r.ideal else ["  none"]
    if r.collectives:
        lines += format_collectives(r)
    if r.roofline:
        f = r.roofline
        lines.append(
            f"roofline on {f.accelerator}: compute {_seconds(f.compute_s)}, HBM "
            f"{_seconds(f.memory_s)}, collectives {_seconds(f.collective_s)} -> step "
            f"{_seconds(f.step_s)}, MFU {f.mfu:.1%}; with the ideal FLOPs and collectives "
            f"{_seconds(f.ideal_step_s)}, MFU {f.ideal_mfu:.1%}")
    else:
        lines.append("roofline: no accelerator (pass --accelerator, one of "
                     f"{', '.join(sorted(hardware.ACCELERATORS))})")
    return "\n".join(lines)


def to_json(result: StepCost) -> dict:
    data = dataclasses.asdict(result)
    data["bytes_sent"], data["ideal_bytes_sent"] = result.bytes_sent, result.ideal_bytes_sent
    return data


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------


def parse_mesh(text: str) -> dict[str, int]:
    """'data=16,fsdp=4' -> {'data': 16, 'fsdp': 4}."""
    mesh = {}
    for item in filter(None, text.split(",")):
        axis, sep, size = item.partition("=")
        if not sep or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r} is not axis=size,...; e.g. --mesh data=16,fsdp=4.")
        mesh[axis.strip()] = int(size)
    return mesh


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="The config as train.py takes it: --config=configs/FILE.py[:ARG] and "
        "--config.FIELD=VALUE overrides.",
    )
    parser.add_argument("--devices", type=int, default=None,
                        help="N fake CPU devices (a fresh process), or the first N devices")
    parser.add_argument("--mesh", default=None, help="axis sizes, e.g. data=16,fsdp=4 "
                        "(default: every device on 'data')")
    parser.add_argument("--batch", type=int, default=None, help="global batch size")
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (px)")
    parser.add_argument("--accelerator", default=None,
                        help=f"roofline target: {', '.join(sorted(hardware.ACCELERATORS))}")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--no_fit", action="store_true",
                        help="skip the one-device compilations of the ideal FLOPs")
    return parser.parse_known_args(argv)


def load_config(config_args: list[str]) -> ml_collections.ConfigDict:
    """The config of `--config=file[:arg]` and `--config.field=value` overrides, as train.py."""
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "Config file[:argument].",
                                             flag_values=flag_values)
    try:
        flag_values(["step_cost", *config_args])
        config = holder.value
        getattr(config, "model", None)  # A file that failed to load raises here.
    except (AttributeError, KeyError) as error:  # An override of an unknown field.
        raise ValueError(f"--config: the config has no field {str(error).strip(chr(34))} to "
                         "override; see the config file for its fields.") from None
    except (flags.Error, OSError) as error:  # Their last line says what went wrong.
        last = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
        raise ValueError(f"--config: {re.sub(r'^[A-Za-z]+Error: ', '', last)}") from None
    if config is None:
        raise ValueError("--config is required, e.g. --config=configs/quickstart.py.")
    return config


def main(argv: list[str] | None = None) -> StepCost:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config_args = parse_args(argv)
        unknown = [a for a in config_args if not a.startswith("--config")]
        if unknown:
            raise ValueError(f"Unknown arguments {' '.join(unknown)}; see --help.")
        if args.devices:
            force_host_devices(args.devices)
        config = load_config(config_args)
        if args.batch:
            config.global_batch_size = args.batch
        if args.resolution:
            config.data.train_resolution = args.resolution
        mesh = parse_mesh(args.mesh) if args.mesh else None
        devices = None
        if args.devices:
            devices = select_devices({"data": args.devices}, None)
            mesh = mesh or {"data": args.devices}
        also = "" if args.no_fit else " (and on one device at two batch sizes, for the ideal FLOPs)"
        print(f"compiling the train step of {config.model.name}{also}...", file=sys.stderr,
              flush=True)
        result = audit(config, mesh, devices=devices, accelerator=args.accelerator,
                       fit=not args.no_fit)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(result), indent=1))
    return result


if __name__ == "__main__":
    main()
