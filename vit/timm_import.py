"""Import of timm `VisionTransformer` state dicts (`vit_*`) as Flax params.

timm's names: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}, norm, head, and for global_pool='map' attn_pool.{latent, q, kv, proj,
norm, mlp.fc1, mlp.fc2}. The fused qkv projection (3 * width, width) is split into our query,
key and value kernels (width, heads, head_dim). The model reproduces timm's outputs with its
default numerics (exact GELU, LayerNorm epsilon 1e-6) when built with timm's structure:
  class_token=True, global_pool='token'                  -> pool='token' (the default)
  class_token=True, no_embed_class=True                  -> class_token_posemb=False
  class_token=False, global_pool='avg', fc_norm=False    -> pool='gap'
  class_token=False, global_pool='map'                   -> pool='map'
timm's global_pool='avg' with fc_norm=True normalizes after pooling, which this model does
not do; such checkpoints are reported as a mismatch (`fc_norm.*` unexpected, `norm.*` missing).
"""

from collections.abc import Mapping

import numpy as np

from modeling.weight_import import Rule, import_tree, linear_kernel
from vit.model import ViT, abstract_params, stack_blocks
from vit.posemb import fit_checkpoint_grid
from vit.variants import canonical_name, create


def _split_heads(num_heads: int, part: int, parts: int):
    """Rows `part` of `parts` of a fused (parts * width, width) weight -> (width, heads, d_h),
    or of a fused (parts * width,) bias -> (heads, d_h)."""

    def transform(w: np.ndarray) -> np.ndarray:
        w = np.split(w, parts, axis=0)[part]
        return w.T.reshape(w.shape[-1], num_heads, -1) if w.ndim == 2 else w.reshape(num_heads, -1)

    return transform


def _merge_heads(num_heads: int):
    """Output projection (width, heads * d_h) -> (heads, d_h, width)."""
    return lambda w: w.T.reshape(num_heads, -1, w.shape[0])


def _norm(path: tuple[str, ...], key: str) -> list[Rule]:
    return [Rule((*path, "scale"), f"{key}.weight"), Rule((*path, "bias"), f"{key}.bias")]


def _dense(path: tuple[str, ...], key: str) -> list[Rule]:
    return [
        Rule((*path, "kernel"), f"{key}.weight", linear_kernel),
        Rule((*path, "bias"), f"{key}.bias"),
    ]


def _attention(path: tuple[str, ...], heads: int, qkv: list[tuple[str, int, int]], proj: str):
    """`qkv` lists (timm key, part, parts) for query, key and value."""
    rules = []
    for name, (key, part, parts) in zip(("query", "key", "value"), qkv, strict=True):
        rules += [
            Rule((*path, name, "kernel"), f"{key}.weight", _split_heads(heads, part, parts)),
            Rule((*path, name, "bias"), f"{key}.bias", _split_heads(heads, part, parts)),
        ]
    return rules + [
        Rule((*path, "out", "kernel"), f"{proj}.weight", _merge_heads(heads)),
        Rule((*path, "out", "bias"), f"{proj}.bias"),
    ]


def _rules(model: ViT) -> list[Rule]:
    h = model.num_heads
    rules = [
        Rule(("embedding", "kernel"), "patch_embed.proj.weight", lambda w: w.transpose(2, 3, 1, 0)),
        Rule(("embedding", "bias"), "patch_embed.proj.bias"),
    ]
    if model.posemb == "learn":
        rules.append(Rule(("pos_embedding",), "pos_embed"))
    if model.pool == "token":
        rules.append(Rule(("cls",), "cls_token"))
    for i in range(model.depth):
        ours, theirs = f"block_{i}", f"blocks.{i}"
        qkv = [(f"{theirs}.attn.qkv", part, 3) for part in range(3)]
        rules += _norm((ours, "norm1"), f"{theirs}.norm1")
        rules += _attention((ours, "attention"), h, qkv, f"{theirs}.attn.proj")
        rules += _norm((ours, "norm2"), f"{theirs}.norm2")
        rules += _dense((ours, "mlp", "fc1"), f"{theirs}.mlp.fc1")
        rules += _dense((ours, "mlp", "fc2"), f"{theirs}.mlp.fc2")
    rules += _norm(("encoder_norm",), "norm")
    if model.pool == "map":
        qkv = [("attn_pool.q", 0, 1), ("attn_pool.kv", 0, 2), ("attn_pool.kv", 1, 2)]
        rules.append(Rule(("map_head", "probe"), "attn_pool.latent"))
        rules += _attention(("map_head", "attention"), h, qkv, "attn_pool.proj")
        rules += _norm(("map_head", "norm"), "attn_pool.norm")
        rules += _dense(("map_head", "mlp", "fc1"), "attn_pool.mlp.fc1")
        rules += _dense(("map_head", "mlp", "fc2"), "attn_pool.mlp.fc2")
    return rules + _dense(("head",), "head")


def from_timm(
    state_dict: Mapping[str, np.ndarray],
    variant: str,
    *,
    resolution: int | tuple[int, int] | None = None,
    interpolation: str = "bilinear",
    **overrides,
) -> dict:
    """Converts a timm ViT state dict (names -> numpy arrays) into params of `variant`.

    `overrides` are the ViT fields that describe the checkpoint's structure (`pool`,
    `class_token_posemb`, ...; `scan=True` returns the stacked layout). The number of classes is
    read from `head.weight`. With `resolution` (px, an int or (height, width)) the learned
    position embedding is resampled from the checkpoint's square grid to that resolution's grid
    (`interpolation`: 'bilinear' or 'bicubic', see `vit.posemb`); without it the checkpoint's
    (square) grid is kept. Raises `weight_import.CheckpointMismatchError` listing every missing,
    unexpected or mis-shaped key.
    """
    name = canonical_name(variant)
    state_dict = dict(state_dict)
    num_classes = np.shape(state_dict.get("head.weight", np.zeros((1000, 0))))[0]
    model = create(name, num_classes=num_classes, **{**overrides, "scan": False})
    if model.stem != "patchify":
        raise ValueError(f"timm has no convolutional-stem ViT; {name} cannot be imported from it.")
    if model.representation_size:
        raise ValueError(
            "timm's VisionTransformer has no pre-logits layer; set representation_size=0."
        )
    grid = fit_checkpoint_grid(
        state_dict, "pos_embed", "cls_token", model, resolution, interpolation
    )
    expected = abstract_params(model, grid)
    params = import_tree(state_dict, _rules(model), expected, what=f"ViT-{name}")
    return stack_blocks(params) if overrides.get("scan") else params
