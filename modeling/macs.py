"""Counting multiply-accumulates (MACs) and parameters of any JAX function or Flax model.

Convention (NFNet README, ConvNeXt paper, pycls, timm): one MAC per multiply-accumulate of a
convolution or matrix product, every kernel tap counted (also taps that fall on padding),
attention's batched matmuls included, norms, activations, pooling and elementwise ops not
counted. The count walks the jaxpr of a forward pass, so it sees exactly what runs, including
inside `jit`, `remat`, `custom_jvp`/`custom_vjp` and `scan` (whose body is counted once per
iteration). XLA's `cost_analysis()` cannot do this: it reports FLOPs per device, skips padding
taps and counts a scan body once.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


def _conv_macs(eqn) -> int:
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    # rhs_spec = (out_feature_dim, in_feature_dim, *spatial_dims) in the kernel's own axes; the
    # kernel's input-feature dimension is already per group.
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    taps = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    in_features_per_group = rhs.shape[rhs_spec[1]]
    return math.prod(out.shape) * taps * in_features_per_group


def _dot_macs(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for d in range(rhs.ndim) if d not in (*rhs_contract, *rhs_batch)]
    return math.prod(lhs.shape) * math.prod(rhs.shape[d] for d in rhs_free)


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_macs(jaxpr) -> int:
    """MACs of one evaluation of `jaxpr` (a Jaxpr or ClosedJaxpr)."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif name == "dot_general":
            total += _dot_macs(eqn)
        elif name == "while":
            raise NotImplementedError(
                "MACs of a while loop depend on its trip count; use lax.scan or a Python loop."
            )
        elif name == "cond":
            # Branches are alternatives: count the most expensive one.
            total += max(jaxpr_macs(b) for b in eqn.params["branches"])
        else:
            repeat = eqn.params.get("length", 1) if name == "scan" else 1
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total += repeat * jaxpr_macs(sub)
    return total


def count_macs(fn: Callable, *args: Any, **kwargs: Any) -> int:
    """MACs of `fn(*args, **kwargs)`; arrays may be `jax.ShapeDtypeStruct`s (nothing runs)."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args, **kwargs))


def abstract_variables(model, resolution: int, input_channels: int = 3):
    """The model's variables as shapes only: no memory, no compute, any model size."""
    images = jax.ShapeDtypeStruct((1, resolution, resolution, input_channels), "float32")
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def model_macs(model, resolution: int, input_channels: int = 3) -> int:
    """Inference MACs per example of a Flax model at a square `resolution`."""
    variables = abstract_variables(model, resolution, input_channels)
    images = jax.ShapeDtypeStruct((1, resolution, resolution, input_channels), "float32")
    return count_macs(lambda v, x: model.apply(v, x, train=False), variables, images)


def count_params(params) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
