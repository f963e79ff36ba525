"""Vision Transformers with patchify or convolutional stems (Dosovitskiy et al. 2021;
Xiao et al. 2021) at the big_vision sizes (Zhai et al. 2022), in Flax.

MACs follow the project convention (docs/reference-numbers.md): one per multiply-accumulate of a
convolution or matrix product, attention's two batched matmuls included, bias adds, norms and
activations not counted (timm's convention). pycls, and so Xiao et al.'s Table 1, count
"flops" as these MACs plus one per bias add, about 0.1% more.
"""

from vit.big_vision_import import from_big_vision
from vit.model import ViT, stack_blocks, unstack_blocks
from vit.posemb import adapt_to_resolution
from vit.pycls_import import from_pycls, variables_from_pycls
from vit.timm_import import from_timm
from vit.variants import BIG_VISION_NUMERICS, VARIANTS, canonical_name, create

__all__ = [
    "BIG_VISION_NUMERICS",
    "VARIANTS",
    "ViT",
    "adapt_to_resolution",
    "canonical_name",
    "create",
    "from_big_vision",
    "from_pycls",
    "from_timm",
    "stack_blocks",
    "unstack_blocks",
    "variables_from_pycls",
]
