"""The MAC counter against hand-computed counts."""

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from modeling.macs import count_macs, count_params


def conv(x, w, stride=1, padding="SAME", groups=1):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def shapes(*shapes):
    return [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]


def test_conv_counts_every_tap_including_padding():
    # 8x8 output positions x 16 output channels x 3x3 taps x 4 input channels.
    assert count_macs(conv, *shapes((1, 8, 8, 4), (3, 3, 4, 16))) == 8 * 8 * 16 * 9 * 4


def test_strided_grouped_conv():
    # Stride 2 'SAME' on 9x9 -> 5x5; 4 groups of 2 input channels each.
    macs = count_macs(lambda x, w: conv(x, w, 2, groups=4), *shapes((2, 9, 9, 8), (3, 3, 2, 8)))
    assert macs == 2 * 5 * 5 * 8 * 9 * 2


def test_kernel_layout_does_not_matter():
    def oihw(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
        )

    assert count_macs(oihw, *shapes((1, 4, 6, 6), (16, 4, 3, 3))) == 4 * 4 * 16 * 9 * 4


def test_matmul_and_batched_attention():
    assert count_macs(jnp.matmul, *shapes((5, 7), (7, 3))) == 5 * 7 * 3
    # Attention: (b, h, q, d) x (b, h, k, d) -> (b, h, q, k): b*h*q*k*d MACs.
    scores = lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k)
    assert count_macs(scores, *shapes((2, 3, 10, 8), (2, 3, 12, 8))) == 2 * 3 * 10 * 12 * 8


def test_elementwise_and_reductions_are_free():
    fn = lambda x: jnp.mean(jax.nn.gelu(x * 2 + 1), axis=0)
    assert count_macs(fn, *shapes((100, 100))) == 0


def test_nested_jit_remat_and_custom_vjp_are_seen():
    inner = jax.jit(jax.checkpoint(lambda a, b: a @ b))

    @jax.custom_vjp
    def custom(a, b):
        return a @ b

    custom.defvjp(lambda a, b: (a @ b, (a, b)), lambda res, g: (g @ res[1].T, res[0].T @ g))
    fn = lambda a, b: inner(a, b) + custom(a, b)
    assert count_macs(fn, *shapes((4, 6), (6, 5))) == 2 * 4 * 6 * 5


def test_scan_body_counts_once_per_iteration():
    def fn(x, ws):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

    assert count_macs(fn, *shapes((3, 8), (5, 8, 8))) == 5 * 3 * 8 * 8


def test_cond_counts_the_costlier_branch():
    fn = lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: a)
    p = jax.ShapeDtypeStruct((), jnp.bool_)
    assert count_macs(fn, p, *shapes((4, 4), (4, 4))) == 64


def test_while_loop_is_refused():
    fn = lambda x: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ c[0], c[1] + 1), (x, 0))
    with pytest.raises(NotImplementedError, match="trip count"):
        count_macs(fn, *shapes((4, 4)))


def test_flax_model_and_params():
    model = nn.Sequential([nn.Conv(8, (3, 3)), nn.Dense(10)])
    x = jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert count_params(variables) == (3 * 3 * 3 * 8 + 8) + (8 * 10 + 10)
    macs = count_macs(model.apply, variables, x)
    assert macs == 2 * 6 * 6 * 8 * 9 * 3 + 2 * 6 * 6 * 8 * 10
