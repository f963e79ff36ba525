"""README's "Cost at scale" table: the compiled train step of NFNet-F0, ConvNeXt-T and ViT-B/16
at global batch 4096 on 8, 64 and 256 simulated devices, audited by benchmarks/step_cost.py,
with its roofline step time and MFU on a TPU v4 and an H100.

Each model's own config (configs/nfnet_f0.py, convnext_tiny.py, and configs/vit.py's B/16)
at its training resolution and compute dtype, pure data parallelism. The ideal FLOPs come from
the one-device step compiled at two batch sizes (step_cost's fit); everything is compiled from
shapes, nothing allocated, on fake CPU devices (XLA:CPU at optimization level 0: nothing runs,
and the HLO that is measured does not depend on it):

    python -m benchmarks.cost_at_scale                    # about 8 minutes on 2 cores
    python -m benchmarks.cost_at_scale --models nfnet_f0 --devices 8 64
"""

import argparse
import os

MODELS = {  # name in the table: (config module, function, variant)
    "NFNet-F0": ("configs.nfnet", "nfnet_config", "F0"),
    "ConvNeXt-T": ("configs.convnext", "convnext_config", "tiny"),
    "ViT-B/16": ("configs.vit", "vit_config", "B/16"),
}
ACCELERATORS = ("tpu_v4", "h100_sxm")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--devices", nargs="+", type=int, default=[8, 64, 256])
    parser.add_argument("--batch", type=int, default=4096)
    return parser.parse_args(argv)


def table_rows(name, config, device_counts, batch):
    """One markdown row per device count."""
    import jax

    from benchmarks import step_cost
    from modeling import hardware

    config.global_batch_size = batch
    rows, per_example = [], None
    for n in device_counts:
        cost = step_cost.audit(config, {"data": n}, devices=jax.devices()[:n],
                               fit=per_example is None)
        if per_example is None:
            per_example, per_step = cost.flops_per_example, cost.flops_per_step
        ideal = per_example * batch / n + per_step
        moved = cost.bytes_sent
        times = []
        for key in ACCELERATORS:
            acc = hardware.accelerator(key)
            roof = step_cost.roofline(acc, cost.flops, cost.bytes_accessed, moved,
                                      cost.model_flops, ideal, cost.ideal_bytes_sent)
            times.append(f"{roof.step_s * 1e3:.0f} ms, {roof.mfu:.0%}")
        activations = cost.collective_bytes("activation")
        rows.append(
            f"| {name} | {n} | {cost.flops / 1e12:.2f} T | {ideal / 1e12:.2f} T | "
            f"{cost.flops / ideal:.2f}x | {moved / 2**20:.0f} MiB | "
            f"{cost.ideal_bytes_sent / 2**20:.0f} MiB | {activations / 2**20:.0f} MiB | "
            f"{cost.temp_bytes / 2**30:.1f} GiB | {times[0]} | {times[1]} |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={max(args.devices)} "
        "--xla_backend_optimization_level=0"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import importlib

    header = (
        "| model | devices | FLOPs / device | ideal | ratio | sent / device | ideal | "
        "activations moved | temporaries | TPU v4: step, MFU | H100: step, MFU |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print(header, flush=True)
    rows = []
    for name in args.models:
        module, function, variant = MODELS[name]
        config = getattr(importlib.import_module(module), function)(variant, None)
        rows += table_rows(name, config, args.devices, args.batch)
    return rows


if __name__ == "__main__":
    main()
