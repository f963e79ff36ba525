"""The train state and the pure, jittable train and eval steps shared by every model family.

Every random draw of a step (dropout, stochastic depth, MixUp/CutMix) comes from
fold_in(key(seed), step), so step s computes the same thing in a resumed run as in an
uninterrupted one.
"""

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

import optim
import sam
from mixing import mix_batch
from vit.posemb import resize_grid


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken = global batches consumed
    params: Any
    opt_state: Any
    batch_stats: Any  # {} for models without BatchNorm
    ema_params: Any  # None when EMA is off
    nonfinite_count: jax.Array  # steps whose loss or gradient was NaN/Inf (update skipped)
    first_nonfinite_step: jax.Array  # the first such step, -1 if none
    replaced_records: jax.Array  # corrupt training records substituted by the input pipeline


def create_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
    ema: bool,
) -> TrainState:
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        batch_stats=variables.get("batch_stats", {}),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        nonfinite_count=jnp.zeros((), jnp.int32),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
        replaced_records=jnp.zeros((), jnp.int32),
    )


def smoothed_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """(1 - eps) * one_hot + eps / K (Szegedy et al. 2016)."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def _apply(model, params, batch_stats, images, train, rng=None):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    rngs = {"dropout": rng} if rng is not None else None
    if train and batch_stats:
        logits, updates = model.apply(
            variables, images, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]
    return model.apply(variables, images, train=train, rngs=rngs), batch_stats


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int,
    num_classes: int,
    normalize: Callable[[jax.Array], jax.Array],
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    grad_accum_steps: int = 1,
    ema_decay: float | None = None,
    sam_rho: float = 0.0,
    sam_ascent_fraction: float = 1.0,
    sam_num_groups: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns step(state, batch) -> (state, metrics) for batches {'image': uint8, 'label'}
    (and optionally 'replaced', the input pipeline's per-example substitution flags).

    With `grad_accum_steps` = k the batch is processed as k sequential micro-batches whose
    gradients are averaged, the same update as one pass over the whole batch (up to float
    summation order, and BatchNorm statistics taken per micro-batch). A step whose loss or
    gradient is not finite leaves params, optimizer state and EMA unchanged and is counted.

    With `sam_rho` > 0 the gradient is SAM's descent gradient (`sam.py`: ascent on the first
    `sam_ascent_fraction` of each of `sam_num_groups` groups of the batch). BatchNorm then
    normalises with each group's statistics, and the running statistics are the mean over
    groups of the descent passes' updates (the ascent pass's are discarded); train loss and
    top-1 are those of the descent pass, at the perturbed params. SAM does not combine with
    gradient accumulation.
    """
    if sam_rho > 0 and grad_accum_steps > 1:
        raise ValueError("SAM (sam_rho > 0) does not combine with grad_accum_steps > 1.")

    def loss_fn(params, batch_stats, images, targets, rng):
        logits, new_stats = _apply(model, params, batch_stats, images, True, rng)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        return loss, (logits, new_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def sam_pass(state, images, targets, rng):
        """(loss, logits, batch_stats, grads) of a SAM step."""

        def batch_grad(params, batch, rng):
            (loss, (logits, stats)), grads = grad_fn(
                params, state.batch_stats, batch["images"], batch["targets"], rng
            )
            return grads, (loss, logits, stats)

        sam_grad = sam.sam_gradient(
            batch_grad, rho=sam_rho, ascent_fraction=sam_ascent_fraction,
            num_groups=sam_num_groups,
        )
        grads, (loss, logits, stats) = sam_grad(
            state.params, {"images": images, "targets": targets}, rng
        )
        stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
        return jnp.mean(loss), logits.reshape(-1, logits.shape[-1]), stats, grads

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        dropout_rng, mix_rng = jax.random.split(rng)
        images = normalize(batch["image"])
        targets = smoothed_targets(batch["label"], num_classes, label_smoothing)
        images, targets = mix_batch(
            mix_rng, images, targets, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha
        )

        if sam_rho > 0:
            loss, logits, batch_stats, grads = sam_pass(state, images, targets, dropout_rng)
        elif grad_accum_steps == 1:
            (loss, (logits, batch_stats)), grads = grad_fn(
                state.params, state.batch_stats, images, targets, dropout_rng
            )
        else:
            split = lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:])

            def micro_step(carry, inputs):
                grads_sum, loss_sum, stats = carry
                i, micro_images, micro_targets = inputs
                (loss, (logits, stats)), grads = grad_fn(
                    state.params, stats, micro_images, micro_targets,
                    jax.random.fold_in(dropout_rng, i),
                )
                grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
                return (grads_sum, loss_sum + loss, stats), logits

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, loss, batch_stats), logits = jax.lax.scan(
                micro_step,
                (zeros, jnp.zeros(()), state.batch_stats),
                (jnp.arange(grad_accum_steps), split(images), split(targets)),
            )
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
            loss = loss / grad_accum_steps
            logits = logits.reshape(-1, logits.shape[-1])

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = state.ema_params
            if ema is not None:
                ema = optim.ema_update(ema, params, state.step, ema_decay)
            return params, opt_state, batch_stats, ema

        def skip(_):
            return state.params, state.opt_state, state.batch_stats, state.ema_params

        # A branch rather than a select of old and new values: the skipped update is never
        # computed, and the new state can reuse the old one's buffers.
        params, opt_state, batch_stats, ema = jax.lax.cond(finite, update, skip, None)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            batch_stats=batch_stats,
            ema_params=ema,
            nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
            first_nonfinite_step=jnp.where(
                (state.first_nonfinite_step < 0) & ~finite, state.step,
                state.first_nonfinite_step,
            ),
            replaced_records=state.replaced_records
            + jnp.sum(batch.get("replaced", jnp.zeros((), bool)), dtype=jnp.int32),
        )
        metrics = {
            "train_loss": loss,
            "train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(state.params),
            "lr": schedule(state.step),
        }
        return new_state, metrics

    return step


