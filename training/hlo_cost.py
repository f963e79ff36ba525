"""FLOPs, collectives and the TPU compiler's cycle estimates of a compiled XLA program, read
from its optimized HLO text (`compiled.as_text()`): the measuring half of
benchmarks/step_cost.py, which documents the conventions (XLA HloCostAnalysis FLOPs with loop
trip counts, ring-algorithm bytes, classes of collectives), and of training/compiled_cost.py.
"""

import dataclasses
import math
import re
from collections import Counter

import jax
import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
SMALL_ELEMENTS = 4096  # 'small' collectives: at most this many elements
PARAMETER, SMALL, ACTIVATION = "parameter/gradient", "small", "activation"

# ----------------------------------------------------------------------------------------------
# Optimized HLO text: computations, instructions, shapes.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Array:
    dtype: str  # HLO element type: f32, bf16, s32, pred, ...
    dims: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.dims)

    @property
    def bytes(self) -> int:
        if self.dtype == "token":
            return 0
        bits = 8 if self.dtype == "pred" else int(re.search(r"\d+", self.dtype).group())
        return self.elements * bits // 8


@dataclasses.dataclass
class Instruction:
    name: str
    shape: object  # Array, or a tuple of shapes
    opcode: str
    operands: list[str]
    attrs: dict[str, str]
    text: str  # everything after the operands but metadata (attributes, backend_config)


@dataclasses.dataclass
class Computation:
    name: str
    instructions: list[Instruction]
    shapes: dict[str, object]  # instruction name -> shape


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Splits at `sep` outside brackets and double-quoted strings."""
    parts, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(text):
        if quoted:
            quoted = not (ch == '"' and text[i - 1] != "\\")
        elif ch == '"':
            quoted = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _closing(text: str, start: int) -> int:
    """Index just past the bracket that closes text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        if depth == 0:
            return i + 1
    raise ValueError(f"Unbalanced brackets in HLO: {text[start:start + 80]!r}")


def parse_shape(text: str):
    """'f32[8,128]{1,0}' -> Array('f32', (8, 128)); '(s32[], bf16[4])' -> a tuple of Arrays."""
    text = re.sub(r"/\*.*?\*/", "", text).strip()
    if text.startswith("("):
        return tuple(parse_shape(part) for part in _split_top_level(text[1:-1]))
    match = re.match(r"(\w+)\[([^\]]*)\]", text)
    if not match:
        return Array(text.split("{")[0], ())
    dims = tuple(int(d.replace("<=", "")) for d in match.group(2).split(",") if d.strip())
    return Array(match.group(1), dims)


def flat_arrays(shape) -> list[Array]:
    return [shape] if isinstance(shape, Array) else [a for s in shape for a in flat_arrays(s)]


_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_METADATA = re.compile(r",?\s*metadata=\{[^{}]*\}")  # op names and source lines: not needed


