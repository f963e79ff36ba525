"""Import of timm state dicts as Flax variables: timm's `convnext_*` for the ConvNeXt variants
(and the roadmap's last step, which is ConvNeXt-T), timm's `resnet50` for the roadmap's first.

timm's ConvNeXt names: stem.{0 conv, 1 norm}, stages.S.downsample.{0 norm, 1 conv},
stages.S.blocks.B.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}, head.{norm, fc}.
timm's ResNet names: conv1, bn1, layerS.B.{conv1, bn1, conv2, bn2, conv3, bn3, downsample.0,
downsample.1}, fc; BatchNorm running statistics become `batch_stats`.
"""

from collections.abc import Mapping

import numpy as np

from convnext.model import ConvNeXt
from convnext.variants import canonical_name, create
from modeling import block_stack
from modeling.macs import abstract_variables
from modeling.weight_import import Rule, conv_kernel, import_tree, linear_kernel

# The module fields that fix the tensors of each timm layout.
_CONVNEXT_LAYOUT = dict(
    stem="patchify",
    stem_norm=True,
    spatial_conv="first",
    depthwise=True,
    norm="layer",
    norms="one",
    downsampling="separate",
    head_norm=True,
)
_RESNET_LAYOUT = dict(
    stem="resnet",
    stem_norm=True,
    spatial_conv="middle",
    depthwise=False,
    norm="batch",
    norms="all",
    downsampling="block",
    head_norm=False,
    layer_scale_init=None,
)


def _layout(model: ConvNeXt) -> str | None:
    for name, fields in (("convnext", _CONVNEXT_LAYOUT), ("resnet", _RESNET_LAYOUT)):
        if all(getattr(model, k) == v for k, v in fields.items()):
            return name
    return None


def _norm(ours: tuple[str, ...], theirs: str, batch_stats: bool) -> list[Rule]:
    rules = [
        Rule(("params", *ours, "scale"), f"{theirs}.weight"),
        Rule(("params", *ours, "bias"), f"{theirs}.bias"),
    ]
    if batch_stats:
        rules += [
            Rule(("batch_stats", *ours, "mean"), f"{theirs}.running_mean"),
            Rule(("batch_stats", *ours, "var"), f"{theirs}.running_var"),
        ]
    return rules


def _conv(ours: tuple[str, ...], theirs: str, bias: bool, transform=conv_kernel) -> list[Rule]:
    rules = [Rule(("params", *ours, "kernel"), f"{theirs}.weight", transform)]
    if bias:
        rules.append(Rule(("params", *ours, "bias"), f"{theirs}.bias"))
    return rules


def _convnext_rules(model: ConvNeXt) -> list[Rule]:
    rules = _conv(("stem_conv",), "stem.0", bias=True) + _norm(("stem_norm",), "stem.1", False)
    for s, depth in enumerate(model.depths):
        if s > 0:
            down = f"stages.{s}.downsample"
            rules += _norm((f"stage{s}_downsample_norm",), f"{down}.0", False)
            rules += _conv((f"stage{s}_downsample_conv",), f"{down}.1", bias=True)
        for b in range(depth):
            ours, theirs = f"stage{s}_block{b}", f"stages.{s}.blocks.{b}"
            rules += _conv((ours, "conv1"), f"{theirs}.conv_dw", bias=True)
            rules += _norm((ours, "norm1"), f"{theirs}.norm", False)
            rules += _conv((ours, "conv2"), f"{theirs}.mlp.fc1", True, linear_kernel)
            rules += _conv((ours, "conv3"), f"{theirs}.mlp.fc2", True, linear_kernel)
            if model.layer_scale_init is not None:
                rules.append(Rule(("params", ours, "layer_scale"), f"{theirs}.gamma"))
    rules += _norm(("head_norm",), "head.norm", False)
    rules += _conv(("head",), "head.fc", True, linear_kernel)
    return rules


def _resnet_rules(model: ConvNeXt, has_projection: dict[str, bool]) -> list[Rule]:
    rules = _conv(("stem_conv",), "conv1", bias=False) + _norm(("stem_norm",), "bn1", True)
    for s, depth in enumerate(model.depths):
        for b in range(depth):
            ours, theirs = f"stage{s}_block{b}", f"layer{s + 1}.{b}"
            for i, transform in ((1, linear_kernel), (2, conv_kernel), (3, linear_kernel)):
                rules += _conv((ours, f"conv{i}"), f"{theirs}.conv{i}", False, transform)
                rules += _norm((ours, f"norm{i}"), f"{theirs}.bn{i}", True)
            if has_projection[ours]:
                down = f"{theirs}.downsample"
                rules += _conv((ours, "shortcut_conv"), f"{down}.0", False, linear_kernel)
                rules += _norm((ours, "shortcut_norm"), f"{down}.1", True)
    rules += _conv(("head",), "fc", True, linear_kernel)
    return rules


def variables_from_timm(
    state_dict: Mapping[str, np.ndarray], variant: str, **overrides
) -> dict[str, dict]:
    """Converts a timm state dict (names -> numpy arrays) into the variables of `variant`.

    Returns {'params': ...}, plus {'batch_stats': ...} (running mean and variance) for
    BatchNorm models. `overrides` are `create()` overrides for non-standard sizes, e.g.
    `depths=(1, 1, 1, 1)`; the variables come in the layout (scanned or unrolled blocks) of
    `create(variant, **overrides)`. The number of classes is read from the classifier. Raises
    `weight_import.CheckpointMismatchError` listing every missing, unexpected or mis-shaped key.
    """
    name = canonical_name(variant)
    head_key = "fc.weight" if "fc.weight" in state_dict else "head.fc.weight"
    num_classes = np.shape(state_dict.get(head_key, np.zeros((1000, 0))))[0]
    scan = create(name, num_classes=num_classes, **overrides).scan
    model = create(name, num_classes=num_classes, **{**overrides, "scan": False})
    layout = _layout(model)
    if layout is None:
        raise ValueError(
            f"timm has no model laid out as {name!r}; from_timm reads timm's convnext_* into "
            "the ConvNeXt variants and roadmap_separate_downsampling, and timm's resnet50 into "
            "roadmap_resnet50."
        )
    expected = abstract_variables(model, resolution=model.min_resolution)
    if layout == "convnext":
        rules = _convnext_rules(model)
    else:
        params = expected["params"]
        has_projection = {k: "shortcut_conv" in v for k, v in params.items() if "_block" in k}
        rules = _resnet_rules(model, has_projection)
    variables = import_tree(
        state_dict,
        rules,
        expected,
        what=f"ConvNeXt {name!r}",
        ignore=lambda key: key.endswith(".num_batches_tracked"),
    )
    return block_stack.stage_layout(variables, scan)


def from_timm(state_dict: Mapping[str, np.ndarray], variant: str, **overrides) -> dict:
    """The params of `variables_from_timm` (the family contract).

    A BatchNorm model (roadmap_resnet50) also needs its running statistics, which params alone
    would silently lose: for it this raises and names `variables_from_timm`.
    """
    variables = variables_from_timm(state_dict, variant, **overrides)
    if "batch_stats" in variables:
        raise ValueError(
            f"{variant!r} keeps BatchNorm running statistics besides its params; use "
            "convnext.variables_from_timm(...) to import both."
        )
    return variables["params"]
