"""One timed GPU run of the throughput comparison: ours against timm + torch.compile, then a
profile of the slowest of ours, every figure written to JSON as soon as it is measured.

    timeout 480 python -m benchmarks.gpu_run --out OUT          # H100 / H200, ~7 minutes
    python -m benchmarks.gpu_run --out OUT --tiny                # the same path on a CPU
    python -m benchmarks.gpu_run --out OUT --cases convnext_tiny # a second try, one case

Cases, shortest compilation first so that a deadline cuts the longest: ViT-B/16 (224 px),
ViT-B/16 with cuDNN's fused attention (`attention_implementation='cudnn'`; timm's figure is
ViT-B/16's), NFNet-F0 (192 px), ConvNeXt-T (224 px); batch 256 per device, bfloat16. Each case
runs timm's step (benchmarks/timm_train_step.py in a child process, killed at its deadline) and
then ours (train_throughput_benchmark.measure_ours). Then profile_train_step traces the slowest
of ours: lowest ours / timm, else furthest below its MFU target.

Writes into --out, after every part:
  gpu_run.json    versions, device, date, settings; per case images/s, ours / timm, MFU and
                      first-step (compilation) time of both, or why one was not measured; the
                      profiled case's top ops (time, share, kind) and trace directory; the time
                      each part took
  report.md           the table of train_throughput_benchmark
  profile_<case>/     trace (perfetto_trace.json.gz, xplane.pb) and HLO of the profiled step
  logs/               timm's child output per case

--budget_s (default 420) bounds the whole run from JAX's start: timm's part starts only while
--min_timm_s are left before the profile's reserve (--profile_s) and is killed at that
deadline; ours' part starts only while --min_part_s are left; the profile only while
--profile_s are left. A SIGTERM (from `timeout`) writes what was measured and stops. Compiled
steps are cached (JAX's persistent cache, torch inductor's own), so a second run on the same
machine compiles little. --tiny runs small models at batch 2 and 32 px: the CPU check.

Imports no TensorFlow (configs, models and the step load without it).
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import profile_train_step
from benchmarks import train_throughput_benchmark as throughput  # No GPU memory preallocation.
from modeling import macs


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # the row's name in the JSON
    target: str  # throughput.TARGETS key
    tiny_target: str  # the CPU-sized stand-in (--tiny)
    target_mfu: float  # the MFU target on an H100
    overrides: tuple = ()  # (field, value) model overrides
    timm_of: str | None = None  # timm's figure is this case's (same timm model) where it ran


CASES = (
    Case("vit_b16", "vit_b16", "vit_tiny", 0.45),
    Case(
        "vit_b16_cudnn",
        "vit_b16",
        "vit_tiny",
        0.45,
        (("attention_implementation", "cudnn"),),
        timm_of="vit_b16",
    ),  # fmt: skip
    Case("nfnet_f0", "nfnet_f0", "nfnet_tiny", 0.35),
    Case("convnext_tiny", "convnext_tiny", "convnext_test", 0.35),
)


class Budget:
    """Seconds left of the run, and of its measuring part (all but the profile's reserve)."""

    def __init__(self, total_s: float, reserve_s: float):
        self.start, self.total_s, self.reserve_s = time.monotonic(), total_s, reserve_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def left_for_measuring(self) -> float:
        return self.left() - self.reserve_s


# ----------------------------------------------------------------------------------------------
# The JSON.
# ----------------------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Ours' packages and device; torch's and timm's are filled in from timm's first result."""
    device = jax.devices()[0]
    return dict(
        python=sys.version.split()[0],
        jax=jax.__version__,
        jaxlib=_version("jaxlib"),
        flax=_version("flax"),
        optax=_version("optax"),
        torch=None,
        timm=None,
        device=device.device_kind,
        platform=device.platform,
        devices=jax.device_count(),
    )


def new_record(args, device: str, peak: float | None) -> dict:
    now = datetime.datetime.now(datetime.UTC)
    return dict(
        status="running",
        date=now.isoformat(timespec="seconds"),
        elapsed_s=0.0,
        versions=versions(),
        device_description=device,
        peak_flops=peak,
        settings=dict(
            tiny=args.tiny,
            batch_per_device=args.batch,
            dtype=args.dtype,
            steps=args.steps,
            warmup=args.warmup,
            timm_compiled=not args.no_compile,
            budget_s=args.budget_s,
            profile_s=args.profile_s,
            min_part_s=args.min_part_s,
            min_timm_s=args.min_timm_s,
            timm_timeout_s=args.timm_timeout_s,
            compile_cache=args.compile_cache,
            compile_cache_entries_at_start=_entries(args.compile_cache),
        ),
        timm_status=None,
        cases=[c.name for c in CASES if c.name in args.cases],
        models=[],
        parts=[],
        profile=None,
    )


def _entries(folder: str) -> int:
    path = Path(folder)
    return sum(1 for _ in path.iterdir()) if path.is_dir() else 0


def model_entry(row: dict) -> dict:
    """throughput.summary_row's figures, flattened for reading, with the reasons for gaps."""
    entry = throughput.summary_row(row)
    ours, timm = row.get("ours"), row.get("timm")
    entry.update(
        model=row["model"],
        overrides=dict(row["overrides"]),
        first_step_s_ours=ours["first_step_s"] if ours else None,
        first_step_s_timm=timm["first_step_s"] if timm else None,
        images_per_s_ours=entry.get("images_per_s_ours"),
        images_per_s_timm=entry.get("images_per_s_timm"),
        ours_over_timm=entry.get("ours_over_timm"),
        mfu_ours=row.get("mfu_ours"),
        mfu_timm=row.get("mfu_timm"),
        ours_note=row.get("ours_note", "measured" if ours else "not measured"),
        timm_note=row.get("timm_note", "measured" if timm else "not measured"),
    )
    return entry


def write_record(out: Path, record: dict, rows: list[dict], budget: Budget) -> None:
    """The JSON (written whole to a temporary file, then renamed) and the markdown table."""
    record["elapsed_s"] = round(budget.elapsed(), 1)
    record["models"] = [model_entry(row) for row in rows]
    temporary = out / "gpu_run.json.tmp"
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(out / "gpu_run.json")
    (out / "report.md").write_text("\n".join(report_table(record, rows)) + "\n")


def report_table(record: dict, rows: list[dict]) -> list[str]:
    """throughput's table of the cases of ours measured (--tiny: with the stand-in's name)."""
    tiny = record["settings"]["tiny"]
    measured = [
        {
            **row,
            "timm_note": "no timm",
            "name": f"{row['name']} ({row['model']})" if tiny else row["name"],
        }
        for row in rows
        if "ours" in row
    ]
    lines = throughput.format_table(measured)
    if record["versions"]["platform"] == "cpu":
        lines.append("\nCPU: not a performance figure.")
    return lines


# ----------------------------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------------------------


def plan_row(case: Case, args, device: str) -> dict:
    """What to run for `case`, in throughput's row format, with its MACs per example."""
    name = case.tiny_target if args.tiny else case.target
    base = throughput.TARGETS[name]
    target = dataclasses.replace(base, overrides={**base.overrides, **dict(case.overrides)})
    resolution = args.resolution or target.resolution
    # The overrides change how, not what, the model computes; the base traces on every backend.
    model = throughput.create_model(base, throughput.benchmark_config(base, args.dtype))
    return dict(
        name=case.name,
        model=name,
        overrides=case.overrides,
        target=target,
        batch=args.batch,
        resolution=resolution,
        device=device,
        macs=macs.model_macs(model, resolution),
        target_mfu=case.target_mfu,
    )


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}"


