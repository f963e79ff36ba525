"""Peak dense bfloat16 FLOP/s, HBM and interconnect bandwidth of accelerators: one table for
MFU, core-hour accounting and roofline estimates (benchmarks/step_cost.py).

MFU (model FLOPs utilization) = model FLOPs per second / peak FLOP/s. A "core" is what compute
budgets are counted in: a TensorCore on TPUs (Smith et al. 2023 count TPU-v4 core hours, two
per chip) and a whole GPU on GPUs. A JAX device is one core on TPU v2/v3, one chip on TPU
v4/v5p (megacore: both TensorCores behind one device) and on the one-core chips v5e/v6e.

Bandwidths are per chip, in bytes/s, as the vendors state them: HBM bandwidth, and the chip's
interconnect bandwidth (TPU ICI, NVIDIA NVLink) counted in both directions over all its links.
Where a TPU page gives no per-chip ICI figure, it is links per chip (4 on the 2D tori of v3,
v5e and v6e; 6 on the 3D tori of v4 and v5p) x the per-link figure of "How to Scale Your
Model" (Austin et al. 2025, part 2, jax-ml.github.io/scaling-book/tpus), which matches the
Cloud TPU pages where both exist (v5e 400, v5p 1,200, v6e 800 GB/s).

HBM capacity is per chip, in bytes, as the vendor states it (GiB where the page says GiB, 1e9
where it says GB). The clock turns the TPU compiler's cycle estimates into seconds
(training/compiled_cost.py): v3's and v4's are published (Jouppi et al. 2020, "A domain-specific
supercomputer for training deep neural networks", Table 3: 940 MHz; Jouppi et al. 2023, "TPU v4",
Table 1: 1,050 MHz); for the later chips it is the peak over the matrix units' FLOPs per cycle
(2 x MXUs x MXU width^2; MXUs and width from the Cloud TPU system architecture page), which gives
v3's and v4's published clocks back.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops_per_chip: float  # dense (no sparsity) bf16 matrix-unit FLOP/s
    cores_per_chip: int
    cores_per_device: int  # cores behind one JAX device
    device_kinds: tuple[str, ...]  # jax `device.device_kind` strings naming this chip
    hbm_bandwidth_per_chip: float  # bytes/s
    interconnect_bandwidth_per_chip: float  # bytes/s, both directions, all links (ICI, NVLink)
    hbm_bytes_per_chip: float = 0.0  # capacity; 0: unknown
    clock_hz: float | None = None  # TPUs: the cycles of the compiler's estimates

    @property
    def peak_flops_per_core(self) -> float:
        return self.peak_flops_per_chip / self.cores_per_chip

    @property
    def peak_flops_per_device(self) -> float:
        return self.peak_flops_per_core * self.cores_per_device

    @property
    def hbm_bandwidth_per_device(self) -> float:
        return self.hbm_bandwidth_per_chip * self.cores_per_device / self.cores_per_chip

    @property
    def hbm_bytes_per_device(self) -> float:
        return self.hbm_bytes_per_chip * self.cores_per_device / self.cores_per_chip

    @property
    def interconnect_egress_per_device(self) -> float:
        """Bytes/s one device can send: half the two-way figure, shared by the chip's devices."""
        per_chip = self.interconnect_bandwidth_per_chip / 2
        return per_chip * self.cores_per_device / self.cores_per_chip


ACCELERATORS: dict[str, Accelerator] = {
    # Cloud TPU system architecture: v3 chip 123 TFLOP/s bf16, 2 TensorCores (61.5 per core),
    # each TensorCore a JAX device. Cloud TPU v3 docs: HBM2 32 GiB, 900 GBps per chip.
    # ICI: 4 links x 2e11 B/s two-way (scaling book).
    "tpu_v3": Accelerator("TPU v3", 123e12, 2, 1, ("TPU v3",), 900e9, 8e11, 32 * 2**30, 940e6),
    # Cloud TPU v4 docs: 275 TFLOP/s bf16 per chip, 2 TensorCores (137.5 per core), megacore;
    # HBM2 32 GiB, 1200 GBps. ICI: 6 links x 9e10 B/s two-way (scaling book).
    "tpu_v4": Accelerator("TPU v4", 275e12, 2, 2, ("TPU v4",), 1200e9, 5.4e11, 32 * 2**30,
                          1050e6),
    # Cloud TPU v5e docs: 197 TFLOP/s bf16 per chip, 1 TensorCore; HBM2 16 GB, 819 GBps;
    # bidirectional ICI bandwidth per chip 400 GBps. 4 MXUs of 128 x 128: 197e12 / 131,072 FLOPs
    # per cycle = 1.5 GHz.
    "tpu_v5e": Accelerator("TPU v5e", 197e12, 1, 1, ("TPU v5 lite", "TPU v5e"), 819e9, 400e9,
                           16e9, 1.5e9),
    # Cloud TPU v5p docs: 459 TFLOP/s bf16 per chip, 2 TensorCores, megacore; HBM 95 GiB,
    # 2765 GBps; bidirectional ICI bandwidth per chip 1200 GBps. 2 TensorCores x 4 MXUs of
    # 128 x 128: 459e12 / 262,144 FLOPs per cycle = 1.75 GHz.
    "tpu_v5p": Accelerator("TPU v5p", 459e12, 2, 2, ("TPU v5", "TPU v5p"), 2765e9, 1200e9,
                           95 * 2**30, 1.75e9),
    # Cloud TPU v6e (Trillium) docs: 918 TFLOP/s bf16 per chip, 1 TensorCore; HBM 32 GB,
    # 1600 GBps (1640 in an earlier revision of the page); bidirectional ICI per chip 800 GBps.
    # MXUs of 256 x 256; the page's 2 per TensorCore would need a 3.5 GHz clock, and the TPU
    # compiler's own estimate of a large matmul (369k FLOPs per cycle) exceeds what 2 can do, so
    # 4 are assumed (an inference, not a published figure): 918e12 / 524,288 = 1.75 GHz.
    "tpu_v6e": Accelerator("TPU v6e", 918e12, 1, 1, ("TPU v6 lite", "TPU v6e"), 1600e9, 800e9,
                           32e9, 1.75e9),
    # NVIDIA A100 datasheet: 312 TFLOP/s bf16 Tensor Core dense (624 with sparsity), SXM and PCIe;
    # HBM2e 2,039 GB/s (80GB SXM; the 40GB part has 1,555 GB/s); NVLink 600 GB/s (both
    # directions; PCIe cards only with a bridge to one other card).
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
        2039e9,
        600e9,
        80e9,
    ),
    # NVIDIA H100 datasheet, SXM5: 1,979 TFLOP/s bf16 with sparsity, 989.4 dense; HBM3 3.35 TB/s;
    # NVLink 900 GB/s (both directions: 450 GB/s each way).
    "h100_sxm": Accelerator(
        "NVIDIA H100 SXM", 989.4e12, 1, 1, ("NVIDIA H100 80GB HBM3",), 3.35e12, 900e9, 80e9
    ),
    # NVIDIA H200 datasheet, SXM: the H100's compute (1,979 sparse, 989.4 dense) with 141 GB of
    # HBM3e at 4.8 TB/s; NVLink 900 GB/s.
    "h200": Accelerator("NVIDIA H200", 989.4e12, 1, 1, ("NVIDIA H200",), 4.8e12, 900e9, 141e9),
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
