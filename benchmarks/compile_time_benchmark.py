"""Compile time and memory of the train step, unrolled against scanned blocks, side by side.

Pods compile the train step again on every restart, so its compile time is paid once per
preemption. This builds the step exactly as train.py does (config -> model -> optimizer ->
shapes and shardings of the train state -> jax.jit with donation) for the local devices, and
times `jit(...).lower(abstract state, abstract batch)` (tracing + StableHLO) and `.compile()`
(XLA) separately: wall clock, and the process's CPU time of compilation, which other load on
the machine disturbs less; XLA's memory analysis gives the temporaries. No parameter is ever
allocated, so any model size compiles on a laptop; the persistent compilation cache is off.

Each model is compiled in every layout of `--layouts`, one after the other in this run:
unrolled blocks, scanned blocks (`nn.scan`), and scanned blocks rematerialised under
`nothing_saveable` (remat) or `dots_saveable` (remat-dots); ratios to the first layout follow.

    python -m benchmarks.compile_time_benchmark      # NFNet-F7+, ConvNeXt-XL, ViT-G/14, 224 px
    python -m benchmarks.compile_time_benchmark --models nfnet_f3plus "vit_g/14:pool='map'" \
        --layouts scanned remat --batch_per_device 16 --resolution 256

A model is `name[:field=value,...]` with model-field overrides. To compile for N devices on a
CPU (e.g. the SPMD partitioning of a pod host), set
XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

import argparse
import ast
import time

import jax
import jax.numpy as jnp

from benchmarks.train_throughput_benchmark import abstract_train_state, make_optimizer
from configs.convnext import convnext_config
from configs.nfnet import nfnet_config
from configs.vit import vit_config
from modeling import macs, registry
from training import sharding, steps

DEFAULT_MODELS = ("nfnet_f7plus", "convnext_xlarge", "vit_G/14")
# Model-field overrides of each layout.
LAYOUTS = {
    "unrolled": dict(scan=False, remat=False),
    "scanned": dict(scan=True, remat=False),
    "remat": dict(scan=True, remat=True, remat_policy="nothing_saveable"),
    "remat-dots": dict(scan=True, remat=True, remat_policy="dots_saveable"),
}
DEFAULT_LAYOUTS = ("unrolled", "scanned", "remat", "remat-dots")
FAMILY_CONFIGS = {"nfnet": nfnet_config, "convnext": convnext_config, "vit": vit_config}


def parse_model(spec: str) -> tuple[str, dict]:
    """'vit_G/14:scan=True,remat=True' -> ('vit_G/14', {'scan': True, 'remat': True})."""
    name, _, fields = spec.partition(":")
    overrides = {}
    for item in filter(None, fields.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} of {spec!r} is not field=value.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name, overrides


def train_config(name: str, dtype: str, num_classes: int | None):
    """The family's default train.py config for model `name` (e.g. 'nfnet_f7plus')."""
    family, variant = registry.split_name(name)
    config = FAMILY_CONFIGS[family](variant, None)
    config.compute_dtype = dtype
    if num_classes:
        config.data.num_classes = num_classes
    return config


def abstract_batch(batch: int, resolution: int, mesh) -> dict:
    batch_sharding = sharding.batch_sharding(mesh)
    shape = lambda s, dtype: jax.ShapeDtypeStruct(s, dtype, sharding=batch_sharding)
    return {
        "image": shape((batch, resolution, resolution, 3), jnp.uint8),
        "label": shape((batch,), jnp.int32),
        "replaced": shape((batch,), jnp.bool_),
    }


