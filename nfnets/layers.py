"""Normalizer-free building blocks (Brock et al. 2021, "High-Performance Large-Scale Image
Recognition Without Normalization"), written to reproduce the official JAX/Haiku code
(deepmind-research/nfnets, `base.py`) number for number.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# Activations scaled so that act(x) has unit variance for x ~ N(0, 1) (Brock et al. 2021a,
# Appendix D). The gamma values are those of the reference `base.nonlinearities`.
SCALED_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # The reference uses jax's default tanh approximation of GELU.
    "gelu": lambda x: jax.nn.gelu(x, approximate=True) * 1.7015043497085571,
    # timm's `dm_nfnet_*` port uses the exact (erf) GELU with the same gamma.
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False) * 1.7015043497085571,
    "relu": lambda x: jax.nn.relu(x) * 1.7139588594436646,
    "silu": lambda x: jax.nn.silu(x) * 1.7881293296813965,
    "elu": lambda x: jax.nn.elu(x) * 1.2716004848480225,
    "tanh": lambda x: jnp.tanh(x) * 1.5939117670059204,
    "identity": lambda x: x,
}

# Weight standardization formulas, keyed by the implementation they reproduce.
WEIGHT_STANDARDIZATIONS = ("reference", "timm")


def scaled_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in SCALED_ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; choose one of {sorted(SCALED_ACTIVATIONS)}."
        )
    return SCALED_ACTIVATIONS[name]


def standardize_weight(kernel: jax.Array, gain: jax.Array, style: str) -> jax.Array:
    """Scaled weight standardization of an HWIO kernel, per output channel.

    reference (deepmind-research/nfnets `WSConv2D`):
        scale = rsqrt(max(var * fan_in, 1e-4)) * gain;  w' = w * scale - mean * scale
    timm (`ScaledStdConv2dSame`, eps 1e-5):
        w' = (w - mean) / sqrt(var + 1e-5) * gain / sqrt(fan_in)
    Mean and (biased) variance are taken over the H, W and I axes.
    """
    fan_in = np.prod(kernel.shape[:-1])
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    if style == "reference":
        scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, 1e-4)) * gain
        return kernel * scale - mean * scale
    if style == "timm":
        return (kernel - mean) * jax.lax.rsqrt(var + 1e-5) * (gain / np.sqrt(fan_in))
    raise ValueError(
        f"Unknown weight standardization {style!r}; choose one of {WEIGHT_STANDARDIZATIONS}."
    )


class WSConv2D(nn.Module):
    """Conv2D with scaled weight standardization, a learnable per-channel gain and a bias.

    Padding is 'SAME' in TensorFlow's sense (extra padding at the end), as in the reference.
    The standardized kernel is computed in float32 and then cast to the compute dtype.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    feature_group_count: int = 1
    weight_standardization: str = "reference"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        if in_features % self.feature_group_count:
            raise ValueError(
                f"{self.name}: {in_features} input channels do not split into "
                f"{self.feature_group_count} groups."
            )
        k = self.kernel_size
        kernel_shape = (k, k, in_features // self.feature_group_count, self.features)
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
            kernel_shape,
            self.param_dtype,
        )
        gain = self.param("gain", nn.initializers.ones, (self.features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        weight = standardize_weight(
            kernel.astype(jnp.float32), gain.astype(jnp.float32), self.weight_standardization
        )
        out = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            weight.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.feature_group_count,
        )
        return out + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite gate: mean over H, W -> linear -> ReLU -> linear -> sigmoid.

    Returns the gate (batch, 1, 1, channels); the caller multiplies. The hidden ReLU is
    unscaled, as in the reference.
    """

    hidden_features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda n, name: nn.Dense(
            n, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        h = jnp.mean(x, axis=(1, 2))
        h = dense(x.shape[-1], "fc1")(jax.nn.relu(dense(self.hidden_features, "fc0")(h)))
        return jax.nn.sigmoid(h)[:, None, None, :]


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per example with probability `rate` (Huang et al. 2016).

    As in the reference `base.StochDepth`, kept branches are not rescaled by 1 / keep_prob
    (the reference's default `scale_by_keep=False`); the mask is floor(keep_prob + u), u ~ U[0, 1).
    Draws from the 'dropout' rng stream. `rate` may be a traced scalar (inside `nn.scan`); rate 0
    keeps every branch.
    """

    @nn.compact
    def __call__(self, x: jax.Array, rate) -> jax.Array:
        u = jax.random.uniform(self.make_rng("dropout"), (x.shape[0], 1, 1, 1), jnp.float32)
        mask = jnp.floor(1.0 - jnp.asarray(rate, jnp.float32) + u)
        return x * mask.astype(x.dtype)