def run_timm(
    row: dict, case: Case, rows: dict, args, timm: tuple[str | None, str], budget: Budget, out: Path
) -> str:
    """timm's step into `row` (or the note why not) with timm = (python or None, why);
    returns the part's outcome."""
    python, why_not = timm
    if case.timm_of in rows:  # The same timm model, measured earlier in this run.
        source = rows[case.timm_of]
        if "timm" in source:
            row["timm"] = source["timm"]
            row["timm_note"] = f"measured with {case.timm_of} (the same timm model)"
        else:
            row["timm_note"] = f"as {case.timm_of}'s: {source.get('timm_note', 'not run')}"
        return row["timm_note"]
    if python is None:
        row["timm_note"] = why_not
        return row["timm_note"]
    left = budget.left_for_measuring()
    if left < args.min_timm_s:
        row["timm_note"] = f"not measured: time budget ({left:.0f} s left)"
        return row["timm_note"]
    spec = throughput.timm_spec(
        row["target"],
        row["batch"],
        row["resolution"],
        args.dtype,
        args.warmup,
        args.steps,
        not args.no_compile,
    )
    timeout = min(args.timm_timeout_s, left)
    result = throughput.measure_timm(spec, python, timeout, out / "logs" / f"timm_{case.name}.log")
    if "error" in result:
        row["timm_note"] = f"failed: {result['error']}"
    else:
        row["timm"] = result
        row["timm_note"] = "measured"
    return row["timm_note"]


