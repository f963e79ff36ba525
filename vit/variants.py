"""The ViT variant table and `create()`.

Two families of names:
  - Xiao et al. 2021, Table 1: 'P-1GF', 'P-4GF', 'P-18GF', 'P-36GF' (patchify stem) and
    'C-1GF' ... 'C-36GF' (convolutional stem, one block fewer), as built by pycls.
  - big_vision sizes (Zhai et al. 2022, Table 2) with any patch size: 'Ti/16', 'B/16', 'g/14',
    'So400m/14', 'B/7', ... The table lists every size at patch sizes 8, 14, 16 and 32; other
    patch sizes are derived on lookup. Their defaults are those of the original ViT and of timm
    (class token with its own position entry, exact GELU, LayerNorm epsilon 1e-6), so that
    parameter counts equal timm's `vit_*` models.
Each entry holds the ViT module's fields plus `resolution`, the image size (px) that the
reference parameter and MAC counts refer to, which `create()` does not pass to the module.
"""

import re

from flax import linen as nn

from modeling import registry
from vit.model import ViT

# big_vision `decode_variant` (Zhai et al. 2022, Table 2): width, depth, MLP dim, heads.
SIZES = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),  # Alabdulmohsin et al. 2023 (shape-optimized).
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
TABLED_PATCH_SIZES = (8, 14, 16, 32)

# Xiao et al. 2021, Table 1: width, MLP ratio, heads, blocks of ViT_P; ViT_C has one block
# fewer to keep flops equal.
_XIAO = {
    "1GF": (192, 3, 3, 12),
    "4GF": (384, 3, 6, 12),
    "18GF": (768, 4, 12, 12),
    "36GF": (1024, 4, 16, 14),
}
# Xiao et al. 2021, Section 3 / Table 1 notes: 3x3 conv widths and strides of the C stems
# (then a 1x1 conv to the model width). The strides multiply to 16, the P stems' patch size.
_CONV_STEMS = {
    "1GF": ((24, 48, 96, 192), (2, 2, 2, 2)),
    "4GF": ((48, 96, 192, 384), (2, 2, 2, 2)),
    "18GF": ((64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2)),
    "36GF": ((64, 128, 128, 256, 256, 512), (2, 2, 1, 2, 1, 2)),
}


def _xiao_variant(size: str, stem: str) -> dict:
    width, mlp_ratio, heads, blocks = _XIAO[size]
    conv = dict(
        stem="conv", conv_stem_widths=_CONV_STEMS[size][0], conv_stem_strides=_CONV_STEMS[size][1]
    )
    return dict(
        width=width,
        depth=blocks - (stem == "C"),
        mlp_dim=width * mlp_ratio,
        num_heads=heads,
        patch_size=16,
        **(conv if stem == "C" else {}),
        pool="token",  # pycls CLASSIFIER_TYPE 'token'; the class token has a position entry.
        # LayerNorm epsilon: the model's default, vit.layers.LAYER_NORM_EPS (1e-6), pycls's
        # LN.EPS in every config of Xiao et al.
        resolution=224,
    )


def _size_variant(size: str, patch_size: int) -> dict:
    width, depth, mlp_dim, heads = SIZES[size]
    return dict(
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        num_heads=heads,
        patch_size=patch_size,
        resolution=224,
    )


_SIZE_NAME = re.compile(r"^(?P<size>[A-Za-z0-9]+?)/(?P<patch>[1-9][0-9]*)$")


class VariantTable(dict):
    """A dict of variant name -> hyper-parameters in which a big_vision size at a patch size
    that is not tabled ('B/7') is derived on lookup (and not stored)."""

    def __missing__(self, name: str) -> dict:
        match = _SIZE_NAME.match(name)
        if match and match["size"] in SIZES:
            return _size_variant(match["size"], int(match["patch"]))
        raise KeyError(name)


