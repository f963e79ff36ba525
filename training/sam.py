"""Sharpness-Aware Minimization (Foret et al. 2021) as a transformation of a gradient function.

SAM minimizes max_{|e| <= rho} L(w + e) with the first-order solution for e:

    g_a   = dL_A/dw (w)                ascent gradient, on the ascent examples A of the batch
    e     = rho * g_a / |g_a|          |.|: the L2 norm over every parameter together
    g_sam = dL_B/dw (w + e)            descent gradient at the perturbed params, on the batch B

and `g_sam` takes the place of the gradient: the optimizer applies it to the unperturbed w.
`sam_gradient` therefore only turns one gradient function into another, and any optax
optimizer composes with it unchanged: `optim.sgd_agc` clips `g_sam` against the unperturbed
params it is given, adds their weight decay and applies Nesterov momentum, in the reference
order (AGC, decay, momentum).

Groups. The batch is split into `num_groups` equal groups of consecutive examples. Each group
takes its own ascent gradient on its first `ascent_fraction` of examples, normalises it by its
own global norm (as Foret et al.'s code does per device: "m-sharpness") and takes its own
descent gradient on all its examples at its own perturbed params; `g_sam` is the mean over
groups. num_groups = 1 is global SAM; num_groups = the number of data-parallel replicas is
the per-replica SAM of Brock et al. 2021a (who also take the ascent step on 20% of each
replica's batch). Groups are a `vmap` axis. The train step (training/steps.py) runs this per device
on the groups that device holds, so a group never leaves its device and the result depends on the
config alone, never on the mesh. A group spread over several devices (global SAM on a mesh)
passes `ascent_reduce`, which averages its ascent gradient over them.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# grad_fn(params, batch, rng) -> (grads, aux); `batch` is a pytree of arrays whose leading axis
# is the example axis.
GradFn = Callable[[Any, Any, jax.Array], tuple[Any, Any]]


def ascent_examples(group_size: int, ascent_fraction: float) -> int:
    """Examples of a group used for its ascent step: ascent_fraction x group_size rounded to
    the nearest integer (halves up), at least 1."""
    if not 0 < ascent_fraction <= 1:
        raise ValueError(f"ascent_fraction must be in (0, 1], got {ascent_fraction}.")
    return max(1, int(ascent_fraction * group_size + 0.5))


def device_layout_error(num_groups: int, ascent_fraction: float, num_devices: int) -> str | None:
    """Why SAM groups would not stay on their devices (None when they do). The train step runs
    each device's groups on that device, so `num_groups` is a multiple of the device count; or
    one group spans them all (global SAM), whose ascent examples must then be all of them: the
    first `ascent_fraction` of the batch would sit on the first devices alone."""
    if num_groups % num_devices == 0 or (num_groups == 1 and ascent_fraction == 1):
        return None
    return (
        f"SAM with sam.num_groups {num_groups} and sam.ascent_fraction {ascent_fraction} would "
        f"move examples between the {num_devices} devices: set sam.num_groups to a multiple of "
        "the device count (per-replica SAM, Brock et al. 2021), or to 1 with "
        "sam.ascent_fraction=1 (global SAM, Foret et al. 2021)."
    )


def perturbation(grads, rho: float):
    """e = rho * g / |g|, |g| the global L2 norm (Foret et al. 2021, Eq. 2 with p = 2). A zero
    gradient gives a zero perturbation (the norm is floored at 1e-12)."""
    norm = jnp.maximum(optax.tree.norm(grads), 1e-12)
    return jax.tree.map(lambda g: (rho / norm) * g, grads)


def sam_gradient(
    grad_fn: GradFn,
    *,
    rho: float,
    ascent_fraction: float = 1.0,
    num_groups: int = 1,
    ascent_reduce: Callable[[Any], Any] = lambda grads: grads,
) -> GradFn:
    """Returns sam_grad_fn(params, batch, rng) -> (g_sam, aux) computing the SAM descent gradient
    of `grad_fn` (see the module docstring).

    `aux` is the descent pass's, stacked over groups (a leading axis of size `num_groups`), so a
    caller can reduce it as it needs (e.g. average BatchNorm statistics, concatenate logits);
    the ascent pass's aux is discarded. Every group's ascent and descent passes get the two keys
    split from `rng`: a `grad_fn` gives each example its own randomness from the key and the
    example's position in the batch, so groups need no key of their own.
    """
    if rho < 0:
        raise ValueError(f"SAM's rho must be >= 0, got {rho}.")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}.")

    def sam_grad_fn(params, batch, rng):
        batch_size = jax.tree.leaves(batch)[0].shape[0]
        if batch_size % num_groups:
            raise ValueError(
                f"A batch of {batch_size} examples does not split into {num_groups} SAM groups."
            )
        group_size = batch_size // num_groups
        num_ascent = ascent_examples(group_size, ascent_fraction)
        groups = jax.tree.map(lambda x: x.reshape(num_groups, group_size, *x.shape[1:]), batch)
        ascent_key, descent_key = jax.random.split(rng)

        def one_group(group_batch):
            ascent_batch = jax.tree.map(lambda x: x[:num_ascent], group_batch)
            ascent_grads, _ = grad_fn(params, ascent_batch, ascent_key)
            e = perturbation(ascent_reduce(ascent_grads), rho)
            perturbed = jax.tree.map(lambda w, d: w + d.astype(w.dtype), params, e)
            return grad_fn(perturbed, group_batch, descent_key)

        grads, aux = jax.vmap(one_group)(groups)
        return jax.tree.map(lambda g: jnp.mean(g, axis=0), grads), aux

    return sam_grad_fn
