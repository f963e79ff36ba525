"""Building blocks shared by every step of the ResNet-50 -> ConvNeXt roadmap (Liu et al. 2022,
"A ConvNet for the 2020s"): activations, normalization layers, initializers, stochastic depth.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
Initializer = Callable[..., jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    # ConvNeXt uses PyTorch's nn.GELU: the exact form x * Phi(x), not the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}

NORMS = ("batch", "layer")

# PyTorch's BatchNorm2d defaults (as in ResNet): running = 0.9 * running + 0.1 * batch, eps 1e-5.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPS = 1e-5
# ConvNeXt's LayerNorm eps (facebookresearch/ConvNeXt `LayerNorm`, timm `LayerNorm2d`).
LAYER_NORM_EPS = 1e-6


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def norm_layer(
    kind: str,
    *,
    train: bool,
    name: str,
    dtype: Dtype,
    scale_init: Initializer = nn.initializers.ones,
    axis_name: tuple[str, ...] | None = None,
) -> nn.Module:
    """Normalization over the channel (last) axis of NHWC or (batch, channels) activations.

    'batch': y = (x - mu) / sqrt(var + 1e-5) * scale + bias, with mu, var the (biased) batch
    statistics over every axis but the last in training and the running averages in evaluation.
    `axis_name`: the named axes (of `vmap` or `shard_map`) the batch is split over, whose
    statistics are averaged; the train step runs models per example and per device and sets
    them, so the statistics are those of the whole global batch. Running averages live in
    `batch_stats`: running = 0.9 * running + 0.1 * batch statistic, as PyTorch's momentum 0.1,
    except that the variance averaged is the biased one (flax) where PyTorch averages the
    unbiased n / (n - 1) one, n = examples x positions, a relative difference of 1 / (n - 1).
    'layer': the same formula with mu, var over the channels of each position, eps 1e-6 (the
    "channels-last" LayerNorm of ConvNeXt; for NHWC data its "channels-first" one is identical).
    Variances are computed as E[(x - mu)^2], not E[x^2] - mu^2, to match PyTorch.
    """
    if kind == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPS,
            use_fast_variance=False,
            scale_init=scale_init,
            axis_name=axis_name,
            dtype=dtype,
            name=name,
        )
    if kind == "layer":
        return nn.LayerNorm(
            epsilon=LAYER_NORM_EPS,
            use_fast_variance=False,
            scale_init=scale_init,
            dtype=dtype,
            name=name,
        )
    raise ValueError(f"Unknown norm {kind!r}; choose one of {NORMS}.")


# Initializations of conv and linear kernels, keyed by the codebase they reproduce.
INITS = ("convnext", "resnet")


def kernel_init(init: str) -> Initializer:
    """Initializer of conv (HWIO) and linear (in, out) kernels.

    'convnext' (ConvNeXt `_init_weights`): trunc_normal_(std=0.02), whose default bounds are the
    absolute values +-2, i.e. +-100 standard deviations.
    'resnet' (torchvision and timm ResNet): kaiming_normal_(mode='fan_out', nonlinearity='relu'),
    N(0, 2 / fan_out) with fan_out = out_channels * kernel_h * kernel_w.
    """
    if init == "convnext":
        return nn.initializers.truncated_normal(0.02, lower=-2 / 0.02, upper=2 / 0.02)
    if init == "resnet":
        return nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    raise ValueError(f"Unknown init {init!r}; choose one of {INITS}.")


def head_init(init: str, scale: float, fan_in: int) -> tuple[Initializer, Initializer]:
    """(kernel, bias) initializers of the classifier, whose input has `fan_in` features.

    'convnext': trunc-normal(0.02) kernel and zero bias, both multiplied by `scale` (ConvNeXt's
    head_init_scale). 'resnet': PyTorch's nn.Linear default, kernel and bias ~ U(-b, b) with
    b = 1 / sqrt(fan_in) (kaiming_uniform_ with a = sqrt(5)); `scale` must then be 1.
    """
    if init == "convnext":

        def kernel(key, shape, dtype=jnp.float32):
            return kernel_init("convnext")(key, shape, dtype) * scale

        return kernel, nn.initializers.zeros
    if init == "resnet":
        if scale != 1.0:
            raise ValueError(
                "head_init_scale applies to weight_init='convnext' only; leave it at 1.0."
            )
        bound = fan_in**-0.5

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return uniform, uniform
    raise ValueError(f"Unknown init {init!r}; choose one of {INITS}.")


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) as in timm's `DropPath`, used by ConvNeXt.

    In training, each example's residual branch is kept with probability keep = 1 - rate and
    rescaled: x * bernoulli(keep) / keep, so its expectation is unchanged. Identity in evaluation.
    Draws from the 'dropout' rng stream. `rate` may be a traced scalar (inside `nn.scan`); rate 0
    keeps every branch.
    """

    @nn.compact
    def __call__(self, x: jax.Array, rate) -> jax.Array:
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return x * (mask.astype(x.dtype) / keep.astype(x.dtype))
