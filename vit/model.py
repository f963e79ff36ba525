"""Vision Transformer (Dosovitskiy et al. 2021) with a patchify or convolutional stem
(Xiao et al. 2021), in the layout of big_vision's `models/vit.py` (Zhai et al. 2022).
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from modeling import block_stack
from vit.layers import (
    ACTIVATIONS,
    ATTENTION_IMPLEMENTATIONS,
    LAYER_NORM_EPS,
    ConvStem,
    EncoderBlock,
    MAPHead,
)
from vit.posemb import sincos_2d

Dtype = Any

STEMS = ("patchify", "conv")
POOLS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d")


class ViT(nn.Module):
    """Vision Transformer: stem -> tokens (+ class token) + position embedding -> pre-LN
    encoder blocks -> LayerNorm -> pool -> (pre-logits) -> linear head.

    Called as `model.apply(variables, images, train=bool, rngs={'dropout': key})` with NHWC
    images whose sides are multiples of `patch_size`; returns float32 logits. With
    `stem='conv'` the model keeps BatchNorm statistics: train with `mutable=['batch_stats']`.

    Fields:
      stem: 'patchify' (a patch_size x patch_size conv, stride patch_size) or 'conv' (3x3 convs
        of `conv_stem_widths` / `conv_stem_strides`, BN + ReLU, then a 1x1 conv with bias;
        the strides must multiply to `patch_size`).
      pool: 'token' (a class token; Dosovitskiy et al.), 'gap' (mean over tokens after the
        final LayerNorm; big_vision) or 'map' (multihead attention pooling; Zhai et al.).
      posemb: 'learn' (init N(0, 1 / width), big_vision) or 'sincos2d' (fixed, MoCo v3).
      class_token_posemb: with pool='token' and a learned embedding, whether the class token
        has its own entry (Dosovitskiy et al., pycls, timm: concatenate, then add) or not
        (big_vision: add, then concatenate). The two are equivalent in function.
      representation_size: if > 0, a tanh "pre-logits" layer of that width before the head.
      head_zero_init: zero-initialize the head kernel (big_vision, pycls); else LeCun normal.
      stochastic_depth: the last block's drop-path rate; block i of L gets rate * i / (L - 1).
      dropout: big_vision's dropout after the position embedding and in every residual branch.
      scan: run the blocks with `nn.scan` (parameters stacked along a leading depth axis under
        'blocks' instead of 'block_0'...), so compile time does not grow with depth.
      remat: rematerialize each block in the backward pass with `remat_policy`.
    """

    num_classes: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 16
    stem: str = "patchify"
    conv_stem_widths: Sequence[int] = ()
    conv_stem_strides: Sequence[int] = ()
    pool: str = "token"
    posemb: str = "learn"
    class_token_posemb: bool = True
    representation_size: int = 0
    head_zero_init: bool = True
    layer_norm_eps: float = LAYER_NORM_EPS
    activation: str = "gelu"
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    scan: bool = False
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    # jax.nn.dot_product_attention's: 'xla' (any backend), 'cudnn' (NVIDIA GPUs), None (JAX's
    # choice).
    attention_implementation: str | None = "xla"
    input_channels: int = 3
    dtype: Dtype = jnp.float32
    # Named axes (vmap, shard_map) over which the conv stem's BatchNorm averages batch
    # statistics; the train step sets them when it runs the model per example and per device.
    batch_norm_axis_name: tuple[str, ...] | None = None

    def __post_init__(self):
        validate_fields(self)
        super().__post_init__()

    def _stem(self, images: jax.Array, train: bool) -> jax.Array:
        if self.stem == "conv":
            return ConvStem(
                self.conv_stem_widths,
                self.conv_stem_strides,
                self.width,
                dtype=self.dtype,
                batch_norm_axis_name=self.batch_norm_axis_name,
                name="stem",
            )(images, train)
        return nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=self.patch_size,
            padding="VALID",
            # Truncated normal, variance 1 / fan_in: flax's default (big_vision) and pycls.
            kernel_init=nn.initializers.lecun_normal(),
            dtype=self.dtype,
            name="embedding",
        )(images)

    def _pos_embedding(self, rows: int, cols: int) -> jax.Array:
        if self.posemb == "sincos2d":
            return jnp.asarray(sincos_2d(rows, cols, self.width))
        shape = (1, rows * cols + self.pos_embedding_prefix, self.width)
        if self.has_variable("params", "pos_embedding"):
            stored = self.get_variable("params", "pos_embedding").shape
            if tuple(stored) != shape:
                raise ValueError(
                    f"The position embedding holds {stored[1]} entries but {rows}x{cols} "
                    f"patches need {shape[1]}; resample it with "
                    f"vit.adapt_to_resolution(params, model, resolution)."
                )
        return self.param("pos_embedding", nn.initializers.normal(1 / math.sqrt(self.width)), shape)

    @property
    def pos_embedding_prefix(self) -> int:
        """Entries of the learned position embedding before the grid's: 1 for the class
        token's own position (class_token_posemb), else 0."""
        return int(self.pool == "token" and self.posemb == "learn" and self.class_token_posemb)

    def _encoder(self, x: jax.Array, train: bool) -> jax.Array:
        block = block_stack.block_type(
            EncoderBlock, remat_policy=self.remat_policy if self.remat else None,
            in_scan=self.scan, num_inputs=1,
        )
        fields = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            layer_norm_eps=self.layer_norm_eps,
            activation=self.activation,
            dropout=self.dropout,
            stochastic_depth=self.stochastic_depth > 0,
            attention_implementation=self.attention_implementation,
            dtype=self.dtype,
        )
        return block_stack.repeat(
            block, fields, x, (drop_path_rates(self.stochastic_depth, self.depth),), train,
            scan=self.scan, names=[f"block_{i}" for i in range(self.depth)], scanned_name="blocks",
        )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != self.input_channels:
            raise ValueError(
                f"ViT expects NHWC images with {self.input_channels} channels, got shape "
                f"{images.shape}."
            )
        if images.shape[1] % self.patch_size or images.shape[2] % self.patch_size:
            raise ValueError(
                f"Image sides {images.shape[1:3]} are not multiples of the patch size "
                f"{self.patch_size}; resize or crop the images."
            )
        x = self._stem(images.astype(self.dtype), train)
        n, rows, cols, width = x.shape
        x = x.reshape(n, rows * cols, width)

        pos_embedding = self._pos_embedding(rows, cols).astype(self.dtype)
        if self.pool == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width))
            cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, width))
            if self.pos_embedding_prefix:
                x = jnp.concatenate([cls, x], axis=1) + pos_embedding
            else:
                x = jnp.concatenate([cls, x + pos_embedding], axis=1)
        else:
            x = x + pos_embedding
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        x = self._encoder(x, train)
        x = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="encoder_norm")(x)

        if self.pool == "token":
            x = x[:, 0]
        elif self.pool == "gap":
            x = jnp.mean(x, axis=1)
        else:
            x = MAPHead(
                self.num_heads,
                self.mlp_dim,
                layer_norm_eps=self.layer_norm_eps,
                activation=self.activation,
                dtype=self.dtype,
                attention_implementation=self.attention_implementation,
                name="map_head",
            )(x)
        if self.representation_size:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
        head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
        logits = nn.Dense(self.num_classes, kernel_init=head_init, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block, linear from 0 to `rate` (DeiT; timm's
    `calculate_drop_path_rates`)."""
    return [float(r) for r in np.linspace(0.0, rate, depth)]


def validate_fields(model: ViT) -> None:
    """Raises ValueError, naming the fix, for inconsistent hyper-parameters."""
    if model.num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {model.num_classes}.")
    if model.depth < 1 or model.width < 1 or model.mlp_dim < 1 or model.num_heads < 1:
        raise ValueError(
            f"depth, width, mlp_dim and num_heads must be positive, got {model.depth}, "
            f"{model.width}, {model.mlp_dim}, {model.num_heads}."
        )
    if model.width % model.num_heads:
        raise ValueError(
            f"Width {model.width} is not divisible by {model.num_heads} heads; choose a head "
            f"count that divides the width."
        )
    for field, value, valid in [
        ("stem", model.stem, STEMS),
        ("pool", model.pool, POOLS),
        ("posemb", model.posemb, POSEMBS),
        ("activation", model.activation, tuple(ACTIVATIONS)),
        ("remat_policy", model.remat_policy, block_stack.REMAT_POLICIES),
        ("attention_implementation", model.attention_implementation, ATTENTION_IMPLEMENTATIONS),
    ]:
        if value not in valid:
            raise ValueError(f"Unknown {field} {value!r}; choose one of {list(valid)}.")
    if model.posemb == "sincos2d" and (model.width % 4 or model.width < 8):
        raise ValueError(
            f"posemb='sincos2d' needs a width divisible by 4 and at least 8, got {model.width}."
        )
    if model.stem == "conv":
        widths, strides = tuple(model.conv_stem_widths), tuple(model.conv_stem_strides)
        if not widths or len(widths) != len(strides):
            raise ValueError(
                f"The convolutional stem needs one stride per width, got widths {widths} and "
                f"strides {strides}."
            )
        if min(strides) < 1 or min(widths) < 1:
            raise ValueError(f"Stem widths {widths} and strides {strides} must be positive.")
        if math.prod(strides) != model.patch_size:
            raise ValueError(
                f"Stem strides {strides} multiply to {math.prod(strides)}, not to the patch "
                f"size {model.patch_size}; make their product equal the patch size."
            )
    elif model.conv_stem_widths or model.conv_stem_strides:
        raise ValueError(
            "conv_stem_widths and conv_stem_strides apply only to stem='conv'; set stem='conv' "
            "or leave them empty."
        )
    for field in ("dropout", "stochastic_depth"):
        if not 0.0 <= getattr(model, field) < 1.0:
            raise ValueError(f"{field} must be in [0, 1), got {getattr(model, field)}.")
    if model.representation_size < 0:
        raise ValueError(
            f"representation_size must be 0 (none) or positive, got {model.representation_size}."
        )


def stack_blocks(params: dict) -> dict:
    """Params of an unscanned model ('block_0', 'block_1', ...) -> a scanned one ('blocks',
    every leaf stacked along a new leading depth axis). big_vision's `pyloop_to_scan`."""
    depth = sum(1 for k in params if k.startswith("block_"))
    if depth == 0:
        raise ValueError("These params hold no 'block_<i>' entries; are they already stacked?")
    out = {k: v for k, v in params.items() if not k.startswith("block_")}
    out["blocks"] = block_stack.stack([params[f"block_{i}"] for i in range(depth)])
    return out


def unstack_blocks(params: dict) -> dict:
    """Inverse of `stack_blocks` (big_vision's `scan_to_pyloop`)."""
    if "blocks" not in params:
        raise ValueError("These params hold no 'blocks' entry; are they already unstacked?")
    out = {k: v for k, v in params.items() if k != "blocks"}
    for i, block in enumerate(block_stack.unstack(params["blocks"])):
        out[f"block_{i}"] = block
    return out


def abstract_variables(model: ViT, grid: tuple[int, int]) -> dict:
    """The model's variables (params, and the conv stem's batch_stats) as shapes (no memory,
    no compute) for a token grid (rows, cols)."""
    images = jax.ShapeDtypeStruct(
        (1, grid[0] * model.patch_size, grid[1] * model.patch_size, model.input_channels),
        jnp.float32,
    )
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def abstract_params(model: ViT, grid: tuple[int, int]) -> dict:
    """The model's params as shapes (no memory, no compute) for a token grid (rows, cols)."""
    return abstract_variables(model, grid)["params"]
