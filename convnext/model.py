"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), a Flax port of facebookresearch/ConvNeXt,
written as ONE configurable network that also builds every step of the paper's roadmap from
ResNet-50 to ConvNeXt-T (Section 2, Figure 2, Table 10). The defaults are ConvNeXt's.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from convnext.layers import (
    ACTIVATIONS,
    INITS,
    NORMS,
    DropPath,
    activation,
    head_init,
    kernel_init,
    norm_layer,
)
from modeling import block_stack

Dtype = Any

STEMS = ("resnet", "patchify")
SPATIAL_CONV_POSITIONS = ("middle", "first")
COUNTS = ("all", "one")
DOWNSAMPLINGS = ("block", "separate")
# ResNet's stem (conv s2 + max-pool s2) and the patchify stem (s4) both reduce 4x.
STEM_STRIDE = 4


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Block i of n gets rate * i / (n - 1): ConvNeXt's torch.linspace(0, rate, n)."""
    if num_blocks == 1:
        return [0.0]
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]


class Block(nn.Module):
    """A residual block of any roadmap step: three convs, norms and activations as configured.

    spatial_conv='middle' (ResNet bottleneck, Fig. 3a/b): 1x1 -> kxk (strided) -> 1x1.
    spatial_conv='first' (Fig. 3c, ConvNeXt): kxk (strided) -> 1x1 -> 1x1.
    The 1x1 convs map to `hidden` channels and then to `features` channels; a 'middle' kxk conv
    works at `hidden` channels, a 'first' one at the input's. norms='all' puts a norm after every
    conv; norms='one' only after the kxk conv (Section 2.6, "fewer normalization layers").
    activations='all' is ResNet's act(norm1), act(norm2) and act(x + branch); activations='one'
    keeps only the activation between the two 1x1 convs (Section 2.6, "fewer activations").
    Then: out = shortcut + drop_path(layer_scale * branch). The shortcut is x, or when the
    stride or width changes a strided 1x1 conv + norm (ResNet's projection).
    A conv has a bias unless a BatchNorm follows it (BatchNorm cancels any bias).

    Called as `block(x, drop_rate, train)` and returns `(x, None)` (the pair `nn.scan` expects);
    drop_rate, this block's drop-path rate, is a Python float or a traced scalar, applied when
    `drop_path` (the network drops blocks) and training.
    """

    features: int
    hidden: int
    stride: int
    spatial_conv: str
    depthwise: bool
    kernel_size: int
    activation: str
    activations: str
    norm: str
    norms: str
    layer_scale_init: float | None
    drop_path: bool
    weight_init: str
    dtype: Dtype = jnp.float32
    batch_norm_axis_name: tuple[str, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate, train: bool) -> tuple[jax.Array, None]:
        act = activation(self.activation)
        has_norm = (True, True, True) if self.norms == "all" else (True, False, False)
        has_act = (True, True, False) if self.activations == "all" else (False, True, False)
        spatial_index = 0 if self.spatial_conv == "first" else 1
        width_in = x.shape[-1]
        widths = (
            (width_in, self.hidden, self.features)
            if self.spatial_conv == "first"
            else (self.hidden, self.hidden, self.features)
        )
        batch_norm = self.norm == "batch"

        out = x
        for i, (width, norm, act_here) in enumerate(zip(widths, has_norm, has_act, strict=True)):
            name = f"conv{i + 1}"
            if i == spatial_index:
                pad = self.kernel_size // 2
                out = nn.Conv(
                    width,
                    (self.kernel_size, self.kernel_size),
                    strides=self.stride,
                    padding=((pad, pad), (pad, pad)),
                    feature_group_count=out.shape[-1] if self.depthwise else 1,
                    use_bias=not (norm and batch_norm),
                    kernel_init=kernel_init(self.weight_init),
                    dtype=self.dtype,
                    name=name,
                )(out)
            else:  # A 1x1 conv is a linear map of the channels at each position.
                out = nn.Dense(
                    width,
                    use_bias=not (norm and batch_norm),
                    kernel_init=kernel_init(self.weight_init),
                    dtype=self.dtype,
                    name=name,
                )(out)
            if norm:
                # ResNet (timm's zero_init_last, Goyal et al. 2017): each residual branch
                # starts at zero through its last BatchNorm's scale.
                zero = self.weight_init == "resnet" and i == 2
                scale_init = nn.initializers.zeros if zero else nn.initializers.ones
                out = norm_layer(
                    self.norm,
                    train=train,
                    name=f"norm{i + 1}",
                    dtype=self.dtype,
                    scale_init=scale_init,
                    axis_name=self.batch_norm_axis_name,
                )(out)
            if act_here:
                out = act(out)

        if self.layer_scale_init is not None:  # Touvron et al. 2021 (CaiT); ConvNeXt's `gamma`.
            gamma = self.param(
                "layer_scale",
                nn.initializers.constant(self.layer_scale_init),
                (self.features,),
                jnp.float32,
            )
            out = out * gamma.astype(out.dtype)
        if train and self.drop_path:
            out = DropPath()(out, drop_rate)

        shortcut = x
        if self.stride > 1 or width_in != self.features:
            shortcut = nn.Dense(
                self.features,
                use_bias=not batch_norm,
                kernel_init=kernel_init(self.weight_init),
                dtype=self.dtype,
                name="shortcut_conv",
            )(x[:, :: self.stride, :: self.stride, :])  # a 1x1 conv with stride, no padding
            shortcut = norm_layer(self.norm, train=train, name="shortcut_norm", dtype=self.dtype,
                                  axis_name=self.batch_norm_axis_name)(
                shortcut
            )
        out = out + shortcut.astype(out.dtype)
        return (act(out) if self.activations == "all" else out), None


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {field} {value!r}; choose one of {sorted(choices)}.")


