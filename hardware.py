"""Peak dense bfloat16 FLOP/s of accelerators: one table for MFU and core-hour accounting.

MFU (model FLOPs utilization) = model FLOPs per second / peak FLOP/s. A "core" is what compute
budgets are counted in: a TensorCore on TPUs (Smith et al. 2023 count TPU-v4 core hours, two
per chip) and a whole GPU on GPUs. A JAX device is one core on TPU v2/v3, one chip on TPU
v4/v5p (megacore: both TensorCores behind one device) and on the one-core chips v5e/v6e.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops_per_chip: float  # dense (no sparsity) bf16 matrix-unit FLOP/s
    cores_per_chip: int
    cores_per_device: int  # cores behind one JAX device
    device_kinds: tuple[str, ...]  # jax `device.device_kind` strings naming this chip

    @property
    def peak_flops_per_core(self) -> float:
        return self.peak_flops_per_chip / self.cores_per_chip

    @property
    def peak_flops_per_device(self) -> float:
        return self.peak_flops_per_core * self.cores_per_device


ACCELERATORS: dict[str, Accelerator] = {
    # Cloud TPU system architecture: v3 chip 123 TFLOP/s bf16, 2 TensorCores (61.5 per core),
    # each TensorCore a JAX device.
    "tpu_v3": Accelerator("TPU v3", 123e12, 2, 1, ("TPU v3",)),
    # Cloud TPU v4 docs: 275 TFLOP/s bf16 per chip, 2 TensorCores (137.5 per core), megacore.
    "tpu_v4": Accelerator("TPU v4", 275e12, 2, 2, ("TPU v4",)),
    # Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip, 1 TensorCore.
    "tpu_v5e": Accelerator("TPU v5e", 197e12, 1, 1, ("TPU v5 lite", "TPU v5e")),
    # Cloud TPU v5p docs: 459 TFLOP/s bf16 per chip, 2 TensorCores, megacore.
    "tpu_v5p": Accelerator("TPU v5p", 459e12, 2, 2, ("TPU v5", "TPU v5p")),
    # Cloud TPU v6e (Trillium) docs: 918 TFLOP/s bf16 per chip, 1 TensorCore.
    "tpu_v6e": Accelerator("TPU v6e", 918e12, 1, 1, ("TPU v6 lite", "TPU v6e")),
    # NVIDIA A100 datasheet: 312 TFLOP/s bf16 Tensor Core dense (624 with sparsity), SXM and PCIe.
    "a100": Accelerator(
        "NVIDIA A100",
        312e12,
        1,
        1,
        (
            "NVIDIA A100-SXM4-40GB",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A100-PCIE-40GB",
            "NVIDIA A100 80GB PCIe",
        ),
    ),
    # NVIDIA H100 datasheet, SXM5: 1,979 TFLOP/s bf16 with sparsity, 989.4 dense.
    "h100_sxm": Accelerator("NVIDIA H100 SXM", 989.4e12, 1, 1, ("NVIDIA H100 80GB HBM3",)),
    # NVIDIA H200 datasheet, SXM: the H100's compute (1,979 sparse, 989.4 dense) with more HBM.
    "h200": Accelerator("NVIDIA H200", 989.4e12, 1, 1, ("NVIDIA H200",)),
}

_BY_DEVICE_KIND = {kind.lower(): acc for acc in ACCELERATORS.values() for kind in acc.device_kinds}


def accelerator(name: str) -> Accelerator:
    """The table entry named `name` (a key of ACCELERATORS, e.g. 'tpu_v4')."""
    if name not in ACCELERATORS:
        raise ValueError(f"Unknown accelerator {name!r}; choose one of {sorted(ACCELERATORS)}.")
    return ACCELERATORS[name]


def accelerator_for_device_kind(device_kind: str) -> Accelerator | None:
    """The accelerator behind a jax `device.device_kind` string; None for CPUs and unknown kinds."""
    return _BY_DEVICE_KIND.get(device_kind.strip().lower())


def peak_flops_per_second(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of ONE JAX device of this kind (e.g. 'TPU v4' -> 275e12).

    None for 'cpu' and for kinds not in the table, where no MFU can be reported.
    """
    acc = accelerator_for_device_kind(device_kind)
    return None if acc is None else acc.peak_flops_per_device
