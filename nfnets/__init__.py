"""NFNet-F models (Brock et al. 2021; Smith et al. 2023) in Flax."""

from nfnets.model import NFNet
from nfnets.timm_import import from_timm
from nfnets.variants import TIMM_NUMERICS, VARIANTS, canonical_name, create

__all__ = ["NFNet", "TIMM_NUMERICS", "VARIANTS", "canonical_name", "create", "from_timm"]
