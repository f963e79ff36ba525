"""The paper's roadmap from ResNet-50 to ConvNeXt-T (Liu et al. 2022, Section 2, Figure 2 and
Table 10) as data: each step is the complete set of `ConvNeXt` module fields, built from the
step it modifies. Build one with `convnext.create('roadmap_<step>')`.

Choices the paper leaves open, made here so that the first step is exactly ResNet-50 and the
last exactly ConvNeXt-T (override any of them through `create`):
- "patchify stem" replaces the whole ResNet stem cell (conv, BN, ReLU, max-pool) by one 4x4 s4
  conv; its norm arrives with the last step, which adds "one [LN] after the stem".
- Downsampling stays in the first block of a stage until the last step, on the spatial conv:
  after "move up depthwise conv" the strided conv is the depthwise one, so both 1x1 convs of
  a stage's first block run at the reduced resolution (hence the drop to 4.07 GMACs).
- A projection shortcut keeps its norm in every step; "fewer norms" removes two of the three
  norms of the residual branch, as the paper says.
- Layer scale (1e-6) arrives with the last step; the paper names no step for it. Pass
  `layer_scale_init=1e-6` to add it to any step.
- Initialization: ResNet-50 keeps ResNet's (He normal, zero-initialized last BN of each block,
  as timm's `resnet50`); from the next step on, ConvNeXt's trunc-normal(0.02) (the paper does
  not state the initialization of the intermediate steps). Pass `weight_init` to change it.
- Stochastic depth 0.1 (ConvNeXt-T's rate, Appendix A.1) for every step.
"""

from types import MappingProxyType

# ResNet-50 (He et al. 2016) in the module's terms: widths are the bottleneck outputs (4x the
# 64, 128, 256, 512 of the 3x3 convs), the stride sits on the 3x3 conv (torchvision / timm).
_RESNET50 = dict(
    depths=(3, 4, 6, 3),
    widths=(256, 512, 1024, 2048),
    stem="resnet",
    stem_width=64,
    stem_norm=True,
    spatial_conv="middle",
    depthwise=False,
    kernel_size=3,
    hidden_ratio=0.25,
    activation="relu",
    activations="all",
    norm="batch",
    norms="all",
    downsampling="block",
    head_norm=False,
    layer_scale_init=None,
    drop_path_rate=0.1,
    head_init_scale=1.0,
    weight_init="resnet",
)

_WIDTHS_96 = (96, 192, 384, 768)  # Swin-T's widths (Section 2.3)

# (step, the step it modifies, the change), in the order of Figure 2 / Table 10.
_STEPS = (
    ("resnet50", None, _RESNET50),
    # Section 2.2: Swin-T's 1:1:3:1 stage compute ratio.
    ("stage_ratio", "resnet50", dict(depths=(3, 3, 9, 3), weight_init="convnext")),
    # Section 2.2: 4x4 s4 non-overlapping conv, as a ViT patch embedding.
    ("patchify_stem", "stage_ratio", dict(stem="patchify", stem_norm=False)),
    # Section 2.3: depthwise 3x3 conv (grouped conv with one channel per group).
    ("depthwise", "patchify_stem", dict(depthwise=True)),
    # Section 2.3: width 64 -> 96 (the 3x3 convs' width; stage outputs 4x that).
    ("width_96", "depthwise", dict(widths=tuple(4 * w for w in _WIDTHS_96), stem_width=96)),
    # Section 2.4, Figure 3 (a) -> (b): the 1x1 convs widen 4x instead of narrowing 4x.
    # The stem's 96 channels now equal the first stage's width (stem_width None).
    (
        "inverted_bottleneck",
        "width_96",
        dict(widths=_WIDTHS_96, hidden_ratio=4.0, stem_width=None),
    ),
    # Section 2.5, Figure 3 (b) -> (c): the depthwise conv first, before the 1x1 convs.
    ("move_up_depthwise", "inverted_bottleneck", dict(spatial_conv="first")),
    # Section 2.5: kernel sizes 5 to 11; 7 is kept.
    ("kernel_5", "move_up_depthwise", dict(kernel_size=5)),
    ("kernel_7", "move_up_depthwise", dict(kernel_size=7)),
    ("kernel_9", "move_up_depthwise", dict(kernel_size=9)),
    ("kernel_11", "move_up_depthwise", dict(kernel_size=11)),
    # Section 2.6, micro design.
    ("gelu", "kernel_7", dict(activation="gelu")),
    ("fewer_activations", "gelu", dict(activations="one")),
    ("fewer_norms", "fewer_activations", dict(norms="one")),
    ("layer_norm", "fewer_norms", dict(norm="layer")),
    # LN + 2x2 s2 conv between stages, plus LNs after the stem and after the final pooling;
    # the result is ConvNeXt-T.
    (
        "separate_downsampling",
        "layer_norm",
        dict(downsampling="separate", stem_norm=True, head_norm=True, layer_scale_init=1e-6),
    ),
)


def _build() -> dict[str, MappingProxyType]:
    steps: dict[str, dict] = {}
    for name, parent, change in _STEPS:
        steps[name] = {**(steps[parent] if parent else {}), **change}
    return {name: MappingProxyType(fields) for name, fields in steps.items()}


# Step name -> the full, read-only set of module fields, in roadmap order.
ROADMAP: dict[str, MappingProxyType] = _build()

# Liu et al. 2022, Table 10: GFLOPs (multiply-accumulates, in billions, at 224 px) and
# ImageNet-1k top-1 (%, 300 epochs) of each step.
PAPER_FIGURES: dict[str, tuple[float, float]] = {
    "resnet50": (4.09, 78.82),
    "stage_ratio": (4.53, 79.36),
    "patchify_stem": (4.42, 79.51),
    "depthwise": (2.35, 78.28),
    "width_96": (5.27, 80.50),
    "inverted_bottleneck": (4.64, 80.64),
    "move_up_depthwise": (4.07, 79.92),
    "kernel_5": (4.10, 80.35),
    "kernel_7": (4.15, 80.57),
    "kernel_9": (4.21, 80.57),
    "kernel_11": (4.29, 80.47),
    "gelu": (4.15, 80.62),
    "fewer_activations": (4.15, 81.27),
    "fewer_norms": (4.15, 81.41),
    "layer_norm": (4.15, 81.47),
    "separate_downsampling": (4.49, 81.97),
}
