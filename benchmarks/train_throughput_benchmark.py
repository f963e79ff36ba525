"""Training throughput and MFU: our full train step against timm + torch.compile, side by side.

Ours: the train step exactly as train.py builds it (steps.make_train_step with the model's
recipe optimizer from its config: SGD + Nesterov + AGC for NFNets, AdamW for ConvNeXt and ViT;
jitted with the shardings of training/sharding.py over every local device, state donated). timm: the
same architecture (`dm_nfnet_f0`, `convnext_tiny`, `vit_base_patch16_224`) trained with the
equivalent step (timm's SGD + Nesterov with `adaptive_clip_grad`, or AdamW, from timm's
optimizer factory; bfloat16 autocast, channels_last, the model and the optimizer step compiled
with `torch.compile`). Both train on synthetic uint8 batches that are already on the device and
normalized inside the step, so the input pipeline is not measured; both use the config's label
smoothing and stochastic-depth rate; MixUp/CutMix and EMA are off in both.

    python -m benchmarks.train_throughput_benchmark --batch 256        # F0 192 px, T, B/16
    python -m benchmarks.train_throughput_benchmark --models nfnet_f0 --batch 256 --steps 50
    python -m benchmarks.train_throughput_benchmark --models nfnet_tiny vit_tiny --batch 8 \
        --resolution 32 --steps 5 --warmup 3                            # minutes, on a CPU

`--json FILE` writes every figure after each model; `--profile DIR` traces the slowest of ours
(benchmarks/profile_train_step.py) and prints its top ops.

Prints a table (device, model, batch per device, px, images/s per device of ours and timm,
their ratio, MFU of both) with the targets: ratio >= 1.0; MFU >= 35% (NFNet-F0, ConvNeXt-T),
>= 50% (ViT-B/16) on an H100. `--batch` is per device: ours trains on batch x local devices
(sharded as train.py shards), timm on one device. MFU = 6 x MACs per example (modeling/macs.py) x
examples per device per second / peak FLOP/s of one device (modeling/hardware.py).

timm's side runs in a child process (benchmarks/timm_train_step.py, torch only), every model
before any of ours, and JAX does not preallocate GPU memory here, so each framework has the
whole device. `--timm_python` runs that side in another environment with torch and timm;
where neither has them the table says so and only ours is measured. On a CPU the figures say
nothing about accelerator speed, and the output says so.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

# JAX would otherwise take 75% of the GPU's memory at start-up, leaving torch too little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from benchmarks.timm_train_step import time_steps
from configs.convnext import convnext_config
from configs.nfnet import nfnet_config
from configs.vit import vit_config
from modeling import hardware, macs, registry
from training import optim, sharding, steps

# Smith et al. 2023's F7+ run: ~110k TPU-v4 core hours for 1.936e22 FLOPs imply 35.6% MFU.
TPU_V4_REFERENCE_MFU = 0.35
TARGET_RATIO = 1.0

# ----------------------------------------------------------------------------------------------
# What is benchmarked: our model and config, and timm's model of the same architecture.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    model: str  # registry.create name
    config: Callable  # () -> the model's train.py config (optimizer, label smoothing, ...)
    resolution: int  # default training resolution (px)
    timm: Callable  # (ours: nn.Module, resolution, num_classes) -> timm model spec
    target_mfu: float | None = None  # the MFU target on an H100
    overrides: dict = dataclasses.field(default_factory=dict)  # model field overrides


def _drop_path(model) -> float:
    for field in ("stochastic_depth", "drop_path_rate"):
        if hasattr(model, field):
            return float(getattr(model, field))
    return 0.0


def _timm_named(name: str) -> Callable:
    """timm.create_model(name) with our model's stochastic-depth (and NFNet head dropout) rate."""

    def spec(ours, resolution, num_classes):
        kwargs = dict(num_classes=num_classes, drop_path_rate=_drop_path(ours))
        if name.startswith("vit"):
            kwargs["img_size"] = resolution
        elif hasattr(ours, "dropout"):
            kwargs["drop_rate"] = float(ours.dropout)
        return dict(model=name, fixture=None, model_kwargs=kwargs)

    return spec