def _parse_instruction(line: str) -> Instruction | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    end = _closing(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = parse_shape(rest[:end]), rest[end:].lstrip()
    opcode = re.match(r"[\w\-]+", rest).group()
    open_paren = len(opcode)
    close = _closing(rest, open_paren)
    listed = re.sub(r"/\*.*?\*/", "", rest[open_paren + 1:close - 1])
    operands = [op.split()[-1].lstrip("%") for op in _split_top_level(listed)]
    text = _METADATA.sub("", rest[close:])
    attrs = {}
    for part in _split_top_level(text.lstrip(", ")):
        key, _, value = part.partition("=")
        attrs[key.strip()] = value.strip()
    return Instruction(name, shape, opcode, operands, attrs, text)


@dataclasses.dataclass
class HloModule:
    computations: dict[str, Computation]
    entry: str  # the entry computation's name
    counts: dict[str, int]  # runs of each computation per run of the module


def parse_hlo(text: str) -> HloModule:
    """The computations of an HLO module's text, and how often each runs."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = Computation(match.group(1), [], {})
                entry = current.name if line.startswith("ENTRY") else entry
        elif line.startswith("}"):
            computations[current.name], current = current, None
        else:
            instruction = _parse_instruction(line)
            if instruction:
                current.instructions.append(instruction)
                current.shapes[instruction.name] = instruction.shape
    if entry is None:
        raise ValueError("No ENTRY computation in the HLO text.")
    for computation in computations.values():
        for instruction in computation.instructions:
            if instruction.opcode == "while" and trip_count(instruction) is None:
                inferred = infer_trip_count(instruction, computation, computations)
                if inferred is not None:
                    instruction.attrs[INFERRED_TRIPS] = str(inferred)
    return HloModule(computations, entry, execution_counts(computations, entry))


def _module(hlo: str | HloModule) -> HloModule:
    return hlo if isinstance(hlo, HloModule) else parse_hlo(hlo)


INFERRED_TRIPS = "inferred_trip_count"  # set by parse_hlo where XLA wrote no trip count


def trip_count(instruction: Instruction) -> int | None:
    """A while loop's iterations, as XLA wrote them in its backend_config (XLA:CPU, XLA:GPU),
    else as `infer_trip_count` read them from the loop (the TPU compiler writes none); None if
    unknown."""
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.text)
    if match:
        return int(match.group(1))
    inferred = instruction.attrs.get(INFERRED_TRIPS)
    return int(inferred) if inferred else None


def _constant(computation: Computation, name: str) -> int | None:
    """The integer a scalar constant (seen through copies) holds, else None."""
    by_name = {i.name: i for i in computation.instructions}
    instruction = by_name.get(name)
    while instruction is not None and instruction.opcode == "copy":
        instruction = by_name.get(instruction.operands[0])
    if instruction is None or instruction.opcode != "constant" or not instruction.operands:
        return None
    value = instruction.operands[0]  # constant(10): the literal, parsed as the operand
    return int(value) if re.fullmatch(r"-?\d+", value) else None


def infer_trip_count(loop: Instruction, caller: Computation,
                     computations: dict[str, Computation]) -> int | None:
    """Iterations of a counted loop (`fori_loop`, `scan`): its condition compares a tuple
    element with a constant N (i < N), and the caller starts that element at a constant c; the
    body adds 1, as JAX emits it. N - c, or None for any other shape of loop."""
    condition = computations.get(_names(loop.attrs.get("condition", ""))[0]
                                 if loop.attrs.get("condition") else "")
    if condition is None or not loop.operands:
        return None
    by_name = {i.name: i for i in condition.instructions}
    for compare in condition.instructions:
        if compare.opcode != "compare" or "direction=LT" not in compare.text:
            continue
        counter, bound = (by_name.get(name) for name in compare.operands[:2])
        if counter is None or counter.opcode != "get-tuple-element":
            continue
        limit = _constant(condition, bound.name) if bound is not None else None
        index = int(counter.attrs.get("index", -1))
        initial = next((i for i in caller.instructions if i.name == loop.operands[0]), None)
        if limit is None or initial is None or initial.opcode != "tuple":
            continue
        start = _constant(caller, initial.operands[index]) if index < len(
            initial.operands) else None
        if start is not None and limit > start:
            return limit - start
    return None


def _names(value: str) -> list[str]:
    return [n.strip().lstrip("%") for n in value.strip("{}").split(",") if n.strip()]


def callees(instruction: Instruction) -> list[tuple[str, int]]:
    """(computation, runs per run of the instruction) of what it executes: fusion and call
    bodies, async wrappers, conditional branches (each counted once), loop bodies x trips.
    Reducers (to_apply of reduce, all-reduce, sort, ...) run no dots or collectives: skipped."""
    a = instruction.attrs
    if instruction.opcode in ("async-update", "async-done"):  # The start ran the computation.
        return []
    if instruction.opcode == "while":
        trips = trip_count(instruction) or 1
        return [(_names(a["body"])[0], trips), (_names(a["condition"])[0], trips + 1)]
    keys = ["calls", "branch_computations", "true_computation", "false_computation",
            "called_computations"] + (["to_apply"] if instruction.opcode == "call" else [])
    return [(name, 1) for key in keys if key in a for name in _names(a[key])]


def execution_counts(computations: dict[str, Computation], entry: str) -> dict[str, int]:
    """How often each computation runs in one execution of the entry computation."""
    order, seen = [], set()

    def visit(name: str) -> None:  # Post-order over the call graph (a DAG).
        if name in seen or name not in computations:
            return
        seen.add(name)
        for instruction in computations[name].instructions:
            for child, _ in callees(instruction):
                visit(child)
        order.append(name)

    visit(entry)
    counts = Counter({entry: 1})
    for name in reversed(order):  # Callers before callees.
        for instruction in computations[name].instructions:
            for child, runs in callees(instruction):
                counts[child] += counts[name] * runs
    return dict(counts)


def while_loops(hlo: str | HloModule) -> list[dict]:
    """Every while loop: its name, trip count (None: unknown) and runs per step."""
    module = _module(hlo)
    return [
        dict(name=i.name, trip_count=trip_count(i), runs=module.counts.get(c.name, 0))
        for c in module.computations.values() for i in c.instructions if i.opcode == "while"
    ]


# ----------------------------------------------------------------------------------------------
# FLOPs of convolutions and dots (XLA HloCostAnalysis conventions).
# ----------------------------------------------------------------------------------------------


def _operand_shape(computation: Computation, instruction: Instruction, index: int) -> Array:
    return flat_arrays(computation.shapes[instruction.operands[index]])[0]


def _window(attr: str) -> list[dict]:
    """window={size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=.. rhs_dilate=..} per spatial dim."""
    fields = dict(item.split("=", 1) for item in attr.strip("{}").split())
    size = fields.get("size", "")
    if not size:
        return []
    rank = len(size.split("x"))
    per_dim = lambda key, default: fields[key].split("x") if key in fields else [default] * rank
    pads = per_dim("pad", "0_0")
    return [
        dict(size=int(s), stride=int(st), pad_low=int(p.split("_")[0]),
             base_dilation=int(ld), window_dilation=int(rd))
        for s, st, p, ld, rd in zip(size.split("x"), per_dim("stride", "1"), pads,
                                    per_dim("lhs_dilate", "1"), per_dim("rhs_dilate", "1"),
                                    strict=True)
    ]


def _valid_taps(window: dict, kernel: int, output: int, inputs: int) -> int:
    """(kernel tap, output position) pairs that read an input element, not padding or a hole
    of base dilation: HloCostAnalysis::GetConvolutionFlops's count, vectorised."""
    k, o = np.arange(kernel)[:, None], np.arange(output)[None, :]
    undilated = o * window["stride"] - window["pad_low"] + k * window["window_dilation"]
    base = window["base_dilation"]
    index = undilated // base
    valid = (undilated == index * base) & (index >= 0) & (index < inputs)
    return int(valid.sum())


def convolution_flops(lhs: Array, rhs: Array, out: Array, attrs: dict[str, str]) -> int:
    """2 x (input features / feature groups) x output features x (batch / batch groups) x
    valid kernel taps over the output's spatial positions, as XLA's HloCostAnalysis."""
    lhs_labels, rest = attrs["dim_labels"].split("_")
    rhs_labels, out_labels = rest.split("->")
    spatial = sorted(c for c in lhs_labels if c.isdigit())
    taps = 1
    for dim, window in zip(spatial, _window(attrs.get("window", "{}")), strict=False):
        taps *= _valid_taps(window, rhs.dims[rhs_labels.index(dim)],
                            out.dims[out_labels.index(dim)], lhs.dims[lhs_labels.index(dim)])
    in_features = lhs.dims[lhs_labels.index("f")] // int(attrs.get("feature_group_count", 1))
    batch = lhs.dims[lhs_labels.index("b")] // int(attrs.get("batch_group_count", 1))
    return 2 * in_features * out.dims[out_labels.index("f")] * batch * taps


def dot_flops(lhs: Array, out: Array, contracting: list[int]) -> int:
    """2 x output elements x the contracted size."""
    return 2 * out.elements * math.prod(lhs.dims[d] for d in contracting)


def _contracting(attrs: dict[str, str], text: str) -> list[int]:
    if "lhs_contracting_dims" in attrs:
        return [int(d) for d in attrs["lhs_contracting_dims"].strip("{}").split(",") if d]
    match = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', text)  # cuBLAS calls
    return [int(d.strip('" ')) for d in match.group(1).split(",") if d.strip()] if match else []


def _cudnn_convolution_flops(computation, instruction) -> int:
    """cuDNN convolutions are custom-calls; map operands back to the forward convolution."""
    target = instruction.attrs.get("custom_call_target", "")
    operand = lambda i: _operand_shape(computation, instruction, i)
    result = flat_arrays(instruction.shape)[0]
    if "BackwardInput" in target:
        lhs, rhs, out = result, operand(1), operand(0)
    elif "BackwardFilter" in target:
        lhs, rhs, out = operand(0), result, operand(1)
    else:
        lhs, rhs, out = operand(0), operand(1), result
    return convolution_flops(lhs, rhs, out, instruction.attrs)


def instruction_flops(computation: Computation, instruction: Instruction) -> int:
    """FLOPs of one convolution, dot, or cuBLAS / cuDNN custom-call; 0 for anything else."""
    if instruction.opcode == "convolution":
        lhs, rhs = (_operand_shape(computation, instruction, i) for i in (0, 1))
        return convolution_flops(lhs, rhs, instruction.shape, instruction.attrs)
    if instruction.opcode == "dot":
        lhs = _operand_shape(computation, instruction, 0)
        return dot_flops(lhs, instruction.shape, _contracting(instruction.attrs, ""))
    if instruction.opcode == "custom-call":
        target = instruction.attrs.get("custom_call_target", "")
        if "cudnn$conv" in target:
            return _cudnn_convolution_flops(computation, instruction)
        if "cublas" in target and ("gemm" in target or "matmul" in target):
            lhs = _operand_shape(computation, instruction, 0)
            out = flat_arrays(instruction.shape)[0]
            return dot_flops(lhs, out, _contracting(instruction.attrs, instruction.text))
    return 0


def hlo_flops(hlo: str | HloModule) -> int:
    """Convolution and dot FLOPs of one run of the module, loop bodies x their trip counts."""
    module = _module(hlo)
    return sum(
        module.counts.get(name, 0) * sum(instruction_flops(c, i) for i in c.instructions)
        for name, c in module.computations.items()
    )


# ----------------------------------------------------------------------------------------------
# The TPU compiler's time estimates.
# ----------------------------------------------------------------------------------------------

_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
# Control flow: what it runs is counted in the computations it calls, not on itself.
_CONTROL_FLOW = ("while", "conditional", "call")


def instruction_cycles(instruction: Instruction) -> int:
    """The TPU compiler's estimate of one run of an instruction, in chip cycles: the
    `estimated_cycles` of its backend_config (fusions, convolutions, copies, reduces; 0 where
    there is none, as on collectives and on other backends)."""
    if instruction.opcode in _CONTROL_FLOW:
        return 0
    match = _CYCLES.search(instruction.text)
    return int(match.group(1)) if match else 0


def estimated_cycles(hlo: str | HloModule) -> int:
    """The compiler's cycles of one run of the module: every instruction's estimate times the
    runs of its computation (loop bodies x trip counts)."""
    return sum(cycles_by_kind(hlo).values())


def cycles_by_kind(hlo: str | HloModule) -> Counter:
    """`estimated_cycles` split by what the instructions do: 'convolution/dot' (fusions holding
    one: the matrix units' work), 'reduction' (fusions holding a reduce), 'elementwise' (other
    fusions) or the opcode (copy, broadcast, ...)."""
    module = _module(hlo)
    fused = {name for c in module.computations.values() for i in c.instructions
             if i.opcode == "fusion" for name in _names(i.attrs.get("calls", ""))}
    kinds = Counter()
    for name, computation in module.computations.items():
        if name in fused:  # costed as a whole, by its fusion instruction
            continue
        for instruction in computation.instructions:
            cycles = instruction_cycles(instruction) * module.counts.get(name, 0)
            if cycles:
                kinds[_kind(module, instruction)] += cycles
    return kinds


def _kind(module: HloModule, instruction: Instruction) -> str:
    opcodes = {instruction.opcode}
    for name in _names(instruction.attrs.get("calls", "")):
        if name in module.computations:
            opcodes |= {i.opcode for i in module.computations[name].instructions}
    if opcodes & {"convolution", "dot"}:
        return "convolution/dot"
    if "reduce" in opcodes:
        return "reduction"
    return "elementwise" if instruction.opcode == "fusion" else instruction.opcode


# ----------------------------------------------------------------------------------------------
# Collectives.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Collective:
    """One kind of array moved by one kind of collective, summed over its occurrences."""

    kind: str  # all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute
    dtype: str
    shape: tuple[int, ...]  # the whole array (gathered, or before the scatter)
    bytes: int  # of one such array
    count: int  # arrays moved per step (loop trip counts included)
    group_size: int  # devices in a replica group
    cls: str = ""  # PARAMETER, SMALL or ACTIVATION

    @property
    def total_bytes(self) -> int:
        return self.bytes * self.count

    @property
    def bytes_sent_per_device(self) -> float:
        return ring_bytes_sent(self.kind, self.total_bytes, self.group_size)


def ring_bytes_sent(kind: str, array_bytes: float, group_size: int) -> float:
    """Bytes one device sends to move `array_bytes` (whole arrays) by ring algorithms."""
    n = group_size
    if kind == "collective-permute":
        return array_bytes
    if n <= 1:
        return 0.0
    return array_bytes * (n - 1) / n * (2 if kind == "all-reduce" else 1)


def replica_group_size(text: str, num_devices: int) -> int:
    """Devices per replica group, from an instruction's attribute text (all when unstated)."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", text)
    if mesh:  # mesh['axis_0'=2,'axis_1'=4] {'axis_0'}: the product of the named axes
        sizes = {a: int(s) for a, s in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        size = 1
        for item in _split_top_level(mesh.group(2)):
            name = re.match(r"'([^']+)'", item).group(1)
            sub = re.search(r":\(\d+\)(\d+)", item)  # a sub-axis 'a':(offset)size
            size *= int(sub.group(1)) if sub else sizes[name]
        return size
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=", text)  # [groups,size]<=[...]
    if iota:
        return int(iota.group(1).split(",")[-1])
    listed = re.search(r"replica_groups=\{\{([^}]*)\}", text)  # {{0,1,2,3},{4,5,6,7}}
    if listed and listed.group(1).strip():
        return len(listed.group(1).split(","))
    return num_devices


def _collective_arrays(computation, instruction, kind: str) -> list[Array]:
    """The whole arrays a collective moves."""
    if kind == "all-gather":
        result = instruction.shape
        if instruction.opcode.endswith("-start"):  # ((operands...), (results...))
            result = result[1]
        return flat_arrays(result)
    operands = instruction.operands[:1] if kind == "collective-permute" else instruction.operands
    return [a for op in operands for a in flat_arrays(computation.shapes[op])]


def hlo_collectives(hlo: str | HloModule, num_devices: int) -> list[Collective]:
    """Every collective array of the module, grouped by (kind, dtype, shape, group size)."""
    module = _module(hlo)
    counts = module.counts
    grouped: Counter = Counter()
    for name, computation in module.computations.items():
        for instruction in computation.instructions:
            kind = instruction.opcode.removesuffix("-start")
            if kind not in COLLECTIVES or counts.get(name, 0) == 0:
                continue
            group = replica_group_size(instruction.text, num_devices)
            for array in _collective_arrays(computation, instruction, kind):
                grouped[(kind, array.dtype, array.dims, array.bytes, group)] += counts[name]
    return [Collective(kind, dtype, dims, size, count, group)
            for (kind, dtype, dims, size, group), count in grouped.items()]


def _squeezed(dims) -> tuple[int, ...]:
    """The dimensions other than 1, sorted: XLA may reduce a gradient transposed."""
    return tuple(sorted(d for d in dims if d != 1))


@dataclasses.dataclass(frozen=True)
class ParameterShapes:
    """Shapes of the parameters, as `_squeezed` compares them."""

    full: frozenset  # every parameter's: its gradient's
    sharded: frozenset  # the whole shapes of the FSDP-sharded ones: what their all-gathers make
    shards: frozenset  # the per-device shards of those
    shard_counts: frozenset  # into how many shards they are cut: their all-gathers' group sizes
    sharded_sizes: frozenset = frozenset()  # elements of the FSDP-sharded ones


def parameter_shapes(params, param_shardings) -> ParameterShapes:
    full, sharded, shards, counts, sizes = set(), set(), set(), set(), set()
    for leaf, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_shardings), strict=True):
        shape, shard = tuple(leaf.shape), tuple(s.shard_shape(tuple(leaf.shape)))
        full.add(_squeezed(shape))
        if shard != shape:
            sharded.add(_squeezed(shape))
            shards.add(_squeezed(shard))
            counts.add(math.prod(shape) // math.prod(shard))
            sizes.add(math.prod(shape))
    return ParameterShapes(*map(frozenset, (full, sharded, shards, counts, sizes)))


def classify(dims, shapes: ParameterShapes, kind: str = "all-reduce",
             group_size: int | None = None, small_elements: int = SMALL_ELEMENTS) -> str:
    """PARAMETER if an all-gather makes an FSDP-sharded parameter whole (over as many devices as
    it has shards), another collective moves an array of a parameter's or a shard's shape (a
    gradient), or another collective as many elements as a sharded parameter; else SMALL if the
    array has at most `small_elements` elements; else ACTIVATION.
    Scalars are always SMALL."""
    elements = math.prod(dims)
    if kind == "all-gather":
        known = shapes.sharded if group_size in (None, *shapes.shard_counts) else frozenset()
    else:
        known = shapes.full | shapes.shards
    if elements > 1 and _squeezed(dims) in known:
        return PARAMETER
    # A sharded parameter's gradient reduced as a 2-D array (training/fsdp.py): reduce-scattered,
    # or all-reduced where the TPU compiler rewrites the reduce-scatter.
    if kind != "all-gather" and elements in shapes.sharded_sizes:
        return PARAMETER
    return SMALL if elements <= small_elements else ACTIVATION
