r"""The train and eval steps compiled ahead of time for a TPU slice, by the TPU compiler (libtpu),
on any machine: memory per chip against its HBM, FLOPs per chip against 6 x MACs x batch /
chips, the collectives by kind and class, and the step time the compiler predicts.

    python -m benchmarks.tpu_aot --config=configs/nfnet_f7plus.py:epochs=8 --topology=v4-256 \
        --config.num_train_examples=4000000000
    python -m benchmarks.tpu_aot --table            # README's table: every row, cached by row
    python -m benchmarks.tpu_aot --table --rows F0  # rows whose name contains F0
    python -m benchmarks.tpu_aot --table --cached   # the cached rows, nothing compiled

It runs train.py's own dry run (`train.py --dry_run --topology=...`: the config, the mesh over
the slice's devices, shardings, donation, both steps compiled), which prints the verdict; this
adds the FLOPs and collectives. The prediction counts the compiler's `estimated_cycles` of every
executed instruction (loop bodies x trip counts) at the chip's clock, plus the collectives at
ICI bandwidth in series; it leaves out overlap, host work, DCN and the cost model's error
(training/compiled_cost.py). The table runs each row in a fresh process and keeps its JSON in
--cache_dir, so an interrupted table resumes where it stopped; a big step takes 5-10 minutes to
compile on 2 cores.
"""

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JFT_4B = "--config.num_train_examples=4000000000"  # Smith et al.: ~4B images, not public


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    topology: str
    args: tuple[str, ...]  # the config and its overrides, as train.py takes them
    note: str = ""

    @property
    def key(self) -> str:
        text = " ".join((self.topology, *self.args))
        name = f"{self.name}_{self.topology}".replace("+", "plus")
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        return f"{slug}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _smith(variant: str, topology: str) -> Row:
    """Smith et al. 2023's pre-training: batch 4096 at 224 px, 8 epochs of JFT-4B."""
    return Row(f"NFNet-{variant}", topology,
               (f"--config=configs/nfnet_{variant.lower().replace('+', 'plus')}.py:epochs=8",
                JFT_4B), "Smith et al., 8 epochs of JFT-4B")


SCANNED = ("--config.model.overrides.scan=True", "--config.model.overrides.remat=True",
           "--config.model.overrides.remat_policy=dots_saveable")
VIT_RECIPE = "Xiao et al.'s recipe, batch 2048"
ROWS = (  # In the order they are compiled: the paper's model first.
    _smith("F7+", "v4-128"),
    _smith("F7+", "v4-256"),
    _smith("F0", "v4-128"),
    Row("ViT-B/16", "v4-128", ("--config=configs/vit_p_18gf.py", "--config.model.name=vit_B/16"),
        VIT_RECIPE),
    Row("ConvNeXt-T", "v4-128", ("--config=configs/convnext_tiny.py",), "Liu et al., batch 4096"),
    _smith("F7", "v4-128"),
    _smith("F3+", "v4-128"),
    Row("NFNet-F0 (ImageNet)", "v4-128", ("--config=configs/nfnet_f0.py:imagenet",),
        "Brock et al. 2021a: 360 epochs, batch 4096 trained (8192 read)"),
    Row("ViT-G/14", "v4-256", ("--config=configs/vit_p_18gf.py",
                               "--config.model.name=vit_G/14", *SCANNED),
        f"{VIT_RECIPE}; scanned, remat keeping dots"),
    Row("ViT-G/14, FSDP 16", "v4-256", ("--config=configs/vit_p_18gf.py",
                                        "--config.model.name=vit_G/14", *SCANNED,
                                        "--config.mesh.fsdp=16"),
        f"{VIT_RECIPE}; scanned, remat keeping dots; per-layer gathers"),
    Row("ViT-C 18GF", "v4-128", ("--config=configs/vit_c_18gf.py",), VIT_RECIPE),
    Row("ConvNeXt-XL", "v4-128", ("--config=configs/convnext_xlarge.py",),
        "Liu et al., batch 4096"),
    Row("ViT-L/16", "v4-128", ("--config=configs/vit_p_18gf.py", "--config.model.name=vit_L/16"),
        VIT_RECIPE),
    dataclasses.replace(_smith("F7+", "v4-128"), name="NFNet-F7+, FSDP 8",
                        args=(*_smith("F7+", "v4-128").args, "--config.mesh.fsdp=8")),
    _smith("F7", "v4-256"),
    _smith("F3+", "v4-256"),
    _smith("F0", "v4-256"),
)


# ----------------------------------------------------------------------------------------------
# One configuration.
# ----------------------------------------------------------------------------------------------


def versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("jax", "jaxlib", "libtpu", "flax"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def collective_lines(cost) -> list[str]:
    """Bytes of whole arrays moved per step, by kind and class."""
    from training import hlo_cost

    totals = Counter()
    for c in cost.collectives:
        totals[(c.kind, c.cls)] += c.total_bytes
    if not totals:
        return ["  none"]
    lines = [f"  {'kind':<20}{'parameter/gradient':>20}{'small':>12}{'activation':>12}"]
    for kind in hlo_cost.COLLECTIVES:
        got = [totals[(kind, cls)] for cls in (hlo_cost.PARAMETER, hlo_cost.SMALL,
                                               hlo_cost.ACTIVATION)]
        if any(got):
            lines.append(f"  {kind:<20}{got[0] / 2**20:>16.1f} MiB{got[1] / 2**20:>8.1f} MiB"
                         f"{got[2] / 2**20:>8.1f} MiB")
    return lines


def detail_lines(report) -> list[str]:
    t = report.train
    if t is None:
        return []
    return [
        f"FLOPs / chip     {t.flops / 1e12:.3f} T (convolutions and dots x loop trips) against "
        f"6 x MACs x batch / chips {t.model_flops / 1e12:.3f} T: {t.flops / t.model_flops:.3f}x",
        "compiler's cycles by kind: " + ", ".join(
            f"{kind} {cycles / t.cycles:.0%}" for kind, cycles in t.cycles_by_kind.items()
            if cycles >= 0.005 * t.cycles) if t.cycles else "no cycle estimates",
        "collectives per train step (MiB of whole arrays):",
        *collective_lines(t),
        "prediction: the TPU compiler's estimated_cycles of every executed instruction (loop "
        "bodies x trips) at the chip's clock, plus collectives at ICI bandwidth in series; not "
        "counted: overlap, host work, DCN, the cost model's error.",
    ]


def run_one(config_args: list[str], topology: str, json_path: str | None) -> int:
    """train.py's dry run for the slice, then the details; exit status as train.py's."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    from ml_collections import config_flags  # noqa: F401  (train's flags)

    import train

    try:
        config = _load_config(config_args)
        report = train.train_and_evaluate(config, None, dry_run=True, topology=topology)
    except (train.ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in detail_lines(report):
        print(line)
    if json_path:
        write_json(json_path, report, config_args, topology)
    return 0


def write_json(json_path: str, report, config_args: list[str], topology: str) -> None:
    """The report's figures, and beside them the train step's optimized HLO (if compiled)."""
    data = report.to_json()
    data.update(versions=versions(), date=datetime.date.today().isoformat(), args=config_args,
                topology_arg=topology)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(data, indent=1, default=str))
    if report.train_hlo:
        with gzip.open(Path(json_path).with_suffix(".hlo.txt.gz"), "wt") as hlo:
            hlo.write(report.train_hlo)


def _load_config(config_args: list[str]):
    from benchmarks.step_cost import load_config

    return load_config(config_args)


def reanalyze(json_path: Path) -> dict:
    """A cached row's train-step figures read again from its stored HLO (after
    training/hlo_cost.py changed), without compiling: FLOPs, cycles and the predicted step."""
    from modeling import hardware
    from training import compiled_cost, hlo_cost

    data = json.loads(json_path.read_text())
    if data["train"] is None:  # refused by the compiler: nothing to read again
        return data
    with gzip.open(json_path.with_suffix(".hlo.txt.gz"), "rt") as hlo:
        module = hlo_cost.parse_hlo(hlo.read())
    acc = next(a for a in hardware.ACCELERATORS.values() if a.name == data["accelerator"])
    t = data["train"]
    t["flops"], t["cycles"] = hlo_cost.hlo_flops(module), hlo_cost.estimated_cycles(module)
    t["cycles_by_kind"] = dict(hlo_cost.cycles_by_kind(module).most_common())
    t["compute_s"] = t["cycles"] / acc.clock_hz
    t["step_s"] = t["compute_s"] + t["collective_s"]
    t["mfu"] = t["model_flops"] / (t["step_s"] * acc.peak_flops_per_device)
    data["images_per_s_per_chip"] = data["trained_per_step"] / t["step_s"] / data["chips"]
    data["core_hours"] = compiled_cost.core_hours(t["step_s"], data["total_steps"], data["chips"],
                                                  acc)
    json_path.write_text(json.dumps(data, indent=1, default=str))
    return data


# ----------------------------------------------------------------------------------------------
# README's table.
# ----------------------------------------------------------------------------------------------


def run_table(rows, cache_dir: Path, refresh: bool, timeout_s: int,
              compile_missing: bool = True) -> list[dict | None]:
    results = []
    for row in rows:
        path = cache_dir / f"{row.key}.json"
        if compile_missing and (refresh or not path.exists()):
            started = time.time()
            print(f"compiling {row.name} for {row.topology} ...", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "benchmarks.tpu_aot", f"--topology={row.topology}",
                       f"--json={path}", *row.args]
            try:
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                      timeout=timeout_s)
                if done.returncode:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                    print(f"  failed ({done.returncode}): {tail}", file=sys.stderr, flush=True)
            except subprocess.TimeoutExpired:
                print(f"  no result within {timeout_s} s", file=sys.stderr, flush=True)
            print(f"  {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        results.append(json.loads(path.read_text()) if path.exists() else None)
        print(table_row(row, results[-1]), flush=True)
    return results


TABLE_HEADER = (
    "| model | slice (chips) | batch / chip | params | fits (needed per chip) | arguments | "
    "temporaries | FLOPs / chip vs 6 x MACs x B / N | predicted step | MFU | run: core-hours "
    "| compile |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(row: Row, result: dict | None) -> str:
    if result is None:
        return f"| {row.name} | {row.topology} | not measured | | | | | | | | | |"
    t, v = result["train"], result["verdict"]
    gib = lambda x: f"{x / 2**30:.2f} GiB"
    fits = "yes" if v["fits"] else "**no**"
    batch = result["global_batch"] // result["chips"]
    if t is None:  # the compiler refused it: the needed bytes are from its message
        return (f"| {row.name} | {row.topology} ({result['chips']}) | {batch} | "
                f"{result['params'] / 1e6:,.1f}M | {fits} ({gib(v['needed'])}) | | | "
                f"refused by the TPU compiler: {result['refused']} | | | | "
                f"{result['compile_s']:.0f} s |")
    m = t["memory"]
    step = f"{t['step_s'] * 1e3:.0f} ms" if t["step_s"] else "n/a"
    mfu = f"{t['mfu']:.0%}" if t["mfu"] else "n/a"
    hours = f"{result['core_hours']:,.0f}" if result["core_hours"] else "n/a"
    return (f"| {row.name} | {row.topology} ({result['chips']}) | "
            f"{batch} | {result['params'] / 1e6:,.1f}M | "
            f"{fits} ({gib(v['needed'])}) | {gib(m['arguments'])} | {gib(m['temporaries'])} | "
            f"{t['flops'] / 1e12:.2f} T, {t['flops'] / t['model_flops']:.2f}x | {step} | {mfu} | "
            f"{hours} | {result['compile_s']:.0f} s |")


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="The config as train.py takes it: --config=configs/FILE.py[:ARG] and "
        "--config.FIELD=VALUE overrides.")
    parser.add_argument("--topology", default=None,
                        help="TPU slice: v4-256, v5p-128, v5litepod-64, v6e-64 or v4:4x4x8")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--table", action="store_true", help="README's table, row by row")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="with --table: only rows whose name contains one of these")
    parser.add_argument("--cache_dir", default=str(REPO / "workdirs" / "tpu_aot"),
                        help="with --table: where each row's JSON is kept")
    parser.add_argument("--refresh", action="store_true", help="with --table: compile again")
    parser.add_argument("--cached", action="store_true",
                        help="with --table: print the cached rows only, compile nothing")
    parser.add_argument("--reanalyze", action="store_true",
                        help="with --table: read the cached rows' stored HLO again, no compile")
    parser.add_argument("--timeout_s", type=int, default=3600,
                        help="with --table: the longest a row may compile")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, config_args = parse_args(sys.argv[1:] if argv is None else argv)
    unknown = [a for a in config_args if not a.startswith("--config")]
    if unknown:
        print(f"error: unknown arguments {' '.join(unknown)}; see --help.", file=sys.stderr)
        return 2
    if args.table:
        rows = [r for r in ROWS if not args.rows or any(s in r.name for s in args.rows)]
        if args.reanalyze:
            for row in rows:
                path = Path(args.cache_dir) / f"{row.key}.json"
                if path.exists():
                    reanalyze(path)
        print(TABLE_HEADER)
        run_table(rows, Path(args.cache_dir), args.refresh, args.timeout_s,
                  compile_missing=not args.cached)
        return 0
    if not args.topology or not config_args:
        print("error: give --config=... and --topology=... (e.g. --topology=v4-256), or "
              "--table.", file=sys.stderr)
        return 2
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return run_one(config_args, args.topology, args.json)


if __name__ == "__main__":
    sys.exit(main())
