"""Published ImageNet results after pre-training, in TPU-v4 core hours, for Figure 1's overlay.

Smith et al. 2023 ("ConvNets Match Vision Transformers at Scale"), Sec. 3: Zhai et al. 2022
report ViT-g/14 at 90.2% top-1 after 210k TPU-v3 core hours of JFT-3B pre-training and ViT-G/14
at 90.45% after over 500k; Alabdulmohsin et al. 2023 report SoViT-400m/14 at 90.3% after 230k
TPU-v3 hours. Smith et al. timed these models on TPU-v4 with the authors' code and estimate 120k,
280k and 130k TPU-v4 core hours: those estimates are the compute here. Their own NFNet-F7+
(8 epochs of JFT-4B, about 110k TPU-v4 core hours) reaches 90.3%, and 90.4% when fine-tuned
with repeated augmentation (multiplicity 4, at the same fine-tuning cost). The paper's other
NFNet points (F1 to F7) appear only in its Figure 1, without numbers, so they are not here.
"""

import dataclasses

SMITH_2023 = "Smith et al. 2023, Sec. 3"


@dataclasses.dataclass(frozen=True)
class ReferencePoint:
    label: str
    family: str  # "ViT" or "NFNet": one marker per family in the figure
    tpu_v4_core_hours: float  # pre-training compute
    imagenet_top1: float  # fraction, after fine-tuning on ImageNet
    source: str


REFERENCE_POINTS = (
    ReferencePoint("ViT-g/14", "ViT", 120e3, 0.902, f"Zhai et al. 2022; hours: {SMITH_2023}"),
    ReferencePoint("ViT-G/14", "ViT", 280e3, 0.9045, f"Zhai et al. 2022; hours: {SMITH_2023}"),
    ReferencePoint(
        "SoViT-400m/14", "ViT", 130e3, 0.903, f"Alabdulmohsin et al. 2023; hours: {SMITH_2023}"
    ),
    ReferencePoint("NFNet-F7+", "NFNet", 110e3, 0.903, SMITH_2023),
    ReferencePoint("NFNet-F7+ with RA", "NFNet", 110e3, 0.904, SMITH_2023),
)
# The accelerator of `tpu_v4_core_hours`, as named in modeling/hardware.py.
ACCELERATOR = "tpu_v4"