VARIANTS: dict[str, dict] = VariantTable(
    {
        **{f"{s}-{size}": _xiao_variant(size, s) for s in ("P", "C") for size in _XIAO},
        **{f"{s}/{p}": _size_variant(s, p) for s in SIZES for p in TABLED_PATCH_SIZES},
        # Tiny models with every structural feature of the real ones, for tests.
        "P-tiny": dict(width=32, depth=2, mlp_dim=96, num_heads=4, patch_size=4, resolution=16),
        "C-tiny": dict(
            width=32,
            depth=2,
            mlp_dim=96,
            num_heads=4,
            patch_size=4,
            stem="conv",
            conv_stem_widths=(8, 16),
            conv_stem_strides=(2, 2),
            resolution=16,
        ),
    }
)

# Entries of a variant that describe its reference setting rather than the network.
RECIPE_FIELDS = ("resolution",)

# Overrides that make the model compute what big_vision's ViT computes (flax's tanh GELU).
# The defaults compute what timm's and pycls's ViTs compute.
BIG_VISION_NUMERICS = dict(activation="gelu_tanh")

# timm model-name words for the sizes ('vit_base_patch16_224' -> 'B/16').
_TIMM_SIZES = {
    "tiny": "Ti",
    "small": "S",
    "medium": "M",
    "base": "B",
    "large": "L",
    "so400m": "So400m",
    "huge": "H",
    "giant": "g",
    "gigantic": "G",
}


def canonical_name(variant: str) -> str:
    """Resolves the accepted spellings of a variant name:

    - Xiao et al.: 'P-4GF', 'ViT_P-4GF', 'p_4gf', 'vit_c4gf' -> 'P-4GF' / 'C-4GF';
    - big_vision sizes: 'B/16', 'vit_B/16', 'B16', 'b16', 'vit_b16', 'So400m/14', 'so400m14'
      -> 'B/16', 'So400m/14'; also timm's names, e.g. 'vit_base_patch16_224' -> 'B/16'.
      Lower-case 'g' is giant ('g/14'); gigantic needs a capital ('G/14', 'vit_G14') or timm's
      word ('vit_gigantic_patch14_224');
    - the test models 'P-tiny' and 'C-tiny'.
    """
    name = re.sub(r"^vit[_-]", "", variant.strip(), flags=re.IGNORECASE)
    if match := re.fullmatch(r"([PC])[-_]?(\d+GF|tiny)", name, flags=re.IGNORECASE):
        candidate = f"{match[1].upper()}-{match[2].upper().replace('TINY', 'tiny')}"
        if candidate in VARIANTS:
            return candidate
    if match := re.fullmatch(r"([a-z0-9]+)_patch(\d+)(_.*)?", name.lower()):
        if match[1] in _TIMM_SIZES:
            return f"{_TIMM_SIZES[match[1]]}/{int(match[2])}"
    if match := re.fullmatch(r"([A-Za-z]+?|So400m|so400m)[/_-]?(\d+)", name):
        size = match[1]
        if size not in SIZES:  # Case-insensitive fallback: 'b' -> 'B', 'ti' -> 'Ti'.
            size = {s.lower(): s for s in SIZES if s != "G"}.get(size.lower(), size)
        if size in SIZES and int(match[2]) > 0:
            return f"{size}/{int(match[2])}"
    xiao = [k for k in VARIANTS if "/" not in k]
    raise ValueError(
        f"Unknown ViT variant {variant!r}; choose one of {xiao} or a size of {list(SIZES)} "
        f"with a patch size, e.g. 'B/16'."
    )


def create(variant: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Builds the ViT `variant` (e.g. 'C-4GF', 'B/16', 'g/14') with optional field overrides.

    Overrides are ViT module fields, e.g. `pool='map'`, `posemb='sincos2d'`, `scan=True`,
    `remat=True`, `stochastic_depth=0.1`, `dtype=jnp.bfloat16`, `**BIG_VISION_NUMERICS`.
    """
    entry = VARIANTS[canonical_name(variant)]
    return registry.build(ViT, entry, RECIPE_FIELDS, num_classes, overrides, "ViT")
