"""One step of the ResNet-50 -> ConvNeXt-T roadmap (Liu et al. 2022, Figure 2 / Table 10),
trained with the ConvNeXt recipe as the paper does for every step (Section 2.1).

    python train.py --config=configs/convnext_roadmap.py:step=gelu,epochs=100 --workdir=DIR

Steps, in order: see `convnext.ROADMAP` (resnet50, stage_ratio, ..., separate_downsampling).
Other arguments as in configs/convnext.py.
"""

from configs.common import DATA_ARGS, parse_arg
from configs.convnext import convnext_config


def get_config(arg=None):
    import convnext

    a = parse_arg(arg, step="separate_downsampling", epochs=300.0, lr=4e-3, **DATA_ARGS)
    if a.step not in convnext.ROADMAP:
        raise ValueError(
            f"Unknown roadmap step {a.step!r}; choose one of {list(convnext.ROADMAP)}."
        )
    rest = ",".join(f"{k}={v}" for k, v in a.items() if k != "step" and v not in ("", 0))
    return convnext_config(f"roadmap_{a.step}", rest)
