"""NFNet-F (Brock et al. 2021), a Flax port of deepmind-research/nfnets `nfnet.py`."""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from modeling import block_stack
from nfnets.layers import SqueezeExcite, StochasticDepth, WSConv2D, scaled_activation

Dtype = Any

# Stage strides: stage 0 keeps the stem's resolution (the stem already downsamples 4x).
STAGE_STRIDES = (1, 2, 2, 2)


def bottleneck_width(out_features: int, ratio: float, group_width: int, rounding: str) -> int:
    """Width of a block's grouped 3x3 convs.

    'group' (the released code): int(out * ratio) rounded down to a multiple of the group
    width, so NFNet-F3+'s first stage gets 128 rather than 192. 'none': int(out * ratio)
    unrounded, with a single group when it is not a multiple of the group width; this
    reproduces Brock et al.'s published F4+ size (527M params).
    """
    width = int(out_features * ratio)
    if rounding == "group":
        if width < group_width:
            raise ValueError(
                f"Bottleneck width {width} is smaller than the group width {group_width}."
            )
        return width // group_width * group_width
    if rounding == "none":
        return width
    raise ValueError(f"Unknown bottleneck rounding {rounding!r}; choose 'group' or 'none'.")


def num_groups(width: int, group_width: int) -> int:
    return width // group_width if width % group_width == 0 else 1


def block_betas(depths: Sequence[int], alpha: float) -> list[float]:
    """beta = 1 / expected_std of each block's input (Brock et al. 2021a, Section 4).

    The expected variance grows by alpha**2 after every block and is reset to 1 after the
    first block of each stage (whose shortcut is a fresh projection), as in the reference.
    """
    betas, expected_std = [], 1.0
    for depth in depths:
        for b in range(depth):
            betas.append(1.0 / expected_std)
            if b == 0:
                expected_std = 1.0
            expected_std = (expected_std**2 + alpha**2) ** 0.5
    return betas


class NFBlock(nn.Module):
    """Bottleneck block: 1x1 -> grouped 3x3 (strided) -> grouped 3x3 -> 1x1 -> SE -> skip gain.

    Called as `block(x, beta, drop_rate, train)` and returns `(x, None)` (the pair `nn.scan`
    expects): beta scales the block's input, drop_rate is its stochastic-depth rate, both
    Python floats or traced scalars. `stochastic_depth` says whether the network drops blocks.
    """

    features: int
    width: int
    group_width: int
    stride: int
    alpha: float
    se_ratio: float
    stochastic_depth: bool
    activation: str
    weight_standardization: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, beta, drop_rate, train: bool) -> tuple[jax.Array, None]:
        act = scaled_activation(self.activation)
        conv = lambda n, k, name, stride=1, groups=1: WSConv2D(
            n,
            kernel_size=k,
            stride=stride,
            feature_group_count=groups,
            weight_standardization=self.weight_standardization,
            dtype=self.dtype,
            name=name,
        )
        groups = num_groups(self.width, self.group_width)

        out = act(x) * jnp.asarray(beta, x.dtype)
        if self.stride > 1:
            # 2x2 average pool, 'SAME' padding excluded from the count (haiku's avg_pool).
            shortcut = nn.avg_pool(
                out, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False
            )
            shortcut = conv(self.features, 1, "conv_shortcut")(shortcut)
        elif x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, "conv_shortcut")(out)
        else:
            shortcut = x

        out = conv(self.width, 1, "conv0")(out)
        out = conv(self.width, 3, "conv1", self.stride, groups)(act(out))
        out = conv(self.width, 3, "conv1b", 1, groups)(act(out))
        out = conv(self.features, 1, "conv2")(act(out))
        se_hidden = max(1, int(self.features * self.se_ratio))
        out = 2.0 * SqueezeExcite(se_hidden, dtype=self.dtype, name="se")(out) * out
        if train and self.stochastic_depth:
            out = StochasticDepth()(out, drop_rate)
        # SkipInit (De & Smith 2020): the residual branch starts switched off.
        skip_gain = self.param("skip_gain", nn.initializers.zeros, (), jnp.float32)
        return out * skip_gain.astype(out.dtype) * self.alpha + shortcut, None


