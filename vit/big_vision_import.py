"""Import of big_vision ViT checkpoints (`.npz`) as Flax params.

big_vision's `models/vit.py` parameter tree, flattened with '/' in its `.npz` files:
  embedding/{kernel (p, p, 3, width), bias}
  pos_embedding (1, rows * cols, width)                              posemb 'learn'
  cls (1, 1, width)                                                  pool_type 'tok'
  Transformer/encoderblock_<i>/LayerNorm_0, MultiHeadDotProductAttention_0/{query, key, value,
      out}, LayerNorm_1, MlpBlock_0/Dense_0, MlpBlock_0/Dense_1      (scan=True models store
      Transformer/encoderblock/... with a leading depth axis instead)
  Transformer/encoder_norm
  MAPHead_0/probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0/Dense_{0,1}
                                                                     pool_type 'map'
  pre_logits/{kernel, bias}                                          rep_size
  head/{kernel, bias}
Kernels have the same layouts as ours, so the import only renames. Checkpoints of a whole
training state hold the tree under 'params/' (or 'opt/target/' in old ones), two-tower models
under 'params/img/'; entries outside the ViT's subtree are ignored. big_vision's pool_type
'tok' / 'gap' / 'map' is pool='token' / 'gap' / 'map'.

big_vision adds the position embedding before concatenating the class token. Imported into a
model whose class token has its own position entry (class_token_posemb=True, the default), that
entry is set to zero, which computes the same function; old checkpoints that hold a class entry
are folded into `cls` for class_token_posemb=False, as big_vision's `fix_old_checkpoints` does.
Run the model with `**vit.BIG_VISION_NUMERICS` to reproduce big_vision's outputs (tanh GELU).
"""

import math
from collections.abc import Mapping

import numpy as np

from modeling.weight_import import Rule, import_tree
from vit.model import ViT, abstract_params, stack_blocks
from vit.posemb import fit_checkpoint_grid
from vit.variants import canonical_name, create

_NORM = ("scale", "bias")
_DENSE = ("kernel", "bias")
_ATTENTION = tuple(f"{p}/{leaf}" for p in ("query", "key", "value", "out") for leaf in _DENSE)
# Our module path -> big_vision's, and the leaves, inside an encoder block and the MAP head.
_BLOCK = {
    "norm1": ("LayerNorm_0", _NORM),
    "attention": ("MultiHeadDotProductAttention_0", _ATTENTION),
    "norm2": ("LayerNorm_1", _NORM),
    "mlp/fc1": ("MlpBlock_0/Dense_0", _DENSE),
    "mlp/fc2": ("MlpBlock_0/Dense_1", _DENSE),
}
_MAP_HEAD = {
    "attention": ("MultiHeadDotProductAttention_0", _ATTENTION),
    "norm": ("LayerNorm_0", _NORM),
    "mlp/fc1": ("MlpBlock_0/Dense_0", _DENSE),
    "mlp/fc2": ("MlpBlock_0/Dense_1", _DENSE),
}


def _module(ours: str, theirs: str, leaves: tuple[str, ...]) -> list[Rule]:
    return [Rule((*ours.split("/"), *leaf.split("/")), f"{theirs}/{leaf}") for leaf in leaves]


def _rules(model: ViT) -> list[Rule]:
    rules = _module("embedding", "embedding", _DENSE)
    if model.posemb == "learn":
        rules.append(Rule(("pos_embedding",), "pos_embedding"))
    if model.pool == "token":
        rules.append(Rule(("cls",), "cls"))
    for i in range(model.depth):
        for ours, (theirs, leaves) in _BLOCK.items():
            rules += _module(f"block_{i}/{ours}", f"Transformer/encoderblock_{i}/{theirs}", leaves)
    rules += _module("encoder_norm", "Transformer/encoder_norm", _NORM)
    if model.pool == "map":
        rules.append(Rule(("map_head", "probe"), "MAPHead_0/probe"))
        for ours, (theirs, leaves) in _MAP_HEAD.items():
            rules += _module(f"map_head/{ours}", f"MAPHead_0/{theirs}", leaves)
    if model.representation_size:
        rules += _module("pre_logits", "pre_logits", _DENSE)
    return rules + _module("head", "head", _DENSE)


def _params_subtree(npz_mapping: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ViT's entries, without the prefix they have inside a larger tree ('params/',
    'opt/target/', a two-tower model's 'params/img/'); found from the one 'embedding/kernel'."""
    roots = [k[: -len("embedding/kernel")] for k in npz_mapping if k.endswith("embedding/kernel")]
    prefix = roots[0] if len(roots) == 1 else ""
    return {k[len(prefix) :]: np.asarray(v) for k, v in npz_mapping.items() if k.startswith(prefix)}


def _unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """'Transformer/encoderblock/...' (depth-stacked) -> 'Transformer/encoderblock_<i>/...'."""
    out = {}
    for key, value in flat.items():
        if key.startswith("Transformer/encoderblock/"):
            rest = key[len("Transformer/encoderblock/") :]
            for i, layer in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{rest}"] = layer
        else:
            out[key] = value
    return out


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def _match_class_entry(flat: dict[str, np.ndarray], model: ViT) -> dict[str, np.ndarray]:
    """Gives the position embedding a class entry exactly when the model has one (see above)."""
    if model.pool != "token" or "pos_embedding" not in flat or "cls" not in flat:
        return flat
    pe = flat["pos_embedding"]
    has_entry = not _is_square(pe.shape[1]) and _is_square(pe.shape[1] - 1)
    if model.pos_embedding_prefix and not has_entry:
        pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
        return {**flat, "pos_embedding": pe}
    if not model.pos_embedding_prefix and has_entry:
        return {**flat, "cls": flat["cls"] + pe[:, :1], "pos_embedding": pe[:, 1:]}
    return flat


def from_big_vision(
    npz_mapping: Mapping[str, np.ndarray],
    variant: str,
    *,
    resolution: int | tuple[int, int] | None = None,
    interpolation: str = "bilinear",
    **overrides,
) -> dict:
    """Converts a big_vision ViT checkpoint (e.g. `np.load('vit.npz')`) into params of `variant`.

    `overrides` are the ViT fields that describe the checkpoint's structure (`pool`, `posemb`,
    `representation_size`; `scan=True` returns the stacked layout). The number of classes is
    read from `head/kernel`. `resolution` and `interpolation` resample the learned position
    embedding as in `vit.from_timm`. Raises `weight_import.CheckpointMismatchError` listing
    every missing, unexpected or mis-shaped key.
    """
    name = canonical_name(variant)
    flat = _unstack_scanned(_params_subtree(npz_mapping))
    num_classes = np.shape(flat.get("head/kernel", np.zeros((0, 1000))))[-1]
    model = create(name, num_classes=num_classes, **{**overrides, "scan": False})
    if model.stem != "patchify":
        raise ValueError(
            f"big_vision has no convolutional-stem ViT; {name} cannot be imported from it."
        )
    flat = _match_class_entry(flat, model)
    grid = fit_checkpoint_grid(flat, "pos_embedding", "cls", model, resolution, interpolation)
    expected = abstract_params(model, grid)
    params = import_tree(flat, _rules(model), expected, what=f"big_vision ViT-{name}")
    return stack_blocks(params) if overrides.get("scan") else params