def _timm_fixture(builder: str) -> Callable:
    """A small timm model of the parity tests (tests/fixtures), structurally ours."""

    def spec(ours, resolution, num_classes):
        kwargs = dict(num_classes=num_classes)
        if builder == "timm_tiny_vit":
            kwargs.update(pool="token", image_size=(resolution, resolution))
        return dict(model=builder, fixture=builder, model_kwargs=kwargs)

    return spec


_CONVNEXT_TEST_SIZE = dict(depths=(1, 2, 1, 1), widths=(16, 32, 48, 64))  # as tests/fixtures

TARGETS: dict[str, Target] = {
    "nfnet_f0": Target(
        "nfnet_F0", lambda: nfnet_config("F0", None), 192, _timm_named("dm_nfnet_f0"), 0.35
    ),
    "convnext_tiny": Target(
        "convnext_tiny", lambda: convnext_config("tiny", None), 224,
        _timm_named("convnext_tiny"), 0.35,
    ),
    "vit_b16": Target(
        "vit_B/16", lambda: vit_config("B/16", None), 224,
        _timm_named("vit_base_patch16_224"), 0.50,
    ),
    # CPU-sized models with the structure of the ones above (tests, quick checks).
    "nfnet_tiny": Target(
        "nfnet_tiny", lambda: nfnet_config("tiny", None), 32, _timm_fixture("timm_tiny_nfnet")
    ),
    "convnext_test": Target(
        "convnext_tiny", lambda: convnext_config("tiny", None), 32,
        _timm_fixture("timm_small_convnext"), overrides=_CONVNEXT_TEST_SIZE,
    ),
    "vit_tiny": Target(
        "vit_P-tiny", lambda: vit_config("P-tiny", None), 32, _timm_fixture("timm_tiny_vit")
    ),
}
DEFAULT_TARGETS = ("nfnet_f0", "convnext_tiny", "vit_b16")


def benchmark_config(target: Target, dtype: str):
    """The model's train.py config with MixUp/CutMix and EMA off (timm's step has neither)."""
    c = target.config()
    c.compute_dtype = dtype
    c.mixup_alpha = c.cutmix_alpha = 0.0
    c.ema_decay = None
    return c


def create_model(target: Target, config):
    return registry.create(
        target.model,
        num_classes=config.data.num_classes,
        dtype=jnp.dtype(config.compute_dtype),
        **{**config.model.overrides, **target.overrides},
    )


# ----------------------------------------------------------------------------------------------
# Ours: train.py's jitted, sharded train step.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class OurStep:
    """A jitted train step with its state and a device-resident batch: `run()` takes a step."""

    model: object
    config: object
    mesh: object
    jitted: Callable  # jax.jit(step) with train.py's shardings and donation
    state: object
    batch: dict

    def run(self):
        with jax.set_mesh(self.mesh):
            self.state, metrics = self.jitted(self.state, self.batch)
        return metrics


def make_optimizer(config, batch: int, total_steps: int = 10_000):
    """train.py's schedule and optimizer for a run of `total_steps` at `batch`, its epochs
    `config.total_epochs` long (per-epoch schedules such as pycls's need their length)."""
    schedule = optim.config_schedule(
        config.optimizer, batch, total_steps, total_steps // 10,
        steps_per_epoch=Fraction(total_steps) / Fraction(config.total_epochs).limit_denominator(),
    )
    return optim.create_optimizer(config.optimizer, schedule), schedule


def abstract_train_state(model, config, optimizer, resolution: int, mesh):
    """(init function, abstract state, its shardings), as train.py computes them."""
    image_shape = (resolution, resolution, 3)
    init = lambda key: steps.create_state(
        model, optimizer, key, image_shape, ema=config.ema_decay is not None
    )
    abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    state_sharding = sharding.tree_shardings(abstract_state, mesh, config.fsdp_min_shard_size)
    return init, abstract_state, state_sharding


def synthetic_batch(batch: int, resolution: int, num_classes: int, mesh) -> dict:
    """Random uint8 images and labels created on the devices in the batch sharding."""

    def make(key):
        image_key, label_key = jax.random.split(key)
        return {
            "image": jax.random.bits(image_key, (batch, resolution, resolution, 3), jnp.uint8),
            "label": jax.random.randint(label_key, (batch,), 0, num_classes, jnp.int32),
            "replaced": jnp.zeros((batch,), bool),
        }

    return jax.jit(make, out_shardings=sharding.batch_sharding(mesh))(jax.random.key(1))


