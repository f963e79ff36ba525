"""Import of pycls ViT state dicts (Xiao et al. 2021: pycls `models/vit.py` on its `vitconfigs`
branch) as Flax variables.

pycls's names: stem.patchify (patchify stem) or stem.cstem<i>_conv, stem.cstem<i>_bn,
stem.cstem_last_conv (convolutional stem); class_token (CLASSIFIER_TYPE 'token'); pos_embedding
(with an entry for the class token, as timm's); encoder.block_<i>.{ln_1,
self_attention.attn_proj, self_attention.out_proj, ln_2, mlp_block.linear_1,
mlp_block.linear_2}; encoder.ln; head.head_fc. The fused attn_proj (3 * width, width) holds
query, key and value in turn, each head after head, as timm's qkv. pycls's CLASSIFIER_TYPE
'token' is pool='token', 'pooled' (the mean after the final LayerNorm) is pool='gap'. The conv
stem's BatchNorm running statistics become `batch_stats`. A pycls checkpoint (`.pyth`) holds
the state dict under 'model_state'.
"""

from collections.abc import Mapping

import numpy as np

from modeling.weight_import import Rule, conv_kernel, import_tree
from vit.model import ViT, abstract_variables, stack_blocks
from vit.posemb import fit_checkpoint_grid
from vit.timm_import import _attention, _dense, _norm
from vit.variants import canonical_name, create

_PARAMS = ("params",)


def _conv(ours: tuple[str, ...], theirs: str, bias: bool) -> list[Rule]:
    rules = [Rule((*_PARAMS, *ours, "kernel"), f"{theirs}.weight", conv_kernel)]
    return rules + ([Rule((*_PARAMS, *ours, "bias"), f"{theirs}.bias")] if bias else [])


def _batch_norm(ours: tuple[str, ...], theirs: str) -> list[Rule]:
    return _norm((*_PARAMS, *ours), theirs) + [
        Rule(("batch_stats", *ours, "mean"), f"{theirs}.running_mean"),
        Rule(("batch_stats", *ours, "var"), f"{theirs}.running_var"),
    ]


def _stem_rules(model: ViT) -> list[Rule]:
    if model.stem == "patchify":
        return _conv(("embedding",), "stem.patchify", bias=True)
    rules = []
    for i in range(len(model.conv_stem_widths)):
        rules += _conv(("stem", f"conv{i}"), f"stem.cstem{i}_conv", bias=False)
        rules += _batch_norm(("stem", f"bn{i}"), f"stem.cstem{i}_bn")
    return rules + _conv(("stem", "embedding"), "stem.cstem_last_conv", bias=True)


def _rules(model: ViT) -> list[Rule]:
    rules = _stem_rules(model) + [Rule((*_PARAMS, "pos_embedding"), "pos_embedding")]
    if model.pool == "token":
        rules.append(Rule((*_PARAMS, "cls"), "class_token"))
    for i in range(model.depth):
        ours, theirs = (*_PARAMS, f"block_{i}"), f"encoder.block_{i}"
        qkv = [(f"{theirs}.self_attention.attn_proj", part, 3) for part in range(3)]
        rules += _norm((*ours, "norm1"), f"{theirs}.ln_1")
        rules += _attention(
            (*ours, "attention"), model.num_heads, qkv, f"{theirs}.self_attention.out_proj"
        )
        rules += _norm((*ours, "norm2"), f"{theirs}.ln_2")
        rules += _dense((*ours, "mlp", "fc1"), f"{theirs}.mlp_block.linear_1")
        rules += _dense((*ours, "mlp", "fc2"), f"{theirs}.mlp_block.linear_2")
    rules += _norm((*_PARAMS, "encoder_norm"), "encoder.ln")
    return rules + _dense((*_PARAMS, "head"), "head.head_fc")


def _check_structure(model: ViT, name: str) -> None:
    """pycls's ViT has learned position embeddings, a class token with its own position entry
    or mean pooling, and no pre-logits layer."""
    if model.pool not in ("token", "gap"):
        raise ValueError(
            f"pycls's ViT pools with a class token or a mean (pool='token' or 'gap'), not "
            f"pool={model.pool!r}; {name} cannot be imported from it that way."
        )
    token_without_entry = model.pool == "token" and not model.class_token_posemb
    if model.posemb != "learn" or token_without_entry or model.representation_size:
        raise ValueError(
            "pycls's ViT has learned position embeddings with a class-token entry and no "
            "pre-logits layer; keep posemb='learn', class_token_posemb=True and "
            "representation_size=0."
        )


def variables_from_pycls(
    state_dict: Mapping[str, np.ndarray],
    variant: str,
    *,
    resolution: int | tuple[int, int] | None = None,
    interpolation: str = "bilinear",
    **overrides,
) -> dict[str, dict]:
    """Converts a pycls ViT state dict (names -> numpy arrays) into the variables of `variant`
    (e.g. 'P-4GF', 'C-4GF').

    Returns {'params': ...}, plus {'batch_stats': ...} (the BatchNorm running mean and
    variance) for the convolutional stem. `overrides` are ViT fields for non-standard sizes or
    structure (`depth=...`, `pool='gap'` for CLASSIFIER_TYPE 'pooled'; `scan=True` returns the
    stacked layout). The number of classes is read from `head.head_fc.weight`. `resolution`
    and `interpolation` resample the learned position embedding as in `vit.from_timm`. Raises
    `weight_import.CheckpointMismatchError` listing every missing, unexpected or mis-shaped key.
    """
    name = canonical_name(variant)
    state_dict = dict(state_dict)
    num_classes = np.shape(state_dict.get("head.head_fc.weight", np.zeros((1000, 0))))[0]
    model = create(name, num_classes=num_classes, **{**overrides, "scan": False})
    _check_structure(model, name)
    grid = fit_checkpoint_grid(
        state_dict, "pos_embedding", "class_token", model, resolution, interpolation
    )
    variables = import_tree(
        state_dict,
        _rules(model),
        abstract_variables(model, grid),
        what=f"pycls ViT-{name}",
        ignore=lambda key: key.endswith(".num_batches_tracked"),
    )
    if overrides.get("scan"):
        variables["params"] = stack_blocks(variables["params"])
    return variables


def from_pycls(state_dict: Mapping[str, np.ndarray], variant: str, **kwargs) -> dict:
    """The params of `variables_from_pycls`, for the patchify stem. The convolutional stem
    also needs its BatchNorm statistics, which params alone would silently lose: for it this
    raises and names `variables_from_pycls`."""
    variables = variables_from_pycls(state_dict, variant, **kwargs)
    if "batch_stats" in variables:
        raise ValueError(
            f"{variant!r} keeps BatchNorm running statistics besides its params; use "
            "vit.variables_from_pycls(...) to import both."
        )
    return variables["params"]
