"""Profiles our train step (as train.py builds it) and writes what is needed to find its costs.

    python -m benchmarks.profile_train_step --model nfnet_f0 --batch 256 --out profile_f0
    python -m benchmarks.profile_train_step --model nfnet_tiny --batch 8 --resolution 32 \
        --out /tmp/profile_tiny --steps 2                               # seconds, on a CPU

Prints XLA's cost analysis of the step (FLOPs, bytes accessed, temporaries), the dtype
conversions of activations in the step's jaxpr grouped by source line, and the XLA ops that
took the most time in the traced steps. Writes into --out:

  plugins/profile/<run>/*.xplane.pb   jax.profiler trace: `tensorboard --logdir OUT` with
                                       tensorboard-plugin-profile (trace viewer, op profile,
                                       memory)
  perfetto_trace.json.gz              the same trace for https://ui.perfetto.dev
  train_step.stablehlo.mlir           what JAX hands to XLA
  train_step.optimized.hlo.txt        after XLA's passes: fusions, layouts (minor-to-major
                                       `{3,0,2,1}`), convolution algorithms (GPU custom-calls'
                                       backend_config), collectives
  xla_dump/                           with --xla_dump: the module after every XLA pass

Use the same model, batch and resolution flags as train_throughput_benchmark.py.
"""

import argparse
import collections
import dataclasses
import gzip
import json
import math
import os
import re
from pathlib import Path

import jax
from jax.extend import core as jex_core
from jax.extend import source_info_util

from benchmarks.train_throughput_benchmark import TARGETS, build_ours
from modeling import macs

# ----------------------------------------------------------------------------------------------
# Static views: HLO text, XLA's cost analysis, dtype conversions in the jaxpr.
# ----------------------------------------------------------------------------------------------


def write_hlo(out: Path, lowered, compiled) -> None:
    (out / "train_step.stablehlo.mlir").write_text(lowered.as_text())
    (out / "train_step.optimized.hlo.txt").write_text(compiled.as_text())


