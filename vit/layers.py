"""Vision Transformer building blocks: stems, multi-head attention, MLP, encoder block, MAP head.

Initializers follow big_vision's `models/vit.py` (Zhai et al. 2022) for the transformer and
pycls's `models/vit.py` (Xiao et al. 2021) for the convolutional stem.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # Exact (erf) GELU: PyTorch's default, used by timm and pycls.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # tanh approximation: flax's default `nn.gelu`, used by big_vision.
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# LayerNorm epsilon of every reference ViT: big_vision (flax's default), timm (`vit_*`), and
# pycls's LN.EPS in every config of Xiao et al. 2021 (configs/vitconv_baselines/vit/*.yaml on
# pycls's vitconfigs branch; pycls's library default, 1e-5, is not what they trained with).
LAYER_NORM_EPS = 1e-6

# big_vision: xavier-uniform kernels everywhere in the encoder, MLP biases N(0, 1e-6).
_XAVIER = nn.initializers.xavier_uniform()
_MLP_BIAS = nn.initializers.normal(stddev=1e-6)


class ConvStem(nn.Module):
    """Convolutional stem of Xiao et al. 2021 (Section 3; pycls `ViTStemConv`).

    Each entry of `widths` is a 3x3 convolution without bias (stride from `strides`, padding 1
    on every side as in PyTorch, not TensorFlow's 'SAME'), followed by BatchNorm and ReLU. A
    1x1 convolution with bias, named `embedding` like the patchify stem's, maps to `features`.
    BatchNorm follows pycls: epsilon 1e-5, running averages updated as
    `stat <- 0.9 * stat + 0.1 * batch_stat` (PyTorch momentum 0.1); flax updates the running
    variance with the biased batch variance where PyTorch uses the unbiased one (a factor
    m / (m - 1), m = batch x height x width). The statistics are averaged over the named axes
    `batch_norm_axis_name` (set by the train step, which runs the model per example and per
    device), so they are those of the global batch, as with PyTorch's SyncBatchNorm.
    Init as pycls: 3x3 kernels PyTorch's default U(+-1/sqrt(fan_in)), the 1x1 kernel
    N(0, 2 / features), biases 0.
    """

    widths: Sequence[int]
    strides: Sequence[int]
    features: int
    dtype: Dtype = jnp.float32
    batch_norm_axis_name: tuple[str, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, (width, stride) in enumerate(zip(self.widths, self.strides, strict=True)):
            x = nn.Conv(
                width,
                (3, 3),
                strides=stride,
                padding=((1, 1), (1, 1)),
                use_bias=False,
                kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                axis_name=self.batch_norm_axis_name,
                dtype=self.dtype,
                name=f"bn{i}",
            )(x)
            x = jax.nn.relu(x)
        return nn.Conv(
            self.features,
            (1, 1),
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            dtype=self.dtype,
            name="embedding",
        )(x)


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", None)  # jax.nn.dot_product_attention's


class Attention(nn.Module):
    """Multi-head dot-product attention (Vaswani et al. 2017) with separate q, k, v projections.

        q = x_q W_q + b_q,  k = x_kv W_k + b_k,  v = x_kv W_v + b_v     (per head, width d_h)
        out = concat_h(softmax(q k^T / sqrt(d_h)) v) W_o + b_o

    Kernels are stored as flax's `MultiHeadDotProductAttention` stores them: query, key and value
    (width, heads, d_h), out (heads, d_h, width). The product is `jax.nn.dot_product_attention`
    with `implementation` one of ATTENTION_IMPLEMENTATIONS: 'xla' (every backend; logits and
    softmax in float32), 'cudnn' (NVIDIA GPUs' fused kernel), or None (JAX chooses).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    implementation: str | None = "xla"

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array) -> jax.Array:
        width = x_q.shape[-1]
        head_dim = width // self.num_heads

        def project(name, x):
            return nn.DenseGeneral(
                (self.num_heads, head_dim), kernel_init=_XAVIER, dtype=self.dtype, name=name
            )(x)

        q, k, v = project("query", x_q), project("key", x_kv), project("value", x_kv)
        out = jax.nn.dot_product_attention(
            q, k, v, scale=head_dim**-0.5, implementation=self.implementation
        )
        return nn.DenseGeneral(
            width, axis=(-2, -1), kernel_init=_XAVIER, dtype=self.dtype, name="out"
        )(out)


class Mlp(nn.Module):
    """Transformer MLP: fc1 (width -> mlp_dim) -> GELU -> dropout -> fc2 (mlp_dim -> width)."""

    mlp_dim: int
    activation: str = "gelu"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        dense = lambda n, name: nn.Dense(
            n, kernel_init=_XAVIER, bias_init=_MLP_BIAS, dtype=self.dtype, name=name
        )
        width = x.shape[-1]
        x = ACTIVATIONS[self.activation](dense(self.mlp_dim, "fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(width, "fc2")(x)


def drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016) as in DeiT / timm `DropPath`: the residual branch
    of each example is zeroed with probability `rate` and kept ones are scaled by 1 / (1 - rate):
        out = x * floor(1 - rate + u) / (1 - rate),  u ~ U[0, 1) per example.
    `rate` may be a traced scalar (per-block rates inside `nn.scan`); rate 0 keeps every branch.
    """
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    u = jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return x * (jnp.floor(keep + u) / keep).astype(x.dtype)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block (Dosovitskiy et al. 2021, Eq. 2-3):
        x = x + DropPath(Dropout(MHSA(LN(x))));  x = x + DropPath(Dropout(MLP(LN(x))))

    Called as `block(x, drop_rate, train)` and returns `(x, None)`, the carry/output pair that
    `nn.scan` expects; `drop_rate` is this block's stochastic-depth rate.
    """

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = LAYER_NORM_EPS
    activation: str = "gelu"
    dropout: float = 0.0
    stochastic_depth: bool = False
    dtype: Dtype = jnp.float32
    attention_implementation: str | None = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate, train: bool) -> tuple[jax.Array, None]:
        def residual(y):
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
            if train and self.stochastic_depth:
                y = drop_path(y, drop_rate, self.make_rng("dropout"))
            return y

        norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
        y = norm("norm1")(x)
        attention = Attention(self.num_heads, self.dtype, self.attention_implementation,
                              name="attention")
        x = x + residual(attention(y, y))
        y = Mlp(
            self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            dtype=self.dtype,
            name="mlp",
        )(norm("norm2")(x), train)
        return x + residual(y), None


class MAPHead(nn.Module):
    """Multihead attention pooling (Lee et al. 2019; Zhai et al. 2022, big_vision `MAPHead`):
    a learned probe attends over all tokens, then a residual MLP:
        y = MHA(probe, x);  out = y + MLP(LN(y))
    """

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = LAYER_NORM_EPS
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    attention_implementation: str | None = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        probe = self.param("probe", _XAVIER, (1, 1, width), jnp.float32)
        probe = jnp.broadcast_to(probe.astype(self.dtype), (x.shape[0], 1, width))
        y = Attention(self.num_heads, self.dtype, self.attention_implementation,
                      name="attention")(probe, x)
        z = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="norm")(y)
        z = Mlp(
            self.mlp_dim,
            activation=self.activation,
            dtype=self.dtype,
            name="mlp",
        )(z, train=False)
        return (y + z)[:, 0]