class ConvNeXt(nn.Module):
    """Stem -> four stages of residual blocks -> global average pool -> [norm] -> linear.

    With the defaults this is ConvNeXt (Liu et al. 2022, Section 3): 4x4 s4 patchify stem + LN;
    stages of blocks `7x7 depthwise conv -> LN (eps 1e-6) -> 1x1 to 4x -> GELU -> 1x1 ->
    layer scale (init 1e-6) -> drop path -> + x`; between stages LN + 2x2 s2 conv; head
    mean(H, W) -> LN -> linear. The other field values build the roadmap's earlier steps
    (see `convnext.roadmap`), down to ResNet-50 (He et al. 2016, torchvision's v1.5 layout with
    the stride on the 3x3 conv).

    Called as `model.apply(variables, images, train=bool, rngs={'dropout': key})` with NHWC
    images; returns float32 logits. Training draws drop path from the 'dropout' stream. With
    norm='batch', variables hold `batch_stats`: train with `mutable=['batch_stats']`.

    `scan` runs each stage's blocks after its first as one `nn.scan` (variables stacked under
    'stage<s>_blocks', see `block_stack`); `remat` rematerialises every block under
    `remat_policy`, as in NFNet.
    """

    num_classes: int
    depths: Sequence[int] = (3, 3, 9, 3)
    # Output channels of each stage.
    widths: Sequence[int] = (96, 192, 384, 768)
    # 'resnet': 7x7 s2 conv -> norm -> act -> 3x3 s2 max-pool; 'patchify': 4x4 s4 conv.
    stem: str = "patchify"
    stem_width: int | None = None  # None: widths[0]
    stem_norm: bool = True
    spatial_conv: str = "first"
    depthwise: bool = True
    kernel_size: int = 7
    # Width of a block's 1x1 convs relative to its output: 1/4 in ResNet, 4 when inverted.
    hidden_ratio: float = 4.0
    activation: str = "gelu"
    activations: str = "one"
    norm: str = "layer"
    norms: str = "one"
    # 'block': the first block of stages 2-4 strides (ResNet); 'separate': norm + 2x2 s2 conv.
    downsampling: str = "separate"
    head_norm: bool = True
    layer_scale_init: float | None = 1e-6
    drop_path_rate: float = 0.0
    head_init_scale: float = 1.0
    weight_init: str = "convnext"
    scan: bool = False
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    input_channels: int = 3
    dtype: Dtype = jnp.float32
    # Named axes (vmap, shard_map) over which BatchNorm averages batch statistics; the train
    # step sets them when it runs the model per example and per device.
    batch_norm_axis_name: tuple[str, ...] | None = None

    def __post_init__(self):
        self._validate()
        super().__post_init__()

    def _validate(self) -> None:
        if len(self.depths) != len(self.widths) or not self.depths:
            raise ValueError(
                f"depths {tuple(self.depths)} and widths {tuple(self.widths)} must name the "
                "same (non-zero) number of stages."
            )
        if min(self.depths) < 1 or min(self.widths) < 1:
            raise ValueError(
                f"depths and widths must be positive, got {self.depths}, {self.widths}."
            )
        _check_choice("stem", self.stem, STEMS)
        _check_choice("spatial_conv", self.spatial_conv, SPATIAL_CONV_POSITIONS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("activations", self.activations, COUNTS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("norms", self.norms, COUNTS)
        _check_choice("downsampling", self.downsampling, DOWNSAMPLINGS)
        _check_choice("weight_init", self.weight_init, INITS)
        if "one" in (self.activations, self.norms) and self.spatial_conv != "first":
            raise ValueError(
                "activations='one' and norms='one' keep the layers around the two adjacent 1x1 "
                "convs, so they need spatial_conv='first'."
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}.")
        if min(int(w * self.hidden_ratio) for w in self.widths) < 1:
            raise ValueError(f"hidden_ratio {self.hidden_ratio} leaves a block with no channels.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if self.layer_scale_init is not None and self.layer_scale_init <= 0:
            raise ValueError("layer_scale_init must be positive, or None for no layer scale.")
        block_stack.check_remat_policy(self.remat_policy)

    @property
    def min_resolution(self) -> int:
        return STEM_STRIDE * 2 ** (len(self.depths) - 1)

    def _norm(self, train: bool, name: str) -> nn.Module:
        return norm_layer(self.norm, train=train, name=name, dtype=self.dtype,
                          axis_name=self.batch_norm_axis_name)

    def _stem(self, x: jax.Array, train: bool) -> jax.Array:
        width = self.stem_width or self.widths[0]
        bias = not (self.stem_norm and self.norm == "batch")
        if self.stem == "resnet":
            x = nn.Conv(
                width,
                (7, 7),
                strides=2,
                padding=((3, 3), (3, 3)),
                use_bias=bias,
                kernel_init=kernel_init(self.weight_init),
                dtype=self.dtype,
                name="stem_conv",
            )(x)
            if self.stem_norm:
                x = self._norm(train, "stem_norm")(x)
            x = activation(self.activation)(x)
            return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        # Non-overlapping 4x4 patches, as ViT's patch embedding (Section 2.2).
        x = nn.Conv(
            width,
            (4, 4),
            strides=4,
            padding="VALID",
            use_bias=bias,
            kernel_init=kernel_init(self.weight_init),
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        return self._norm(train, "stem_norm")(x) if self.stem_norm else x

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != self.input_channels:
            raise ValueError(
                f"ConvNeXt expects NHWC images with {self.input_channels} channels, got shape "
                f"{images.shape}."
            )
        if min(images.shape[1:3]) < self.min_resolution:
            raise ValueError(
                f"ConvNeXt downsamples {self.min_resolution}x, so images need at least "
                f"{self.min_resolution} px a side; got shape {images.shape}."
            )
        x = self._stem(images.astype(self.dtype), train)

        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        first = 0
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths, strict=True)):
            if self.downsampling == "separate" and stage > 0:
                # Section 2.6: LN before each 2x2 s2 downsampling conv.
                x = self._norm(train, f"stage{stage}_downsample_norm")(x)
                x = nn.Conv(
                    width,
                    (2, 2),
                    strides=2,
                    padding="VALID",
                    kernel_init=kernel_init(self.weight_init),
                    dtype=self.dtype,
                    name=f"stage{stage}_downsample_conv",
                )(x)
            fields = dict(
                features=width,
                hidden=int(width * self.hidden_ratio),
                spatial_conv=self.spatial_conv,
                depthwise=self.depthwise,
                kernel_size=self.kernel_size,
                activation=self.activation,
                activations=self.activations,
                norm=self.norm,
                norms=self.norms,
                layer_scale_init=self.layer_scale_init,
                drop_path=self.drop_path_rate > 0,
                weight_init=self.weight_init,
                dtype=self.dtype,
                batch_norm_axis_name=self.batch_norm_axis_name,
            )
            strided = self.downsampling == "block" and stage > 0
            x = block_stack.stage(
                Block, fields, x, (rates[first : first + depth],), train, index=stage,
                first_stride=2 if strided else 1, scan=self.scan,
                remat_policy=self.remat_policy if self.remat else None,
            )
            first += depth

        x = jnp.mean(x, axis=(1, 2))
        if self.head_norm:  # Section 2.6: one norm after the final global average pooling.
            x = self._norm(train, "head_norm")(x)
        kernel, bias = head_init(self.weight_init, self.head_init_scale, fan_in=x.shape[-1])
        logits = nn.Dense(
            self.num_classes, kernel_init=kernel, bias_init=bias, dtype=self.dtype, name="head"
        )(x)
        return logits.astype(jnp.float32)
