"""ConvNeXt (Liu et al. 2022) and its roadmap from ResNet-50, one configurable Flax network."""

from convnext.model import ConvNeXt
from convnext.roadmap import PAPER_FIGURES, ROADMAP
from convnext.timm_import import from_timm, variables_from_timm
from convnext.variants import VARIANTS, canonical_name, create

__all__ = [
    "PAPER_FIGURES",
    "ROADMAP",
    "VARIANTS",
    "ConvNeXt",
    "canonical_name",
    "create",
    "from_timm",
    "variables_from_timm",
]