def measure(spec: str, batch_per_device: int, resolution: int | None, dtype: str,
            num_classes: int | None, layout: str | None = None) -> dict:
    """Lowering and compilation seconds of one model's train step, with sizes; `layout` (a
    LAYOUTS key) overrides the spec's own scan and remat fields."""
    name, overrides = parse_model(spec)
    overrides = {**overrides, **LAYOUTS.get(layout, {})}
    config = train_config(name, dtype, num_classes)
    resolution = resolution or config.data.train_resolution
    model = registry.create(name, num_classes=config.data.num_classes, dtype=jnp.dtype(dtype),
                          **{**config.model.overrides, **overrides})
    mesh = sharding.create_mesh(dict(config.mesh))
    batch = batch_per_device * mesh.devices.size
    optimizer, schedule = make_optimizer(config, batch)
    _, abstract_state, state_sharding = abstract_train_state(
        model, config, optimizer, resolution, mesh
    )
    state = sharding.with_shardings(abstract_state, state_sharding)
    with jax.set_mesh(mesh):
        jitted = steps.jit_train_step(config, model, optimizer, schedule, mesh, state_sharding)
        start = time.perf_counter()
        lowered = jitted.lower(state, abstract_batch(batch, resolution, mesh))
        lowering = time.perf_counter() - start
        start, cpu_start = time.perf_counter(), time.process_time()
        compiled = lowered.compile()
        compilation = time.perf_counter() - start
        compilation_cpu = time.process_time() - cpu_start
    memory = compiled.memory_analysis()
    return dict(
        spec=spec, layout=layout, resolution=resolution, batch=batch, devices=mesh.devices.size,
        params=macs.count_params(abstract_state.params), lowering_s=lowering,
        compile_s=compilation, compile_cpu_s=compilation_cpu,
        temp_bytes=getattr(memory, "temp_size_in_bytes", None) if memory else None,
    )


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_result(r: dict) -> str:
    temp = "" if r["temp_bytes"] is None else f", temporaries {_bytes(r['temp_bytes'])}"
    layout = f" [{r['layout']}]" if r.get("layout") else ""
    return (f"{r['spec']}{layout}: {r['params'] / 1e6:,.1f}M params, {r['resolution']} px, batch "
            f"{r['batch']} over {r['devices']} device(s): lowering {r['lowering_s']:.1f} s, "
            f"compilation {r['compile_s']:.1f} s ({r['compile_cpu_s']:.1f} s of CPU time), "
            f"total {r['lowering_s'] + r['compile_s']:.1f} s{temp}")


def format_ratios(results: list[dict]) -> str:
    """Each layout's compile time and temporaries relative to the first layout's, and the
    rematerialised layouts' temporaries relative to the plain scanned layout's."""
    base = results[0]
    scanned = next((r for r in results if r["layout"] == "scanned"), None)
    ratio = lambda r, b, key: f"{r[key] / b[key]:.2f}" if r[key] and b[key] else "n/a"
    parts = []
    for r in results[1:]:
        part = (f"{r['layout']}/{base['layout']}: compilation {ratio(r, base, 'compile_s')}, "
                f"temporaries {ratio(r, base, 'temp_bytes')}")
        if scanned and r["layout"].startswith("remat"):
            part += f" ({ratio(r, scanned, 'temp_bytes')} of scanned)"
        parts.append(part)
    return f"  {base['spec']}: " + "; ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="name[:field=value,...], e.g. nfnet_f7plus \"vit_G/14:pool='map'\"")
    parser.add_argument("--layouts", nargs="+", default=list(DEFAULT_LAYOUTS),
                        choices=list(LAYOUTS), help="layouts compiled for every model, in order")
    parser.add_argument("--batch_per_device", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None,
                        help="default: the config's pre-training resolution (224 px here)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--num_classes", type=int, default=None,
                        help="default: the config's (1000); Smith et al.'s JFT head has 30,000")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = jax.devices()[0]
    print(f"backend {jax.default_backend()}: {device.device_kind} x {jax.device_count()}, "
          f"jax {jax.__version__}, {args.dtype}; persistent compilation cache off")
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    results = []
    try:
        for spec in args.models:
            runs = []
            for layout in args.layouts:
                runs.append(measure(spec, args.batch_per_device, args.resolution, args.dtype,
                                    args.num_classes, layout))
                print(format_result(runs[-1]), flush=True)
            if len(runs) > 1:
                print(format_ratios(runs), flush=True)
            results += runs
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    return results


if __name__ == "__main__":
    main()