def run_ours(row: dict, args, budget: Budget) -> str:
    """Ours' step into `row` (the built step kept for the profile); returns the outcome."""
    left = budget.left_for_measuring()
    if left < args.min_part_s:
        row["ours_note"] = f"not measured: time budget ({left:.0f} s left)"
        return row["ours_note"]
    try:
        row["ours"], row["step"] = throughput.measure_ours(
            row["target"], row["batch"], row["resolution"], args.dtype, args.warmup, args.steps
        )
    except Exception as e:  # Out of memory, an implementation the backend lacks: go on.
        row["ours_note"] = f"failed: {_error(e)}"
        return row["ours_note"]
    row["ours_note"] = "measured"
    return row["ours_note"]


def add_mfu(row: dict, peak: float | None) -> None:
    for side in ("ours", "timm"):
        if side in row:
            row[f"mfu_{side}"] = throughput.mfu(
                row["macs"], row["batch"], row[side]["step_time"], peak
            )


def record_part(record: dict, part: str, seconds: float, outcome: str) -> None:
    record["parts"].append(dict(part=part, seconds=round(seconds, 1), outcome=outcome))
    print(f"[{part}] {outcome} ({seconds:.1f} s)", flush=True)


def timed(record: dict, part: str, run) -> None:
    start = time.monotonic()
    outcome = run()
    record_part(record, part, time.monotonic() - start, outcome)


def fill_timm_versions(record: dict, row: dict) -> None:
    timm = row.get("timm")
    if timm and record["versions"]["torch"] is None:
        record["versions"].update(
            torch=timm.get("torch_version", timm.get("torch")),
            timm=timm.get("timm_version"),
            torch_device=timm.get("device"),
            torch_cuda=timm.get("cuda"),
        )


# ----------------------------------------------------------------------------------------------
# The profile of the slowest.
# ----------------------------------------------------------------------------------------------


def profile_slowest(rows: list[dict], args, budget: Budget, out: Path) -> dict:
    """Traces the slowest of ours measured; its top ops, or why no profile was taken."""
    measured = [row for row in rows if "step" in row]
    if not measured:
        return dict(skipped="no case of ours was measured")
    if budget.left() < args.profile_s:
        return dict(skipped=f"time budget ({budget.left():.0f} s left)")
    row = throughput.slowest(measured)
    folder = out / f"profile_{row['name']}"
    folder.mkdir(parents=True, exist_ok=True)
    report = profile_train_step.profile_report(
        row["step"], folder, steps=args.profile_steps, warmup=1, top=args.profile_top
    )
    print("\n".join(report.lines))
    return dict(
        case=row["name"],
        why=why_slowest(row, measured),
        trace_dir=folder.name,
        steps=args.profile_steps,
        op_ms_per_step=report.op_ms_per_step,
        top_ops=report.top_ops,
        report=report.lines,
    )


def why_slowest(row: dict, measured: list[dict]) -> str:
    if all(throughput.ratio(r) is not None for r in measured):
        return f"lowest ours / timm ({throughput.ratio(row):.3f})"
    if row.get("mfu_ours") is not None and row["target_mfu"]:
        return (
            f"furthest below its MFU target ({100 * row['mfu_ours']:.1f}% of "
            f"{100 * row['target_mfu']:.0f}%)"
        )
    return "longest step (no timm ratio or MFU for every case)"


