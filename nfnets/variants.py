"""The NFNet variant table and `create()`.

Each entry holds plain hyper-parameters: the NFNet module's fields (depths, widths, ...)
plus the recipe figures that belong to the variant (resolutions, RandAugment), which
`create()` does not pass to the module.
"""

from flax import linen as nn

from modeling import block_stack, registry
from nfnets.model import NFNet

# Brock et al. 2021a, Table 1 / deepmind-research/nfnets `base.nfnet_params`.
_WIDTHS = (256, 512, 1536, 1536)
# The "+" variants are 1.5x wider in the first two stages (Brock et al. 2021a, Appendix; the
# released code's `nfnet_params` "F*+" entries), used by Smith et al. 2023 for F3+ and F7+.
_PLUS_WIDTHS = (384, 768, 2048, 2048)

_F_TABLE = {
    # name: depths, train px, test px, dropout, RandAugment (layers, magnitude)
    "F0": ((1, 2, 6, 3), 192, 256, 0.2, (4, 5)),
    "F1": ((2, 4, 12, 6), 224, 320, 0.3, (4, 10)),
    "F2": ((3, 6, 18, 9), 256, 352, 0.4, (4, 10)),
    "F3": ((4, 8, 24, 12), 320, 416, 0.4, (4, 15)),
    "F4": ((5, 10, 30, 15), 384, 512, 0.5, (4, 15)),
    "F5": ((6, 12, 36, 18), 416, 544, 0.5, (4, 15)),
    "F6": ((7, 14, 42, 21), 448, 576, 0.5, (4, 15)),
    "F7": ((8, 16, 48, 24), 480, 608, 0.5, (4, 15)),
}


def _f_variant(depths, train_px, test_px, dropout, randaugment, widths):
    return dict(
        depths=depths,
        widths=widths,
        dropout=dropout,
        stochastic_depth=0.25,  # ImageNet value of the released experiment config.
        # Scanned and rematerialised from F1 on, where that compiles faster and uses less
        # memory than unrolled blocks (README, compile time); F0 compiles faster unrolled.
        **block_stack.variant_layout(sum(depths) >= 24),
        train_resolution=train_px,
        test_resolution=test_px,
        randaugment=randaugment,
    )


VARIANTS: dict[str, dict] = {
    **{name: _f_variant(*row, widths=_WIDTHS) for name, row in _F_TABLE.items()},
    # "+" variants share depths and ImageNet settings with their base variant; Smith et al.
    # 2023 pre-train them on JFT at 224 px and evaluate at 256 px.
    **{f"{name}+": _f_variant(*row, widths=_PLUS_WIDTHS) for name, row in _F_TABLE.items()},
    # A few-hundred-thousand-parameter model with every structural feature of the real ones
    # (several blocks per stage, grouped convs, stride and width changes), for tests.
    "tiny": dict(
        depths=(1, 2, 2, 1),
        widths=(64, 96, 128, 128),
        stem_widths=(4, 8, 16),
        group_width=16,
        dropout=0.0,
        stochastic_depth=0.0,
        train_resolution=64,
        test_resolution=64,
        randaugment=(2, 5),
    ),
}

# Entries of a variant that describe its recipe rather than the network.
RECIPE_FIELDS = ("train_resolution", "test_resolution", "randaugment")

# Overrides that make the model compute exactly what timm's `dm_nfnet_*` port computes.
TIMM_NUMERICS = dict(activation="gelu_exact", weight_standardization="timm")


def canonical_name(variant: str) -> str:
    """'f3plus', 'F3+' and 'nfnet_f3plus' all name 'F3+'."""
    name = variant.strip().lower()
    for prefix in ("dm_nfnet_", "nfnet_", "nfnet-"):
        name = name.removeprefix(prefix)
    name = name.replace("plus", "+")
    name = name if name == "tiny" else name.upper()
    if name not in VARIANTS:
        raise ValueError(f"Unknown NFNet variant {variant!r}; choose one of {list(VARIANTS)}.")
    return name


def create(variant: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Builds the NFNet `variant` (e.g. 'F0', 'F7+', 'tiny') with optional field overrides.

    Overrides are NFNet module fields, e.g. `activation='relu'`, `stochastic_depth=0.1`,
    `dropout=0.0`, `dtype=jnp.bfloat16`, `bottleneck_rounding='none'`, `scan=False` (unrolled
    blocks), `remat=True`, or `**TIMM_NUMERICS`.
    """
    entry = VARIANTS[canonical_name(variant)]
    return registry.build(NFNet, entry, RECIPE_FIELDS, num_classes, overrides, "NFNet")
