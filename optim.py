"""Optimizers, schedules and weight averaging, composed from optax pieces.

SGD + Nesterov + AGC follows the NFNet reference (deepmind-research/nfnets `optim.SGD_AGC`)
update for update:
    g <- AGC(g)             per unit: g * clip * max(|w|, eps) / |g| if |g| > clip * max(|w|, eps)
    g <- g + wd * w         coupled weight decay, not on gains, biases or other vectors
    m <- momentum * m + g
    w <- w - lr * (g + momentum * m)           (Nesterov)
AdamW (Loshchilov & Hutter 2019) is optax's, with decoupled decay masked the same way.
"""

import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util


def path_mask(params, predicate: Callable[[str, jax.Array], bool]):
    """A pytree of bools: predicate('/'-joined path, leaf) for every leaf of `params`."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: predicate(k, v) for k, v in flat.items()}, sep="/")


def matches_any(path: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, path) for p in patterns)


def weight_decay_mask(exclude: Sequence[str] = ()) -> Callable:
    """Decay kernels (ndim >= 2), never gains, biases, scales or other vectors and scalars
    (NFNet: "no weight decay on gains and biases"; ConvNeXt and ViT: none on 1-D params),
    nor any parameter whose path matches one of the `exclude` regexes (e.g. position
    embeddings or class tokens)."""
    return lambda params: path_mask(
        params, lambda path, x: x.ndim >= 2 and not matches_any(path, exclude)
    )


def agc_mask(exclude: Sequence[str]) -> Callable:
    """Clip every parameter except those matching `exclude`: the reference leaves out the
    final linear layer's weight (its bias is clipped; Brock et al. 2021a, Section 4.1)."""
    return lambda params: path_mask(params, lambda path, x: not matches_any(path, exclude))


def learning_rate_schedule(
    peak: float, total_steps: int, warmup_steps: int, kind: str = "cosine"
) -> optax.Schedule:
    """Linear warm-up from 0 to `peak`, then cosine decay to 0 at `total_steps` (or constant)."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"Warm-up of {warmup_steps} steps does not fit in a run of {total_steps} steps."
        )
    if kind == "cosine":
        if warmup_steps == total_steps:  # Nothing left to decay over.
            return optax.linear_schedule(0.0, peak, warmup_steps)
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, 0.0)
    if kind == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
            [warmup_steps],
        )
    raise ValueError(f"Unknown schedule {kind!r}; choose 'cosine' or 'constant'.")


def scaled_learning_rate(config: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """The linear scaling rule: lr = learning_rate * batch / reference_batch_size
    (NFNet: 0.1 * batch / 256, i.e. 1.6 at batch 4096; Goyal et al. 2017)."""
    return config.learning_rate * global_batch_size / config.reference_batch_size


def sgd_agc(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    weight_decay_exclude: Sequence[str] = (),
    agc_clip: float | None = 0.01,
    agc_eps: float = 1e-3,
    agc_exclude: Sequence[str] = (r"^head/kernel$",),
) -> optax.GradientTransformation:
    """SGD with Nesterov momentum, coupled weight decay and adaptive gradient clipping (AGC),
    in the reference order: AGC on the raw gradient, then decay, then momentum."""
    parts = []
    if agc_clip is not None:
        parts.append(
            optax.masked(optax.adaptive_grad_clip(agc_clip, agc_eps), agc_mask(agc_exclude))
        )
    if weight_decay:
        parts.append(
            optax.add_decayed_weights(weight_decay, weight_decay_mask(weight_decay_exclude))
        )
    parts += [
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    ]
    return optax.chain(*parts)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.05,
    weight_decay_exclude: Sequence[str] = (),
    clip_global_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay (scaled by the learning rate, as in PyTorch and optax),
    not applied to 1-D parameters or to `weight_decay_exclude` paths."""
    parts = [optax.clip_by_global_norm(clip_global_norm)] if clip_global_norm else []
    parts.append(
        optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
            mask=weight_decay_mask(weight_decay_exclude),
        )
    )
    return optax.chain(*parts)


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer named by `config.name` ('sgd_agc' or 'adamw') with its config fields."""
    if config.name == "sgd_agc":
        return sgd_agc(
            schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            weight_decay_exclude=tuple(config.weight_decay_exclude),
            agc_clip=config.agc_clip,
            agc_eps=config.agc_eps,
            agc_exclude=tuple(config.agc_exclude),
        )
    if config.name == "adamw":
        return adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            weight_decay_exclude=tuple(config.weight_decay_exclude),
            clip_global_norm=config.clip_global_norm,
        )
    raise ValueError(f"Unknown optimizer {config.name!r}; choose 'sgd_agc' or 'adamw'.")


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """The reference's EMA warm-up: min(decay, (1 + t) / (10 + t)) at optimizer step t."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema_params, params, step: jax.Array, decay: float):
    """ema <- d * ema + (1 - d) * params, with d = ema_decay(step, decay)."""
    d = ema_decay(step, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)