def cost_summary(compiled, model_flops: float) -> list[str]:
    """XLA's FLOP and byte counts of one step (per device) next to 6 x MACs x batch."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    lines = []
    if cost:
        flops, accessed = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
        lines.append(f"XLA cost analysis (per device): {flops:.3e} FLOPs, {accessed:.3e} bytes "
                     f"accessed, {flops / max(accessed, 1):.1f} FLOPs/byte; model FLOPs "
                     f"(6 x MACs x batch, all devices) {model_flops:.3e}")
    memory = compiled.memory_analysis()
    if memory is not None:
        lines.append(f"memory per device: arguments {memory.argument_size_in_bytes / 2**30:.2f} "
                     f"GiB, temporaries {memory.temp_size_in_bytes / 2**30:.2f} GiB")
    return lines


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _where(eqn) -> str:
    """The user source line of an equation (jax's summary), else its name stack."""
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # No user frame: the name stack.
        return str(eqn.source_info.name_stack)


def dtype_conversions(jaxpr, batch: int) -> tuple[collections.Counter, int]:
    """(activation conversions counted by (source dtype, target dtype, where), number of other
    conversions). An activation has the batch as leading dimension; the others convert
    parameters, gradients and scalars (float32 parameters used in a bfloat16 step)."""
    activations, others = collections.Counter(), 0
    stack = [jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            stack.extend(_sub_jaxprs(eqn))
            if eqn.primitive.name != "convert_element_type":
                continue
            src, dst = eqn.invars[0].aval, eqn.outvars[0].aval
            if len(src.shape) >= 2 and src.shape[0] == batch and math.prod(src.shape) > batch:
                activations[(str(src.dtype), str(dst.dtype), _where(eqn))] += 1
            else:
                others += 1
    return activations, others


def conversion_summary(jaxpr, batch: int, top: int) -> list[str]:
    activations, others = dtype_conversions(jaxpr, batch)
    lines = [f"dtype conversions in the step's jaxpr: {sum(activations.values())} of "
             f"activations (batch-leading, more than one value per example), {others} of "
             "parameters, gradients and scalars"]
    for (src, dst, where), n in activations.most_common(top):
        lines.append(f"  {n:4d} x {src} -> {dst}  {where}")
    return lines


# ----------------------------------------------------------------------------------------------
# The trace: time per XLA op.
# ----------------------------------------------------------------------------------------------


def hlo_instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its HLO text after ' = ', from the optimized HLO text."""
    found = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match:
            found[match[1]] = match[2]
    return found


# Ops that only run other computations: their time is their callees' time, counted there.
_CONTAINERS = ("conditional", "while", "call")


def op_kind(hlo: str) -> str:
    """What an instruction is: 'fusion kLoop', 'fusion kCustom __triton_gemm' (the backend's
    fusion kind), 'custom-call __cudnn$convForward', or its opcode ('copy', 'convolution')."""
    opcode = re.search(r"(?<![\w\-])([a-z][a-z0-9\-]*)\(", hlo)
    if opcode is None:
        return "unknown"
    if opcode[1] == "fusion":
        kind = re.search(r"\bkind=(\w+)", hlo)
        backend = re.search(r'"kind":"([^"]+)"', hlo)
        return " ".join(["fusion", *(m[1] for m in (kind, backend) if m)])
    if opcode[1] == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', hlo)
        return f"custom-call {target[1]}" if target else "custom-call"
    return opcode[1]


def load_trace_events(out: Path) -> list[dict]:
    paths = sorted(out.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not paths:
        return []
    with gzip.open(paths[-1], "rt") as f:
        trace = json.load(f)
    return trace.get("traceEvents", trace) if isinstance(trace, dict) else trace


def op_times(events: list[dict], instructions: dict[str, str]) -> collections.Counter:
    """Total microseconds per XLA op, on the device's tracks where the trace has any (GPU/TPU),
    else on the host's (CPU): events named after an instruction of the step; else kernels
    whose `hlo_op` argument names one (GPU traces), summed per instruction; else the device's
    events (kernels) by name, the step's module-level events left out. Ops that only call
    other computations (conditional, while) are left out: their callees are counted."""
    names = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in names.items()  # Not libtpu's '/device:CUSTOM:...'.
                   if "/device:" in name and "/device:CUSTOM" not in name}
    ops = {n: hlo for n, hlo in instructions.items() if op_kind(hlo) not in _CONTAINERS}
    by_name, by_hlo_op, kernels = (collections.Counter() for _ in range(3))
    for e in events:
        if e.get("ph") != "X" or (device_pids and e.get("pid") not in device_pids):
            continue
        name, micros = e.get("name", ""), float(e.get("dur", 0.0))
        hlo_op = (e.get("args") or {}).get("hlo_op")
        if name in ops:
            by_name[name] += micros
        elif hlo_op in ops:
            by_hlo_op[hlo_op] += micros
        elif device_pids and not name.startswith("jit_") and name not in instructions:
            kernels[name] += micros
    return by_name or by_hlo_op or kernels


def top_ops(out: Path, hlo_text: str, steps: int, top: int) -> tuple[list[dict], float]:
    """(the ops that took the most time in the trace under `out`, each with its name,
    milliseconds per step, share of all op time, kind (`op_kind`) and HLO text (shortened);
    milliseconds of op time per step)."""
    instructions = hlo_instructions(hlo_text)
    totals = op_times(load_trace_events(out), instructions)
    whole = sum(totals.values())
    rows = []
    for name, micros in totals.most_common(top):
        hlo = instructions.get(name)
        rows.append(dict(name=name, ms_per_step=micros / 1e3 / steps, share=micros / whole,
                         kind=op_kind(hlo) if hlo else "kernel",
                         hlo=hlo[:160] if hlo else None))
    return rows, whole / 1e3 / steps


def top_ops_summary(ops: list[dict], op_ms_per_step: float, steps: int) -> list[str]:
    if not ops:
        return ["no per-op events in the trace: open it in TensorBoard or Perfetto"]
    lines = [f"top ops by time over {steps} step(s) ({op_ms_per_step:.2f} ms of op time "
             "per step, summed over threads and streams):"]
    for op in ops:
        hlo = op["hlo"] or "(a device kernel; no HLO instruction of this name)"
        lines.append(f"  {op['ms_per_step']:9.3f} ms {100 * op['share']:5.1f}%  {op['name']} "
                     f"[{op['kind']}]: {hlo[:110]}")
    return lines


# ----------------------------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="nfnet_f0", choices=list(TARGETS))
    parser.add_argument("--batch", type=int, default=256, help="batch per device")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--steps", type=int, default=5, help="steps traced")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the trace")
    parser.add_argument("--top", type=int, default=25, help="rows of the summaries")
    parser.add_argument("--out", required=True, help="directory for trace and HLO")
    parser.add_argument("--xla_dump", action="store_true",
                        help="also dump every XLA pass (set before JAX starts its backend)")
    return parser.parse_args(argv)


@dataclasses.dataclass
class Profile:
    lines: list[str]  # the printed report
    top_ops: list[dict]  # top_ops' rows
    op_ms_per_step: float  # all ops' time per step (summed over threads and streams)
    out: Path  # trace and HLO


def profile_report(ours, out: Path, steps: int, warmup: int, top: int) -> Profile:
    """Compiles `ours` (a train_throughput_benchmark.OurStep) ahead of time, writes its HLO,
    traces `steps` steps after `warmup` into `out`, and returns the report."""
    with jax.set_mesh(ours.mesh):
        traced = ours.jitted.trace(ours.state, ours.batch)
        lowered = traced.lower()
        compiled = lowered.compile()
    write_hlo(out, lowered, compiled)
    global_batch = ours.batch["image"].shape[0]
    resolution = ours.batch["image"].shape[1]
    model_flops = 6 * macs.model_macs(ours.model, resolution) * global_batch
    lines = cost_summary(compiled, model_flops)
    lines += conversion_summary(traced.jaxpr.jaxpr, global_batch, top)
    state, batch = ours.state, ours.batch
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    ours.state = state  # The old state was donated.
    ops, op_ms_per_step = top_ops(out, compiled.as_text(), steps, top)
    lines += top_ops_summary(ops, op_ms_per_step, steps)
    lines.append(f"trace and HLO in {out}: tensorboard --logdir {out} "
                 "(tensorboard-plugin-profile), or perfetto_trace.json.gz in "
                 "https://ui.perfetto.dev")
    return Profile(lines, ops, op_ms_per_step, out)


def profile(ours, out: Path, steps: int, warmup: int, top: int) -> list[str]:
    """profile_report's printed lines."""
    return profile_report(ours, out, steps, warmup, top).lines


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.xla_dump:  # Read when the backend starts; this runs before that.
        os.environ["XLA_FLAGS"] = " ".join(filter(None, [
            os.environ.get("XLA_FLAGS"), f"--xla_dump_to={out / 'xla_dump'}",
            "--xla_dump_hlo_as_text", "--xla_dump_hlo_module_re=jit_step",
        ]))
    target = TARGETS[args.model]
    resolution = args.resolution or target.resolution
    ours = build_ours(target, args.batch, resolution, args.dtype)
    print(f"{args.model}: batch {args.batch} per device, {resolution} px, {args.dtype} on "
          f"{jax.devices()[0].device_kind} x {jax.device_count()}")
    print("\n".join(profile(ours, out, args.steps, args.warmup, args.top)))


if __name__ == "__main__":
    main()