class NFNet(nn.Module):
    """Normalizer-free ResNet: deep stem, four stages of NFBlocks, final conv, linear head.

    Called as `model.apply(variables, images, train=bool, rngs={'dropout': key})` with NHWC
    images; returns float32 logits. Train mode draws stochastic depth and dropout from the
    'dropout' stream.

    scan: run each stage's blocks after its first as one `nn.scan` (their params stacked under
      'stage<s>_blocks', see `block_stack`), so compile time does not grow with depth. Same
      function as unrolled; random draws in training differ.
    remat: rematerialise each block in the backward pass under `remat_policy` (a name of
      `jax.checkpoint_policies`: 'nothing_saveable' keeps only block inputs, 'dots_saveable'
      also keeps conv and matmul outputs).
    """

    num_classes: int
    depths: Sequence[int]
    widths: Sequence[int]
    stem_widths: Sequence[int] = (16, 32, 64)
    bottleneck_ratio: float = 0.5
    group_width: int = 128
    bottleneck_rounding: str = "group"
    se_ratio: float = 0.5
    alpha: float = 0.2
    stochastic_depth: float = 0.0
    dropout: float = 0.0
    final_conv_multiplier: int = 2
    activation: str = "gelu"
    weight_standardization: str = "reference"
    scan: bool = False
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    input_channels: int = 3
    dtype: Dtype = jnp.float32

    def __post_init__(self):
        block_stack.check_remat_policy(self.remat_policy)
        super().__post_init__()

    def _conv(self, features: int, kernel_size: int, name: str, stride: int = 1) -> WSConv2D:
        return WSConv2D(
            features,
            kernel_size=kernel_size,
            stride=stride,
            weight_standardization=self.weight_standardization,
            dtype=self.dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != self.input_channels:
            raise ValueError(
                f"NFNet expects NHWC images with {self.input_channels} channels, got shape "
                f"{images.shape}."
            )
        act = scaled_activation(self.activation)

        # Stem: 3x3 s2 -> 3x3 -> 3x3 -> 3x3 s2 to widths[0] // 2, activations between.
        x = images
        stem = [*self.stem_widths, self.widths[0] // 2]
        for i, features in enumerate(stem):
            if i > 0:
                x = act(x)
            stride = 2 if i in (0, len(stem) - 1) else 1
            x = self._conv(features, 3, f"stem_conv{i}", stride)(x)

        betas = block_betas(self.depths, self.alpha)
        num_blocks = sum(self.depths)
        # Linear in the block index over the whole network (reference).
        rates = [self.stochastic_depth * i / num_blocks for i in range(num_blocks)]
        first = 0
        for stage, (depth, features) in enumerate(zip(self.depths, self.widths, strict=True)):
            fields = dict(
                features=features,
                width=bottleneck_width(
                    features, self.bottleneck_ratio, self.group_width, self.bottleneck_rounding
                ),
                group_width=self.group_width,
                alpha=self.alpha,
                se_ratio=self.se_ratio,
                stochastic_depth=self.stochastic_depth > 0,
                activation=self.activation,
                weight_standardization=self.weight_standardization,
                dtype=self.dtype,
            )
            blocks = slice(first, first + depth)
            x = block_stack.stage(
                NFBlock, fields, x, (betas[blocks], rates[blocks]), train, index=stage,
                first_stride=STAGE_STRIDES[stage], scan=self.scan,
                remat_policy=self.remat_policy if self.remat else None,
            )
            first += depth

        x = self._conv(self.final_conv_multiplier * self.widths[-1], 1, "final_conv")(x)
        x = jnp.mean(act(x), axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="head",
        )(x)
        return logits.astype(jnp.float32)