def build_ours(target: Target, batch: int, resolution: int, dtype: str) -> OurStep:
    """The step on a global batch of `batch` x local devices (`batch` per device)."""
    config = benchmark_config(target, dtype)
    model = create_model(target, config)
    mesh = sharding.create_mesh(dict(config.mesh))
    batch *= mesh.devices.size
    optimizer, schedule = make_optimizer(config, batch)
    init, _, state_sharding = abstract_train_state(model, config, optimizer, resolution, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(config.seed))
        jitted = steps.jit_train_step(config, model, optimizer, schedule, mesh, state_sharding)
        data = synthetic_batch(batch, resolution, config.data.num_classes, mesh)
    return OurStep(model, config, mesh, jitted, state, data)


def measure_ours(target: Target, batch: int, resolution: int, dtype: str, warmup: int,
                 count: int) -> tuple[dict, OurStep]:
    """(timings, the step timed)."""
    ours = build_ours(target, batch, resolution, dtype)
    first, step_time = time_steps(ours.run, jax.block_until_ready, warmup, count)
    timings = {"first_step_s": first, "step_time": step_time, "devices": ours.mesh.devices.size}
    return timings, ours


# ----------------------------------------------------------------------------------------------
# timm + torch.compile.
# ----------------------------------------------------------------------------------------------


def timm_status(python: str) -> tuple[bool, str]:
    """(measurable, note): whether `python` can run timm's side (checked without importing
    torch when it is this interpreter)."""
    if python == sys.executable:
        missing = [m for m in ("torch", "timm") if importlib.util.find_spec(m) is None]
        if missing:
            return False, (f"timm not measured: {' and '.join(missing)} not installed (run in an "
                           "environment with torch and timm, or pass --timm_python)")
    return True, f"timm side run by {python}"


def timm_optimizer_spec(config, batch: int) -> dict:
    """Our recipe's optimizer hyper-parameters for timm's factory (constant peak lr)."""
    o = config.optimizer
    spec = dict(lr=optim.scaled_learning_rate(o, batch), weight_decay=o.weight_decay)
    if o.name == "sgd_agc":
        return spec | dict(name="sgd", momentum=o.momentum, nesterov=o.nesterov,
                           agc_clip=o.agc_clip, agc_eps=o.agc_eps)
    return spec | dict(name="adamw", betas=(o.b1, o.b2), eps=o.eps, agc_clip=None)


def timm_spec(target: Target, batch: int, resolution: int, dtype: str, warmup: int,
              count: int, compile_: bool) -> dict:
    """Everything timm_train_step.py needs, as plain JSON."""
    config = benchmark_config(target, dtype)
    model = create_model(target, config)
    return dict(
        target.timm(model, resolution, config.data.num_classes),
        batch=batch, resolution=resolution, num_classes=config.data.num_classes,
        bf16=dtype == "bfloat16", compile=compile_, warmup=warmup, steps=count,
        mean=list(config.data.mean), std=list(config.data.std),
        label_smoothing=config.label_smoothing, optimizer=timm_optimizer_spec(config, batch),
    )


