"""Import of timm NFNet state dicts (`dm_nfnet_f*`, `nfnet_f*`) as Flax params.

timm's `dm_nfnet_*` holds DeepMind's released weights converted to PyTorch; its names:
stem.conv{1..4}, stages.S.B.{conv1, conv2, conv2b, conv3, downsample.conv, attn_last.fc1/fc2,
skipinit_gain}, final_conv, head.fc. Run the imported model with `**TIMM_NUMERICS` to reproduce
timm's outputs (exact GELU, timm's weight-standardization eps); the reference numerics differ
from timm's by about 1e-3 relative in the logits.

timm's `nfnet_f*` (no "dm_") has the same tensors without `skipinit_gain`; its skip gains are
then set to 1. That model pads symmetrically and folds the activation gamma into the conv
weights, so its outputs differ from this architecture's even with identical tensors.
"""

from collections.abc import Mapping

import numpy as np

from modeling import block_stack
from modeling.macs import abstract_variables
from modeling.weight_import import Rule, conv_kernel, flatten, import_tree, linear_kernel
from nfnets.model import NFNet
from nfnets.variants import canonical_name, create

_OURS_TO_TIMM_CONV = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3"}


def _ws_conv(path: tuple[str, ...], key: str) -> list[Rule]:
    return [
        Rule((*path, "kernel"), f"{key}.weight", conv_kernel),
        Rule((*path, "gain"), f"{key}.gain", flatten),
        Rule((*path, "bias"), f"{key}.bias"),
    ]


def _rules(model: NFNet, has_projection: dict[str, bool]) -> list[Rule]:
    rules = []
    for i in range(len(model.stem_widths) + 1):
        rules += _ws_conv((f"stem_conv{i}",), f"stem.conv{i + 1}")
    for stage, depth in enumerate(model.depths):
        for b in range(depth):
            ours, theirs = f"stage{stage}_block{b}", f"stages.{stage}.{b}"
            for conv, timm_conv in _OURS_TO_TIMM_CONV.items():
                rules += _ws_conv((ours, conv), f"{theirs}.{timm_conv}")
            if has_projection[ours]:
                rules += _ws_conv((ours, "conv_shortcut"), f"{theirs}.downsample.conv")
            for fc in ("fc0", "fc1"):
                timm_fc = f"{theirs}.attn_last.fc{int(fc[-1]) + 1}"
                rules += [
                    Rule((ours, "se", fc, "kernel"), f"{timm_fc}.weight", linear_kernel),
                    Rule((ours, "se", fc, "bias"), f"{timm_fc}.bias"),
                ]
            rules.append(Rule((ours, "skip_gain"), f"{theirs}.skipinit_gain", np.squeeze))
    rules += _ws_conv(("final_conv",), "final_conv")
    rules += [
        Rule(("head", "kernel"), "head.fc.weight", linear_kernel),
        Rule(("head", "bias"), "head.fc.bias"),
    ]
    return rules


def from_timm(state_dict: Mapping[str, np.ndarray], variant: str, **overrides) -> dict:
    """Converts a timm NFNet state dict (names -> numpy arrays) into params of `variant`, laid
    out for `create(variant, **overrides)` (scanned or unrolled blocks).

    The number of classes is read from `head.fc.weight`. Raises
    `weight_import.CheckpointMismatchError` listing every missing, unexpected or mis-shaped key.
    """
    name = canonical_name(variant)
    state_dict = dict(state_dict)
    num_classes = np.shape(state_dict.get("head.fc.weight", np.zeros((1000, 0))))[0]
    if not any(k.endswith("skipinit_gain") for k in state_dict):  # timm's nfnet_f*
        for key in {".".join(k.split(".")[:3]) for k in state_dict if k.startswith("stages.")}:
            state_dict[f"{key}.skipinit_gain"] = np.ones((), np.float32)
    model = create(name, num_classes=num_classes, **{**overrides, "scan": False})
    expected = abstract_variables(model, resolution=32)["params"]
    has_projection = {k: "conv_shortcut" in v for k, v in expected.items() if "_block" in k}
    params = import_tree(
        state_dict, _rules(model, has_projection), expected, what=f"NFNet-{name}"
    )
    scan = create(name, num_classes=num_classes, **overrides).scan
    return block_stack.stage_layout({"params": params}, scan)["params"]