# ----------------------------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the JSON, report and trace")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU check: small models, batch 2, 32 px, 2 steps"
    )
    parser.add_argument(
        "--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES]
    )
    parser.add_argument("--batch", type=int, default=None, help="per device (default 256)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--budget_s", type=float, default=420.0, help="the whole run's seconds")
    parser.add_argument(
        "--profile_s", type=float, default=45.0, help="seconds kept for the profile at the end"
    )
    parser.add_argument(
        "--min_part_s",
        type=float,
        default=None,
        help="start ours' part only with this many seconds left (default 30, tiny 0)",
    )
    parser.add_argument(
        "--min_timm_s",
        type=float,
        default=None,
        help="start timm's part only with this many seconds left (default 90, tiny 0): "
        "torch.compile takes about a minute per model",
    )
    parser.add_argument(
        "--timm_timeout_s",
        type=float,
        default=200.0,
        help="most seconds for one timm step (compilation included)",
    )
    parser.add_argument("--no_timm", action="store_true", help="measure ours only")
    parser.add_argument("--no_compile", action="store_true", help="timm without torch.compile")
    parser.add_argument(
        "--timm_python",
        default=None,
        help="interpreter of an environment with torch and timm (default: this)",
    )
    parser.add_argument(
        "--peak_flops",
        type=float,
        default=None,
        help="peak FLOP/s per device (default: modeling/hardware.py's table)",
    )
    parser.add_argument("--profile_steps", type=int, default=3, help="steps traced")
    parser.add_argument("--profile_top", type=int, default=15, help="top ops kept")
    parser.add_argument(
        "--compile_cache",
        default=None,
        help="JAX's persistent compilation cache (default: "
        "$JAX_COMPILATION_CACHE_DIR, else one in the temporary folder)",
    )
    args = parser.parse_args(argv)
    tiny = dict(batch=2, resolution=32, steps=2, warmup=1, min_part_s=0.0, min_timm_s=0.0)
    full = dict(batch=256, resolution=None, steps=20, warmup=3, min_part_s=30.0, min_timm_s=90.0)
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def timm_python(args) -> tuple[str | None, str]:
    """(the interpreter for timm's side or None, why)."""
    if args.no_timm:
        return None, "not measured: --no_timm"
    python = args.timm_python or sys.executable
    measurable, note = throughput.timm_status(python)
    if not measurable:
        return None, note.replace("timm not measured", "not measured")
    return python, note


def use_compile_cache(args) -> None:
    args.compile_cache = (
        args.compile_cache
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or str(Path(tempfile.gettempdir()) / "jax_cache_gpu_run")
    )
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)


def measure_case(case: Case, by_name: dict, context: dict) -> None:
    """timm's part then ours' for one case, each timed into the record and saved."""
    args, budget, record = context["args"], context["budget"], context["record"]
    row = plan_row(case, args, record["device_description"])
    context["rows"].append(row)
    by_name[case.name] = row
    timm_part = lambda: run_timm(row, case, by_name, args, context["timm"], budget, context["out"])
    timed(record, f"timm {case.name}", timm_part)
    fill_timm_versions(record, row)
    save(context)
    timed(record, f"ours {case.name}", lambda: run_ours(row, args, budget))
    add_mfu(row, context["peak"])
    save(context)


def save(context: dict) -> None:
    write_record(context["out"], context["record"], context["rows"], context["budget"])


def run(context: dict) -> None:
    """Every case, then the profile of the slowest."""
    context["timm"] = timm_python(context["args"])
    context["record"]["timm_status"] = context["timm"][1]
    by_name = {}
    for case in CASES:
        if case.name in context["args"].cases:
            measure_case(case, by_name, context)
    start = time.monotonic()
    try:
        profile = profile_slowest(
            context["rows"], context["args"], context["budget"], context["out"]
        )
    except Exception as e:  # The figures above stand without it.
        profile = dict(failed=_error(e))
    context["record"]["profile"] = profile
    outcome = profile.get("case") or str(profile)
    record_part(context["record"], "profile", time.monotonic() - start, f"profile: {outcome}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    use_compile_cache(args)
    budget = Budget(args.budget_s, args.profile_s)
    device, peak, accelerator = throughput.device_description()
    peak = args.peak_flops or peak
    record = new_record(args, device if accelerator else f"CPU ({device})", peak)
    print(f"jax {jax.__version__} on {device}; peak {peak} FLOP/s; budget {args.budget_s:.0f} s",
          flush=True)  # fmt: skip
    context = dict(args=args, out=out, budget=budget, peak=peak, record=record, rows=[])
    # `timeout` sends SIGTERM: stop, and write what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(context)
        record["status"] = "done"
    except BaseException as e:
        record["status"] = f"interrupted: {_error(e) if isinstance(e, Exception) else repr(e)}"
        raise
    finally:
        save(context)
        print(f"wrote {out / 'gpu_run.json'} ({record['status']}, {budget.elapsed():.0f} s)",
              flush=True)  # fmt: skip
    return record


if __name__ == "__main__":
    main()
