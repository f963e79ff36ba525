"""What a compiled step costs one device, read from the executable alone (nothing runs): memory
against the device's HBM, FLOPs, collectives, and the step time the TPU compiler predicts. It
serves ahead-of-time compiles for a TPU slice on any machine (training/tpu_slices.py; train.py
--dry_run --topology, benchmarks/tpu_aot.py).

Memory per device = arguments + outputs - outputs aliased to (donated) arguments + temporaries +
generated code (`compiled.memory_analysis()`). The eval step runs while the train state is
resident, so it needs the train step's arguments plus its own temporaries, outputs and code.

Predicted step time = the TPU compiler's own `estimated_cycles` (in each instruction's
backend_config: fusions, convolutions, copies, reduces) summed over the executed instructions,
loop bodies times their trip counts, at the chip's clock (modeling/hardware.py), plus the bytes
each device sends in collectives at its share of the chip's one-way ICI bandwidth (ring
algorithms, training/hlo_cost.py). It counts every instruction the compiler costs, at the
compiler's estimate. It leaves out: the overlap of collectives with compute (they are added in
series, so this is an upper bound where XLA overlaps them), host work (input pipeline, Python
dispatch, checkpoints, evaluation), transfers between slices (DCN), stragglers, and the error
of the compiler's cost model (a large bf16 matmul on v4: 1.08x its FLOPs / peak).
"""

import dataclasses
import re

from modeling import hardware
from training import hlo_cost