def fit_position_embedding(model: nn.Module, params, image_shape: tuple[int, ...]):
    """`params` of a ViT with a learned position embedding, resampled to the token grid of
    NHWC images of `image_shape` (e.g. evaluation at 480 px of a model trained at 384 px);
    unchanged for any other model or the training grid. Bilinear, by `vit.posemb.resize_grid`
    as fine-tuning's `vit.posemb.resample`; the training grid is square. Shapes are static, so
    under `jit` this costs one small resize per step and nothing when the grids agree."""
    if "pos_embedding" not in params or not hasattr(model, "pos_embedding_prefix"):
        return params
    prefix, embedding = model.pos_embedding_prefix, params["pos_embedding"]
    rows, cols = image_shape[1] // model.patch_size, image_shape[2] // model.patch_size
    entries = embedding.shape[1] - prefix
    if entries == rows * cols:
        return params
    side = math.isqrt(entries)
    grid = resize_grid(embedding[:, prefix:], (side, side), (rows, cols))
    embedding = jnp.concatenate([embedding[:, :prefix], grid.astype(embedding.dtype)], 1)
    return {**params, "pos_embedding": embedding}


def make_eval_step(
    model: nn.Module, normalize: Callable[[jax.Array], jax.Array]
) -> Callable[[Any, Any, dict], dict]:
    """Returns eval_step(params, batch_stats, batch) -> sums over the real (mask=True) examples
    of: cross-entropy loss (no smoothing), top-1 and top-5 hits, and the example count.

    Images may have another resolution than the training ones: the convolutional models pool
    globally, and a ViT's learned position embedding is resampled to the images' grid
    (`fit_position_embedding`)."""

    def eval_step(params, batch_stats, batch: dict) -> dict:
        params = fit_position_embedding(model, params, batch["image"].shape)
        logits, _ = _apply(model, params, batch_stats, normalize(batch["image"]), False)
        labels = batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return {
            "loss": jnp.sum(loss * mask),
            "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step
