"""Optimizers, schedules and weight averaging, composed from optax pieces.

SGD + Nesterov + AGC follows the NFNet reference (deepmind-research/nfnets `optim.SGD_AGC`)
update for update:
    g <- AGC(g)             per unit: g * clip * max(|w|, eps) / |g| if |g| > clip * max(|w|, eps)
    g <- g + wd * w         coupled weight decay, on conv and dense kernels only
    m <- momentum * m + g
    w <- w - lr * (g + momentum * m)           (Nesterov)
AdamW (Loshchilov & Hutter 2019) is optax's, with decoupled decay masked the same way.
"""

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from modeling import block_stack


def path_mask(params, predicate: Callable[[str, jax.Array], bool]):
    """A pytree of bools: predicate('/'-joined path, leaf) for every leaf of `params`."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: predicate(k, v) for k, v in flat.items()}, sep="/")


def matches_any(path: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, path) for p in patterns)


# The params every recipe here decays: the kernels of convolutions and dense layers (Flax's
# 'kernel'). NFNet (deepmind-research/nfnets): no decay on gains and biases; ConvNeXt
# (facebookresearch/ConvNeXt `create_optimizer`): none on biases and 1-D params; big_vision's
# ViT configs: `wd_mults` of '.*/kernel' only. Names are the same whether blocks are scanned.
KERNELS = (r"(^|/)kernel$",)


def weight_decay_mask(include: Sequence[str] = KERNELS, exclude: Sequence[str] = ()) -> Callable:
    """Decay the params whose '/'-joined path matches one of the `include` regexes and none of
    the `exclude` ones: by name, so that stacked (scanned) and unrolled blocks, multi-head
    biases of shape (heads, head_dim) and 3-D position embeddings are decayed as their recipe
    says, whatever their number of dimensions."""
    return lambda params: path_mask(
        params, lambda path, x: matches_any(path, include) and not matches_any(path, exclude)
    )


def agc_mask(exclude: Sequence[str]) -> Callable:
    """Clip every parameter except those matching `exclude`: the reference leaves out the
    final linear layer's weight (its bias is clipped; Brock et al. 2021a, Section 4.1)."""
    return lambda params: path_mask(params, lambda path, x: not matches_any(path, exclude))