def measure_timm(spec: dict, python: str, timeout: float | None = None,
                 log: Path | None = None) -> dict:
    """Runs timm_train_step.py in a child process; its JSON line, or {'error': message}. A child
    still running after `timeout` seconds is killed with the processes it started (torch.compile's
    workers). `log` receives the child's output."""
    # From the repository's root, so that the worker finds tests.fixtures' small models.
    child = subprocess.Popen([python, "-m", "benchmarks.timm_train_step", json.dumps(spec)],
                             cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        stderr += f"\ntimed out after {timeout:.0f} s"
    except BaseException:  # Interrupted: the child goes too.
        os.killpg(child.pid, signal.SIGKILL)
        raise
    if log is not None:
        log.write_text(f"{stdout}\n{stderr}")
    lines = stdout.strip().splitlines()
    if child.returncode == 0 and lines:
        return json.loads(lines[-1])
    message = (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
    return {"error": message}


# ----------------------------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------------------------


def device_description() -> tuple[str, float | None, bool]:
    """(device kind x count, peak FLOP/s per device or None, is an accelerator)."""
    device = jax.devices()[0]
    kind = device.device_kind
    return (f"{kind} x {jax.device_count()}", hardware.peak_flops_per_second(kind),
            device.platform != "cpu")


def mfu(macs_per_example: int, batch_per_device: int, step_time: float,
        peak: float | None) -> float | None:
    """6 x MACs x examples per device per second / peak FLOP/s of one device."""
    if not peak:
        return None
    return 6 * macs_per_example * batch_per_device / step_time / peak


def _rate(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_table(rows: list[dict]) -> list[str]:
    header = ("device", "model", "batch / device", "px", "ours img/s / device", "timm img/s",
              "ours / timm", "MFU ours", "MFU timm", "MFU target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for r in rows:  # Ours steps `batch` examples per device, timm's on one device.
        ours_rate = r["batch"] / r["ours"]["step_time"]
        timm = r.get("timm")
        timm_rate = r["batch"] / timm["step_time"] if timm else None
        cells = (
            r["device"], r["name"], str(r["batch"]), str(r["resolution"]), _rate(ours_rate),
            _rate(timm_rate) if timm_rate else r.get("timm_note", "n/a"),
            f"{ours_rate / timm_rate:.3f}" if timm_rate else "n/a",
            _percent(r["mfu_ours"]), _percent(r.get("mfu_timm")), _percent(r["target_mfu"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_TARGETS),
                        choices=list(TARGETS))
    parser.add_argument("--batch", type=int, default=None,
                        help="batch per device (ours: x local devices; timm: one device); "
                        "default 256 on an accelerator, 4 on a CPU")
    parser.add_argument("--resolution", type=int, default=None,
                        help="default: the model's (F0 192, ConvNeXt-T and ViT-B/16 224)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--no_timm", action="store_true", help="measure ours only")
    parser.add_argument("--no_compile", action="store_true", help="timm without torch.compile")
    parser.add_argument("--timm_python", default=None,
                        help="interpreter of an environment with torch and timm for timm's side "
                        "(default: this one)")
    parser.add_argument("--peak_flops", type=float, default=None,
                        help="peak FLOP/s per device (default: modeling/hardware.py's table)")
    parser.add_argument("--json", default=None,
                        help="also write every figure to this JSON file (after each model)")
    parser.add_argument("--profile", default=None,
                        help="directory for a jax.profiler trace (and HLO) of the slowest of "
                        "ours, with its top ops printed (benchmarks/profile_train_step.py)")
    parser.add_argument("--profile_top", type=int, default=15, help="rows of the profile")
    return parser.parse_args(argv)


def plan_rows(args, batch: int, device: str, accelerator: bool) -> list[dict]:
    """One row per model: what to run, with its MACs per example."""
    rows = []
    for name in args.models:
        target = TARGETS[name]
        resolution = args.resolution or target.resolution
        model = create_model(target, benchmark_config(target, args.dtype))
        rows.append(dict(name=name, target=target, batch=batch, resolution=resolution,
                         device=device if accelerator else f"CPU ({device})",
                         macs=macs.model_macs(model, resolution), target_mfu=target.target_mfu))
    return rows


def measure_row(row: dict, args, python: str | None, peak: float | None) -> None:
    """timm's step (first: JAX keeps the GPU memory it takes), then ours, into `row`."""
    if python:
        spec = timm_spec(row["target"], row["batch"], row["resolution"], args.dtype,
                         args.warmup, args.steps, not args.no_compile)
        result = measure_timm(spec, python)
        if "error" in result:
            row["timm_note"] = "failed"
            print(f"{row['name']}: timm's step failed: {result['error']}")
        else:
            row["timm"] = result
    row["ours"], ours = measure_ours(row["target"], row["batch"], row["resolution"], args.dtype,
                                     args.warmup, args.steps)
    if args.profile:
        row["step"] = ours  # Kept for the profile of the slowest.
    row["mfu_ours"] = mfu(row["macs"], row["batch"], row["ours"]["step_time"], peak)
    if "timm" in row:
        row["mfu_timm"] = mfu(row["macs"], row["batch"], row["timm"]["step_time"], peak)
    else:
        row.setdefault("timm_note", "no timm")


def ratio(row: dict) -> float | None:
    """Ours / timm in images/s (timm's step time over ours)."""
    return row["timm"]["step_time"] / row["ours"]["step_time"] if "timm" in row else None


def slowest(rows: list[dict]) -> dict:
    """The row of ours furthest behind: lowest ours / timm, else lowest MFU against its target,
    else the longest step."""
    if all(ratio(r) is not None for r in rows):
        return min(rows, key=ratio)
    if all(r["mfu_ours"] is not None and r["target_mfu"] for r in rows):
        return min(rows, key=lambda r: r["mfu_ours"] / r["target_mfu"])
    return max(rows, key=lambda r: r["ours"]["step_time"])


def summary_row(row: dict) -> dict:
    """One model's figures as plain JSON."""
    keep = ("name", "batch", "resolution", "macs", "ours", "timm", "timm_note", "mfu_ours",
            "mfu_timm", "target_mfu")
    r = {k: row[k] for k in keep if k in row}
    if "ours" in row:
        r["images_per_s_ours"] = row["batch"] / row["ours"]["step_time"]
        r["ours_over_timm"] = ratio(row)
    if "timm" in row:
        r["images_per_s_timm"] = row["batch"] / row["timm"]["step_time"]
    return r


def summary(rows: list[dict], args, device: str, peak: float | None) -> dict:
    """Every figure of the run as plain JSON."""
    return dict(jax=jax.__version__, device=device, peak_flops=peak, dtype=args.dtype,
                steps=args.steps, warmup=args.warmup, timm_compiled=not args.no_compile,
                rows=[summary_row(row) for row in rows])


def write_profile(rows: list[dict], args) -> None:
    from benchmarks.profile_train_step import profile  # It imports this module.

    row = slowest(rows)
    out = Path(args.profile).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nprofile of the slowest of ours, {row['name']} "
          f"(batch {row['batch']} per device, {row['resolution']} px):")
    print("\n".join(profile(row["step"], out, steps=3, warmup=1, top=args.profile_top)))


def print_report(rows: list[dict], args, accelerator: bool) -> None:
    timm_versions = sorted({row["timm"]["torch"] for row in rows if "timm" in row})
    print(f"\n{args.dtype}, {args.steps} timed steps after {args.warmup} warm-up step(s); timm "
          f"{'eager' if args.no_compile else 'with torch.compile'}"
          + "".join(f"; {v}" for v in timm_versions))
    print("\n".join(format_table(rows)))
    for row in rows:
        timm = row.get("timm")
        print(f"first step (compilation included): {row['name']} ours "
              f"{row['ours']['first_step_s']:.1f} s"
              + (f", timm {timm['first_step_s']:.1f} s" if timm else ""))
    print(f"targets: ours / timm >= {TARGET_RATIO:.1f}; MFU >= 35% for NFNet-F0 and ConvNeXt-T, "
          ">= 50% for ViT-B/16 on an H100")
    print(f"reference: ~{TPU_V4_REFERENCE_MFU:.0%} MFU on TPU v4, implied by Smith et al. 2023 "
          "(NFNet-F7+, 1.936e22 FLOPs in ~110k core hours)")
    if not accelerator:
        print("CPU: not a performance figure.")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device, peak, accelerator = device_description()
    peak = args.peak_flops or peak
    batch = args.batch or (256 if accelerator else 4)
    python = args.timm_python or sys.executable
    has_timm, timm_note = (False, "timm not measured: --no_timm") if args.no_timm else (
        timm_status(python))
    print(f"jax {jax.__version__} on {device} ({jax.default_backend()} backend); {timm_note}")
    if not accelerator:
        print("CPU: not a performance figure (the code path is the one measured on a GPU).")
    if args.profile:  # The profile compiles the step again: from this cache.
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax-cache-"))
    rows = plan_rows(args, batch, device, accelerator)
    for row in rows:
        measure_row(row, args, python if has_timm else None, peak)
        if args.json:
            Path(args.json).write_text(json.dumps(summary(rows, args, device, peak), indent=1))
    print_report(rows, args, accelerator)
    if args.profile:
        write_profile(rows, args)
    return rows


if __name__ == "__main__":
    main()