GiB = 2**30
# Of HBM usable by the program: libtpu 0.0.52 offers 30.75 GiB of a v4 chip's 32 GiB (its
# "exceeds available HBM" message); the rest is the runtime's.
HEADROOM = 30.75 / 32
# The TPU compiler refuses a program whose temporaries exceed the HBM left by its arguments:
# "CompileTimeHbmOom: ... required for HLO temporaries (50.00G) exceeds available HBM (30.75G)".
SUGGESTION_MARGIN = 0.9  # a suggested change must bring the estimate this far under capacity
_COMPILE_OOM = re.compile(r"CompileTimeHbmOom.*?temporaries \(([\d.]+)G\) exceeds available "
                          r"HBM \(([\d.]+)G\)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device of one compiled program (`compiled.memory_analysis()`)."""

    arguments: int
    outputs: int
    aliased: int  # outputs written into donated arguments
    temporaries: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def of(cls, compiled) -> "Memory":
        m = compiled.memory_analysis()
        field = lambda name: int(getattr(m, name, 0) or 0) if m is not None else 0
        return cls(field("argument_size_in_bytes"), field("output_size_in_bytes"),
                   field("alias_size_in_bytes"), field("temp_size_in_bytes"),
                   field("generated_code_size_in_bytes"))


def eval_memory(train: Memory, evaluation: Memory) -> int:
    """Bytes per device while the eval step runs beside the resident train state."""
    return train.arguments + evaluation.outputs + evaluation.temporaries + evaluation.code


@dataclasses.dataclass
class CompiledCost:
    """Per-device costs of one compiled step."""

    devices: int
    memory: Memory
    flops: int  # convolutions and dots, loop bodies x trip counts
    model_flops: float  # 6 x MACs x examples trained / devices (train); 2 x MACs x ... (eval)
    cycles: int  # the TPU compiler's estimate; 0 on other backends
    cycles_by_kind: dict[str, int]  # hlo_cost.cycles_by_kind: convolution/dot, reduction, ...
    clock_hz: float | None
    collectives: list[hlo_cost.Collective]
    interconnect_egress: float  # bytes/s one device sends
    peak_flops: float

    @property
    def compute_s(self) -> float | None:
        return self.cycles / self.clock_hz if self.cycles and self.clock_hz else None

    @property
    def bytes_sent(self) -> float:
        return sum(c.bytes_sent_per_device for c in self.collectives)

    @property
    def collective_s(self) -> float:
        return self.bytes_sent / self.interconnect_egress if self.interconnect_egress else 0.0

    @property
    def step_s(self) -> float | None:
        return None if self.compute_s is None else self.compute_s + self.collective_s

    @property
    def mfu(self) -> float | None:
        return None if not self.step_s else self.model_flops / (self.step_s * self.peak_flops)

    def collective_bytes(self, cls: str | None = None, kind: str | None = None) -> int:
        return sum(c.total_bytes for c in self.collectives
                   if cls in (None, c.cls) and kind in (None, c.kind))


def analyze(compiled, acc: hardware.Accelerator, num_devices: int, model_flops: float,
            params=None, param_shardings=None) -> CompiledCost:
    """The costs of `compiled` on `acc`; with the parameters (abstract) and their shardings, its
    collectives are classed as parameter/gradient, small or activation (training/hlo_cost.py)."""
    module = hlo_cost.parse_hlo(compiled.as_text())
    collectives = hlo_cost.hlo_collectives(module, num_devices)
    if params is not None:
        shapes = hlo_cost.parameter_shapes(params, param_shardings)
        for c in collectives:
            c.cls = hlo_cost.classify(c.shape, shapes, c.kind, c.group_size)
    kinds = hlo_cost.cycles_by_kind(module)
    return CompiledCost(
        devices=num_devices, memory=Memory.of(compiled), flops=hlo_cost.hlo_flops(module),
        model_flops=model_flops, cycles=sum(kinds.values()),
        cycles_by_kind=dict(kinds.most_common()),
        clock_hz=acc.clock_hz, collectives=collectives,
        interconnect_egress=acc.interconnect_egress_per_device,
        peak_flops=acc.peak_flops_per_device,
    )


# ----------------------------------------------------------------------------------------------
# Fits or not, and what would make it fit.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the suggestion may change: the run's batch per device and how it is spread."""

    batch_per_device: int
    grad_accum_steps: int
    fsdp: int
    devices: int
    remat_policy: str | None  # the model's; None: blocks not rematerialised


@dataclasses.dataclass(frozen=True)
class Verdict:
    fits: bool
    needed: int  # bytes per device
    capacity: int  # usable bytes per device
    suggestion: str  # '' when it fits

    def sentence(self) -> str:
        if self.fits:
            return (f"fits: {self.needed / GiB:.2f} GiB of {self.capacity / GiB:.2f} GiB per "
                    f"device, {(self.capacity - self.needed) / GiB:.2f} GiB free")
        return (f"does not fit: needs {self.needed / GiB:.2f} GiB per device, "
                f"{self.capacity / GiB:.2f} GiB usable; {self.suggestion}")


def compile_oom(message: str) -> tuple[int, int] | None:
    """(temporaries, available bytes) from the TPU compiler's out-of-memory refusal, else None."""
    match = _COMPILE_OOM.search(message)
    return None if match is None else (int(float(match[1]) * GiB), int(float(match[2]) * GiB))


def usable_hbm(acc: hardware.Accelerator) -> int:
    return int(acc.hbm_bytes_per_device * HEADROOM)


def verdict(train: Memory, evaluation: Memory | None, capacity: int, layout: Layout) -> Verdict:
    """Whether the train step (and the eval step beside its state) fits `capacity` bytes per
    device, and if not, one sentence naming what would make it fit."""
    needed = max(train.total, eval_memory(train, evaluation) if evaluation else 0)
    if needed <= capacity:
        return Verdict(True, needed, capacity, "")
    return Verdict(False, needed, capacity, suggestion(train, needed, capacity, layout))


def suggestion(train: Memory, needed: int, capacity: int, layout: Layout) -> str:
    """What would bring `needed` under `capacity`, from the two parts that scale: temporaries
    (activations) with the examples a device holds at once (gradient accumulation, or a larger
    slice), and the train state (the arguments) with the FSDP size. Names each change that
    frees enough alone, else the smallest pair that does; and more recomputation in the
    backward pass where the blocks keep activations."""
    rest = needed - train.arguments - train.temporaries  # code, outputs: they stay

    def fits(split: int, fsdp: int) -> bool:  # with a margin: temporaries scale only roughly
        state = train.arguments * layout.fsdp / fsdp
        return state + train.temporaries / split + rest <= SUGGESTION_MARGIN * capacity

    per_device = layout.batch_per_device // layout.grad_accum_steps
    splits = [k for k in (2, 4, 8, 16, 32, 64) if per_device % k == 0]
    sizes = [f for f in (2, 4, 8, 16, 32, 64, 128, 256) if f > layout.fsdp
             and f <= layout.devices and layout.devices % f == 0]
    split = next((k for k in splits if fits(k, layout.fsdp)), None)
    fsdp = next((f for f in sizes if fits(1, f)), None)
    options = []
    if split:
        options.append(_fewer_examples(per_device, split, layout))
    if fsdp:
        options.append(_more_fsdp(fsdp))
    if not options:
        pair = next(((k, f) for f in sizes for k in splits if fits(k, f)), None)
        if pair:
            k, f = pair
            options.append(f"{_more_fsdp(f)} and {_fewer_examples(per_device, k, layout)}")
    if layout.remat_policy != "nothing_saveable":
        options.append("recompute each block in the backward pass "
                       "(config.model.overrides.remat_policy='nothing_saveable', scan=True, "
                       "remat=True)")
    if not options:
        return "use a larger slice or a smaller model: no change of this config frees enough."
    return "to fit, " + ", or ".join(options) + "."


def _fewer_examples(per_device: int, split: int, layout: Layout) -> str:
    return (f"cut the examples per device at a time from {per_device} to {per_device // split} "
            f"(grad_accum_steps={layout.grad_accum_steps * split}, or a slice with {split}x the "
            "chips)")


def _more_fsdp(fsdp: int) -> str:
    return f"shard the train state over more devices (config.mesh.fsdp={fsdp})"


def core_hours(step_s: float, total_steps: int, chips: int, acc: hardware.Accelerator) -> float:
    """Accelerator core-hours of a run (Smith et al. count TPU-v4 TensorCores, 2 per chip)."""
    return step_s * total_steps * chips * acc.cores_per_chip / 3600


# ----------------------------------------------------------------------------------------------
# A slice's report: train.py --dry_run --topology and benchmarks/tpu_aot.py.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SliceReport:
    model: str
    params: int
    global_batch: int
    trained_per_step: int  # examples trained per step (half the batch in 'halves' mixing)
    resolution: int
    slice_name: str
    topology: str
    chips: int
    mesh: dict[str, int]
    accelerator: str
    total_steps: int
    compile_s: float  # both steps, on the machine that compiled them
    train: CompiledCost | None  # None: the compiler refused the step (it does not fit)
    evaluation: CompiledCost | None
    verdict: Verdict
    core_hours: float | None  # of the whole run at the predicted step time
    train_hlo: str = ""  # the compiled train step's optimized HLO, to analyze again later
    refused: str = ""  # the compiler's words when it refused to compile the train step

    @property
    def images_per_s_per_chip(self) -> float | None:
        step = self.train.step_s if self.train else None
        return self.trained_per_step / step / self.chips if step else None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        del data["train_hlo"]
        for name in ("train", "evaluation"):
            cost = getattr(self, name)
            if cost is None:
                continue
            data[name].update(total_memory=cost.memory.total, compute_s=cost.compute_s,
                              collective_s=cost.collective_s, step_s=cost.step_s, mfu=cost.mfu,
                              bytes_sent=cost.bytes_sent)
        data["images_per_s_per_chip"] = self.images_per_s_per_chip
        return data


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def format_verdict(report: SliceReport) -> list[str]:
    """The dry run's lines for a slice: memory, the verdict, the predicted step and the run."""
    r = report
    lines = [f"TPU slice        {r.slice_name}: {r.chips} chips ({r.topology}) of {r.accelerator}, "
             f"mesh {r.mesh}; " + (f"the TPU compiler refused the train step after "
                                   f"{r.compile_s:.0f} s: {r.refused}" if r.refused else
                                   f"both steps compiled in {r.compile_s:.0f} s")]
    if r.train is not None:
        m = r.train.memory
        lines.append(
            f"memory / device  train step: arguments {_gib(m.arguments)}, temporaries "
            f"{_gib(m.temporaries)}, outputs not aliased {_gib(m.outputs - m.aliased)}, code "
            f"{_gib(m.code)}; eval step beside the state "
            f"{_gib(eval_memory(m, r.evaluation.memory))}")
    lines.append(f"verdict          {r.verdict.sentence()}")
    t = r.train
    if t is not None and t.step_s:
        lines.append(
            f"predicted step   {t.step_s * 1e3:.1f} ms = the compiler's cycle estimates "
            f"{t.compute_s * 1e3:.1f} ms + collectives at ICI bandwidth "
            f"{t.collective_s * 1e3:.1f} ms (in series); {r.images_per_s_per_chip:.0f} images/s "
            f"per chip, MFU {t.mfu:.1%}")
        lines.append(
            f"run              {r.total_steps:,} steps: {r.core_hours:,.0f} core-hours "
            "(TensorCores x hours, Smith et al.'s unit); evaluation, input, start-up and "
            "restarts not counted")
    return lines
