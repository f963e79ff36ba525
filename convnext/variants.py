"""The ConvNeXt variant table and `create()`.

Variants: ConvNeXt T, S, B, L, XL (Liu et al. 2022, Section 3, "Model Variations"; widths and
depths of facebookresearch/ConvNeXt `convnext_*`) and every step of the ResNet-50 -> ConvNeXt-T
roadmap as 'roadmap_<step>' (see `convnext.roadmap`). Each entry holds plain hyper-parameters:
`ConvNeXt` module fields plus recipe figures (resolutions), which `create()` does not pass on.
"""

from flax import linen as nn

from convnext.model import ConvNeXt
from convnext.roadmap import ROADMAP
from modeling import block_stack, registry

# name: depths, widths, stochastic depth rate. The rates are the ImageNet-1k ones (Appendix
# A.1: 0.1 / 0.4 / 0.5 / 0.5 for T / S / B / L); XL, trained only with ImageNet-22k
# pre-training, takes its pre-training rate 0.2 (Appendix A.1; the repository's TRAINING.md).
_SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048), 0.2),
}


# Short names of the paper (ConvNeXt-T, -S, -B, -L, -XL).
_LETTERS = {"t": "tiny", "s": "small", "b": "base", "l": "large", "xl": "xlarge"}
ROADMAP_PREFIX = "roadmap_"

# ImageNet-1k training and evaluation at 224 px (Appendix A.1).
_RECIPE = dict(train_resolution=224, test_resolution=224)

VARIANTS: dict[str, dict] = {
    **{
        # S, B, L and XL (27-block third stage) scanned and rematerialised, which compiles
        # faster and uses less memory than unrolled blocks (README, compile time); T compiles
        # faster unrolled.
        name: dict(depths=depths, widths=widths, drop_path_rate=rate,
                   **block_stack.variant_layout(max(depths) >= 27), **_RECIPE)
        for name, (depths, widths, rate) in _SIZES.items()
    },
    **{f"{ROADMAP_PREFIX}{step}": dict(fields, **_RECIPE) for step, fields in ROADMAP.items()},
}

# Entries of a variant that describe its recipe rather than the network.
RECIPE_FIELDS = tuple(_RECIPE)


def canonical_name(variant: str) -> str:
    """'T', 'tiny' and 'convnext_tiny' all name 'tiny'; 'resnet50' names 'roadmap_resnet50'."""
    name = variant.strip().lower().replace("-", "_")
    name = name.removeprefix("convnext_")
    name = _LETTERS.get(name, name)
    if name == "resnet50":
        name = ROADMAP_PREFIX + name
    if name in VARIANTS:
        return name
    if name.startswith(ROADMAP_PREFIX):
        raise ValueError(f"Unknown roadmap step {variant!r}; choose one of {list(ROADMAP)}.")
    raise ValueError(
        f"Unknown ConvNeXt variant {variant!r}; choose one of {list(_SIZES)} (or T, S, B, L, XL) "
        f"or a roadmap step 'roadmap_<step>' with <step> one of {list(ROADMAP)}."
    )


def create(variant: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Builds the ConvNeXt `variant` (e.g. 'tiny', 'XL', 'roadmap_gelu') with field overrides.

    Overrides are ConvNeXt module fields, e.g. `drop_path_rate=0.0`, `dtype=jnp.bfloat16`,
    `head_init_scale=0.001` (fine-tuning), `depths=(1, 1, 1, 1)` for a small test model,
    `scan=False` (unrolled blocks) or `remat=False`.
    """
    entry = VARIANTS[canonical_name(variant)]
    return registry.build(ConvNeXt, entry, RECIPE_FIELDS, num_classes, overrides, "ConvNeXt")