def per_block(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """The stateless, leaf-by-leaf `inner` (e.g. AGC, whose unit-wise norms depend on a
    parameter's shape) applied to each block of a stacked parameter on its own, so scanned and
    unrolled layouts (`block_stack`) are transformed alike."""

    def update(updates, state, params):
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        out = []
        for (key, update), param in zip(flat, treedef.flatten_up_to(params), strict=True):
            one = lambda u, p: inner.update(u, inner.init(p), p)[0]
            if block_stack.is_stacked(jax.tree_util.keystr(key, simple=True, separator="/")):
                one = jax.vmap(one)
            out.append(one(update, param))
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


SCHEDULES = ("cosine", "constant", "pycls", "pycls_per_step")


def check_schedule(kind: str, warmup_factor: float, min_lr_fraction: float) -> None:
    """Raises ValueError, one sentence naming the valid values, for a bad schedule setting."""
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule {kind!r}; choose one of {SCHEDULES}.")
    for name, value in (("warmup_factor", warmup_factor), ("min_lr_fraction", min_lr_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(
                f"optimizer.{name} is {value}; choose a fraction of the peak lr in [0, 1]."
            )


def pycls_cosine(
    peak: float, length: float, warmup: float, warmup_factor: float, min_lr_fraction: float
) -> optax.Schedule:
    """pycls's `get_epoch_lr` with `lr_fun_cos` (pycls/core/optimizer.py) at time t (epochs, or
    steps): peak * ((1 - min) * (1 + cos(pi t / length)) / 2 + min), multiplied during the
    warm-up (t < warmup) by factor * (1 - t / warmup) + t / warmup. The warm-up scales the
    cosine of the whole run rather than preceding it."""
    cosine = optax.cosine_decay_schedule(peak, length, alpha=min_lr_fraction)
    if warmup == 0:
        return cosine
    ramp = optax.linear_schedule(warmup_factor, 1.0, warmup)
    return lambda t: cosine(t) * ramp(t)


def whole_epochs(steps: int, steps_per_epoch: Fraction) -> Fraction:
    """`steps` in epochs, or the whole number of epochs it is within one step of: pycls counts
    whole epochs (MAX_EPOCH, WARMUP_EPOCHS), which train.py floors (the run) or rounds (the
    warm-up) to steps."""
    epochs = Fraction(steps) / steps_per_epoch
    nearest = round(epochs)
    if (nearest or not steps) and abs(steps - nearest * steps_per_epoch) < 1:
        return Fraction(nearest)
    return epochs


def per_epoch(
    schedule_of_epoch: optax.Schedule, total_steps: int, steps_per_epoch: Fraction
) -> optax.Schedule:
    """The step function that holds `schedule_of_epoch(e)` through epoch e, as pycls's trainer
    sets the lr once at the start of each epoch (pycls/core/trainer.py `train_epoch`). Step s
    belongs to the epoch of its first example, floor(s / steps_per_epoch); the epochs' first
    steps are exact integers, so no rounding moves a step into another epoch."""
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    starts = jnp.asarray([math.ceil(e * steps_per_epoch) for e in range(1, num_epochs)], jnp.int32)
    values = schedule_of_epoch(jnp.arange(num_epochs, dtype=jnp.float32))
    return lambda step: values[jnp.searchsorted(starts, step, side="right")]


def learning_rate_schedule(
    peak: float,
    total_steps: int,
    warmup_steps: int,
    kind: str = "cosine",
    *,
    warmup_factor: float = 0.0,
    min_lr_fraction: float = 0.0,
    steps_per_epoch: Fraction | float | None = None,
) -> optax.Schedule:
    """The lr at each step of a run of `total_steps`, by `kind`:

    - 'cosine': linear warm-up from warmup_factor x peak to `peak` over `warmup_steps`, then
      cosine decay to min_lr_fraction x peak at `total_steps` (Loshchilov & Hutter 2017);
    - 'constant': the same warm-up, then `peak`;
    - 'pycls': pycls's rule (`pycls_cosine`, Xiao et al. 2021: factor 0.1, min 0.005) in
      epochs, set once per epoch as pycls does; needs `steps_per_epoch` (examples per epoch /
      global batch; a Fraction keeps the epochs' first steps exact);
    - 'pycls_per_step': the same rule evaluated at every step (t in steps).
    """
    check_schedule(kind, warmup_factor, min_lr_fraction)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"Warm-up of {warmup_steps} steps does not fit in a run of {total_steps} steps."
        )
    if kind == "pycls":
        if steps_per_epoch is None or steps_per_epoch <= 0:
            raise ValueError(
                f"Schedule 'pycls' sets the lr per epoch and needs steps_per_epoch > 0, got "
                f"{steps_per_epoch}; pass examples per epoch / global batch size."
            )
        steps_per_epoch = Fraction(steps_per_epoch)
        rule = pycls_cosine(
            peak, float(whole_epochs(total_steps, steps_per_epoch)),
            float(whole_epochs(warmup_steps, steps_per_epoch)), warmup_factor, min_lr_fraction,
        )
        return per_epoch(rule, total_steps, steps_per_epoch)
    if kind == "pycls_per_step":
        return pycls_cosine(peak, total_steps, warmup_steps, warmup_factor, min_lr_fraction)
    start = warmup_factor * peak
    if kind == "constant" or warmup_steps == total_steps:  # nothing left to decay over
        return optax.join_schedules(
            [optax.linear_schedule(start, peak, warmup_steps), optax.constant_schedule(peak)],
            [warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(
        start, peak, warmup_steps, total_steps, min_lr_fraction * peak
    )


def schedule_options(optimizer: ml_collections.ConfigDict) -> dict:
    """`learning_rate_schedule`'s warm-up and end fractions from `config.optimizer`."""
    return dict(
        warmup_factor=optimizer.get("warmup_factor", 0.0),
        min_lr_fraction=optimizer.get("min_lr_fraction", 0.0),
    )


def config_schedule(
    optimizer: ml_collections.ConfigDict,
    global_batch_size: int,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: Fraction,
) -> optax.Schedule:
    """The lr schedule `config.optimizer` names, its peak scaled to `global_batch_size`."""
    return learning_rate_schedule(
        scaled_learning_rate(optimizer, global_batch_size), total_steps, warmup_steps,
        optimizer.schedule, steps_per_epoch=steps_per_epoch, **schedule_options(optimizer),
    )


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
    weight_decay_include: Sequence[str] = KERNELS,
    weight_decay_exclude: Sequence[str] = (),
    agc_clip: float | None = 0.01,
    agc_eps: float = 1e-3,
    agc_exclude: Sequence[str] = (r"^head/kernel$",),
    clip_global_norm: float | None = None,
) -> optax.GradientTransformation:
    """SGD with Nesterov momentum, coupled weight decay and adaptive gradient clipping (AGC),
    in the reference order: AGC on the raw gradient, then decay, then momentum. With
    `clip_global_norm` the raw gradient is first clipped to that global norm (ViT fine-tuning,
    Dosovitskiy et al. 2021, Appendix B.1.1)."""
    parts = [optax.clip_by_global_norm(clip_global_norm)] if clip_global_norm else []
    if agc_clip is not None:
        parts.append(
            optax.masked(
                per_block(optax.adaptive_grad_clip(agc_clip, agc_eps)), agc_mask(agc_exclude)
            )
        )
    if weight_decay:
        parts.append(
            optax.add_decayed_weights(
                weight_decay, weight_decay_mask(weight_decay_include, weight_decay_exclude)
            )
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
    weight_decay_include: Sequence[str] = KERNELS,
    weight_decay_exclude: Sequence[str] = (),
    clip_global_norm: float | None = None,
) -> optax.GradientTransformation:
    """AdamW with decoupled weight decay (scaled by the learning rate, as in PyTorch and optax)
    on the params `weight_decay_mask` selects."""
    parts = [optax.clip_by_global_norm(clip_global_norm)] if clip_global_norm else []
    parts.append(
        optax.adamw(
            learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
            mask=weight_decay_mask(weight_decay_include, weight_decay_exclude),
        )
    )
    return optax.chain(*parts)


def create_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer named by `config.name` ('sgd_agc' or 'adamw') with its config fields, and
    layer-wise lr decay when `config.layer_decay` is set."""
    if config.name == "sgd_agc":
        optimizer = sgd_agc(
            schedule,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            weight_decay_include=tuple(config.weight_decay_include),
            weight_decay_exclude=tuple(config.weight_decay_exclude),
            agc_clip=config.agc_clip,
            agc_eps=config.agc_eps,
            agc_exclude=tuple(config.agc_exclude),
            clip_global_norm=config.clip_global_norm,
        )
    elif config.name == "adamw":
        optimizer = adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            weight_decay_include=tuple(config.weight_decay_include),
            weight_decay_exclude=tuple(config.weight_decay_exclude),
            clip_global_norm=config.clip_global_norm,
        )
    else:
        raise ValueError(f"Unknown optimizer {config.name!r}; choose 'sgd_agc' or 'adamw'.")
    if config.get("layer_decay") is not None:
        optimizer = optax.chain(
            optimizer, layer_decay(config.layer_decay, config.layer_decay_rule)
        )
    return optimizer


# ----------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (Clark et al. 2020, ELECTRA; Bao et al. 2022, BEiT).
# ----------------------------------------------------------------------------------------------


def convnext_layer_ids(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, int], int]:
    """ConvNeXt's layers (facebookresearch/ConvNeXt `get_num_layer_for_convnext`, adapted from
    BEiT): the stem is layer 0, stage 0's blocks layer 1, stage 1 (with its downsampling
    layer) layer 2, stage 2 in groups of three consecutive blocks layers 3, 4, ... (its
    downsampling layer with the first group), stage 3 (with its downsampling layer) layer L, and
    the head (final norm and linear) layer L + 1, where L = 3 + ceil(stage 2 depth / 3): 12 for
    ConvNeXt S/B/L/XL as in the reference; the reference refuses T, which gets L = 6 here.
    A scanned stage's stacked blocks ('stage<s>_blocks') get an array of layers, one per slice.
    Takes {'/'-joined path: shape}; returns ({path: layer}, L)."""
    stage_depth = {}
    for path, shape in shapes.items():
        if match := re.match(r"stage(\d+)_block(\d+)/", path):
            stage, depth = int(match[1]), int(match[2]) + 1
        elif match := re.match(r"stage(\d+)_blocks/", path):  # blocks 1.. stacked (scan)
            stage, depth = int(match[1]), shape[0] + 1
        else:
            continue
        stage_depth[stage] = max(stage_depth.get(stage, 0), depth)
    if sorted(stage_depth) != [0, 1, 2, 3]:
        raise ValueError(
            f"Layer decay rule 'convnext' needs a 4-stage ConvNeXt (stage<s>_block<b> params); "
            f"found stages {sorted(stage_depth)}."
        )
    num_layers = 3 + math.ceil(stage_depth[2] / 3)

    def layer(path: str):
        if path.startswith("stem_"):
            return 0
        if match := re.match(r"stage(\d+)_(?:block(\d+)/|(blocks)/|downsample_)", path):
            stage, block, stacked = int(match[1]), match[2], match[3]
            if stage != 2:
                return {0: 1, 1: 2, 3: num_layers}[stage]
            if stacked:  # one layer per slice of the leading (depth) axis
                return 3 + np.arange(1, stage_depth[2]) // 3
            return 3 + (int(block) // 3 if block is not None else 0)
        return num_layers + 1  # head_norm, head

    return {path: layer(path) for path in shapes}, num_layers


def vit_layer_ids(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, Any], int]:
    """ViT's layers (BEiT `get_num_layer_for_vit`): the stem, class token and position
    embedding are layer 0, block i is layer i + 1, and everything after the blocks (final norm,
    pooling head, pre-logits, head) is layer L + 1 for L blocks. The stacked 'blocks' params of
    a scanned model get an array of layers, one per slice of their leading (depth) axis.
    Takes {'/'-joined path: shape}; returns ({path: layer}, L)."""
    blocks = {int(m[1]) for path in shapes if (m := re.match(r"block_(\d+)/", path))}
    stacked = [shape[0] for path, shape in shapes.items() if path.startswith("blocks/")]
    if not blocks and not stacked:
        raise ValueError("Layer decay rule 'vit' needs ViT params (block_<i> or blocks).")
    num_layers = stacked[0] if stacked else max(blocks) + 1

    def layer(path: str):
        top = path.split("/")[0]
        if top in ("embedding", "stem", "pos_embedding", "cls"):
            return 0
        if match := re.fullmatch(r"block_(\d+)", top):
            return int(match[1]) + 1
        if top == "blocks":
            return np.arange(1, num_layers + 1)
        return num_layers + 1

    return {path: layer(path) for path in shapes}, num_layers


LAYER_RULES = {"convnext": convnext_layer_ids, "vit": vit_layer_ids}


def layer_decay_factors(params, decay: float, rule: str):
    """A pytree like `params` of each parameter's lr multiplier decay ** (L + 1 - layer), its
    layer given by `rule` ('convnext' or 'vit'): 1 for the head, decay for the last layer, ...
    decay ** (L + 1) for layer 0 (the stem). Factors broadcast against their leaves."""
    if rule not in LAYER_RULES:
        raise ValueError(f"Unknown layer decay rule {rule!r}; choose one of {sorted(LAYER_RULES)}.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in leaves]
    shapes = {path: np.shape(leaf) for path, (_, leaf) in zip(paths, leaves, strict=True)}
    layers, num_layers = LAYER_RULES[rule](shapes)
    factors = []
    for path in paths:
        factor = float(decay) ** (num_layers + 1 - np.asarray(layers[path], np.float64))
        factors.append(factor.reshape(factor.shape + (1,) * (len(shapes[path]) - factor.ndim)))
    return jax.tree_util.tree_unflatten(treedef, factors)


def layer_decay(decay: float, rule: str) -> optax.GradientTransformation:
    """Layer-wise lr decay: each update multiplied by `layer_decay_factors` (so the learning
    rate, and with it coupled or decoupled weight decay, is scaled per layer, as the reference's
    per-group `lr_scale`). Chain it after the optimizer."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {decay}.")
    if rule not in LAYER_RULES:
        raise ValueError(f"Unknown layer decay rule {rule!r}; choose one of {sorted(LAYER_RULES)}.")

    def update_fn(updates, state, params=None):
        del params
        factors = layer_decay_factors(updates, decay, rule)
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """The reference's EMA warm-up: min(decay, (1 + t) / (10 + t)) at optimizer step t."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema_params, params, step: jax.Array, decay: float):
    """ema <- d * ema + (1 - d) * params, with d = ema_decay(step, decay)."""
    d = ema_decay(step, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)
