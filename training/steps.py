"""The train state and the pure, jittable train and eval steps shared by every model family.

Every random draw of a step comes from fold_in(key(seed), step), per example for dropout and
stochastic depth (fold_in of that with the example's position in the global batch), so step s
computes the same thing in a resumed run as in an uninterrupted one, on any mesh.
"""

import contextlib
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec

from imagedata import data_config
from training import data_parallel, fsdp, mixing, optim, sam
from training.sharding import BATCH_AXES, batch_sharding, replicated
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


def _train_forward(model, bn_axes: tuple[str, ...]):
    """forward(params, batch_stats, images, keys) -> (logits, new batch_stats): the model in
    training mode applied to each example with its own key (`vmap` over EXAMPLE_AXIS), its
    BatchNorm statistics averaged over EXAMPLE_AXIS and `bn_axes`."""
    axes = (data_parallel.EXAMPLE_AXIS, *bn_axes)
    model = data_parallel.with_batch_norm_axes(model, axes)

    def forward(params, batch_stats, images, keys):
        def one(image, key):
            logits, stats = _apply(model, params, batch_stats, image[None], True, key)
            return logits[0], stats

        with data_parallel.check_batch_norm_axes(axes):
            return jax.vmap(one, axis_name=data_parallel.EXAMPLE_AXIS, out_axes=(0, None))(
                images, keys
            )

    return forward


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
    mix_mode: str = "switch",
    grad_accum_steps: int = 1,
    ema_decay: float | None = None,
    sam_rho: float = 0.0,
    sam_ascent_fraction: float = 1.0,
    sam_num_groups: int = 1,
    mesh: Mesh | None = None,
    param_shardings: Any = None,
    fsdp_gather_dtype: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns step(state, batch) -> (state, metrics) for batches {'image': uint8, 'label'}
    (and optionally 'replaced', the input pipeline's per-example substitution flags).

    The loss and gradient are computed per device (`data_parallel`: shard_map over the batch
    axes of `mesh`, default the mesh set by `jax.set_mesh`, with FSDP params gathered layer by
    layer per their `param_shardings`, `training/fsdp.py`, in `fsdp_gather_dtype`) and per
    example, so each device does its share of the work and nothing but gradients, parameters
    and per-channel statistics crosses devices; the optimizer update runs on the sharded state.
    Results do not depend on the mesh.

    With `grad_accum_steps` = k the batch is processed as k sequential micro-batches whose
    gradients are averaged, the same update as one pass over the whole batch (up to float
    summation order, and BatchNorm statistics taken per micro-batch). Micro-batch i holds the
    examples at positions i, i + k, i + 2k, ... of the global batch, so each lies on every
    device in equal parts. A step whose loss or gradient is not finite leaves params, optimizer
    state and EMA unchanged and is counted.

    MixUp/CutMix (`mixing.mix`, `mix_mode` 'switch' or 'halves') run per device after
    normalisation; in 'halves' mode (the NFNet reference) the step trains on half the examples
    of the batch, each a mix of two (micro-batches and SAM groups are then formed from those).

    With `sam_rho` > 0 the gradient is SAM's descent gradient (`training/sam.py`: ascent on the
    first `sam_ascent_fraction` of each of `sam_num_groups` groups of the batch). BatchNorm then
    normalises with each group's statistics, and the running statistics are the mean over
    groups of the descent passes' updates (the ascent pass's are discarded); train loss and
    top-1 are those of the descent pass, at the perturbed params. Groups stay on their devices:
    `sam_num_groups` is a multiple of the devices (per-replica SAM), or 1 with
    `sam_ascent_fraction` 1 (global SAM). SAM does not combine with gradient accumulation.
    Under SAM the FSDP parameters are gathered whole before the model runs: a per-layer gather's
    backward pass would sum each device's ascent gradient over the 'fsdp' group.
    """
    if sam_rho > 0 and grad_accum_steps > 1:
        raise ValueError("SAM (sam_rho > 0) does not combine with grad_accum_steps > 1.")
    inputs_per_example = mixing.inputs_per_trained_example(mix_mode, mixup_alpha, cutmix_alpha)
    gather_dtype = fsdp.check_gather_dtype(fsdp_gather_dtype)

    def loss_and_grads(params, batch_stats, images, targets, keys, bn_axes):
        """(mean loss, logits, new batch_stats, gradients) of this device's examples."""
        forward = _train_forward(model, bn_axes)

        def loss_fn(params):
            logits, stats = forward(params, batch_stats, images, keys)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
            return loss, (logits, stats)

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, logits, stats, grads

    def sam_grads(params, batch_stats, images, targets, positions, rng, num_devices):
        """(loss, logits, batch_stats, grads) of a SAM step on this device's examples."""
        if sam_num_groups % num_devices == 0:  # each device holds whole groups
            local_groups, bn_axes = sam_num_groups // num_devices, ()
            ascent_reduce = lambda grads: grads
        else:  # one group over every device: global SAM, whose ascent batch is the batch
            local_groups, bn_axes = 1, BATCH_AXES
            ascent_reduce = lambda grads: jax.lax.pmean(grads, BATCH_AXES)

        def batch_grad(params, batch, pass_rng):
            keys = data_parallel.example_keys(pass_rng, batch["positions"])
            loss, logits, stats, grads = loss_and_grads(
                params, batch_stats, batch["images"], batch["targets"], keys, bn_axes
            )
            return grads, (loss, logits, stats)

        sam_grad = sam.sam_gradient(
            batch_grad, rho=sam_rho, ascent_fraction=sam_ascent_fraction,
            num_groups=local_groups, ascent_reduce=ascent_reduce,
        )
        grads, (loss, logits, stats) = sam_grad(
            params, {"images": images, "targets": targets, "positions": positions}, rng
        )
        stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
        if not bn_axes:  # per-group statistics: average the groups of every device
            stats = jax.lax.pmean(stats, BATCH_AXES)
        return jnp.mean(loss), logits.reshape(-1, logits.shape[-1]), stats, grads

    def accumulated_grads(params, batch_stats, images, targets, keys):
        """(loss, logits, batch_stats, grads) over `grad_accum_steps` strided micro-batches."""
        k = grad_accum_steps
        # Local example r * k + i is global position (device offset + r * k + i), and the
        # offset is a multiple of k: micro-batch i is the examples at positions = i mod k.
        split = lambda x: jnp.swapaxes(x.reshape(-1, k, *x.shape[1:]), 0, 1)

        def micro_step(carry, inputs):
            grads_sum, loss_sum, stats = carry
            micro_images, micro_targets, micro_keys = inputs
            loss, logits, stats, grads = loss_and_grads(
                params, stats, micro_images, micro_targets, micro_keys, BATCH_AXES
            )
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, loss_sum + loss, stats), logits

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss, batch_stats), logits = jax.lax.scan(
            micro_step,
            (zeros, jnp.zeros(()), batch_stats),
            (split(images), split(targets), split(keys)),
        )
        grads = jax.tree.map(lambda g: g / k, grads)
        logits = jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1])  # local order
        return loss / k, logits, batch_stats, grads

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        device_mesh = data_parallel.resolve_mesh(mesh)
        num_devices = data_parallel.num_batch_shards(device_mesh)
        error = sam.device_layout_error(sam_num_groups, sam_ascent_fraction, num_devices)
        if sam_rho > 0 and error:
            raise ValueError(error)
        specs = data_parallel.param_specs(state.params, param_shardings)
        layouts = fsdp.sharded_layouts(state.params, specs)
        per_layer = layouts is not None and sam_rho == 0  # SAM: whole gathers (docstring)
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        dropout_rng, mix_rng = jax.random.split(rng)

        def on_device(params, batch_stats, images, labels, lighting):
            if per_layer:
                gathering = fsdp.per_layer(layouts, gather_dtype)
            else:
                params = data_parallel.gather_params(params, specs)
                gathering = contextlib.nullcontext()
            positions = data_parallel.example_positions(images.shape[0])
            # `lighting`: PCA lighting offsets (config.data.pca_lighting_std), or None.
            images = normalize(images) if lighting is None else normalize(images, lighting)
            targets = smoothed_targets(labels, num_classes, label_smoothing)
            # Identity without MixUp and CutMix; in 'halves' mode half as many come out, with
            # their labels and positions in the trained batch.
            images, targets, labels, positions = mixing.mix(
                mix_rng, images, targets, labels, positions, mode=mix_mode,
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
            )
            keys = data_parallel.example_keys(dropout_rng, positions)
            with gathering:
                if sam_rho > 0:
                    loss, logits, stats, grads = sam_grads(
                        params, batch_stats, images, targets, positions, dropout_rng, num_devices
                    )
                elif grad_accum_steps == 1:
                    loss, logits, stats, grads = loss_and_grads(
                        params, batch_stats, images, targets, keys, BATCH_AXES
                    )
                else:
                    loss, logits, stats, grads = accumulated_grads(
                        params, batch_stats, images, targets, keys
                    )
            correct = jnp.sum(jnp.argmax(logits, -1) == labels)
            return (
                jax.lax.pmean(loss, BATCH_AXES),
                jax.lax.psum(correct, BATCH_AXES),
                stats,
                data_parallel.mean_gradients(grads, specs, num_devices, scattered=per_layer),
            )

        batch_spec = PartitionSpec(BATCH_AXES)
        loss, correct, batch_stats, grads = jax.shard_map(
            on_device,
            mesh=device_mesh,
            in_specs=(specs, PartitionSpec(), batch_spec, batch_spec, batch_spec),
            out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), specs),
            check_vma=False,
        )(state.params, state.batch_stats, batch["image"], batch["label"], batch.get("lighting"))

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
            "train_top1": correct / (batch["label"].shape[0] // inputs_per_example),
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
    model: nn.Module,
    normalize: Callable[[jax.Array], jax.Array],
    *,
    mesh: Mesh | None = None,
    param_shardings: Any = None,
    fsdp_gather_dtype: str | None = None,
) -> Callable[[Any, Any, dict], dict]:
    """Returns eval_step(params, batch_stats, batch) -> sums over the real (mask=True) examples
    of: cross-entropy loss (no smoothing), top-1 and top-5 hits, and the example count.

    Each device evaluates its own examples (`data_parallel`, as the train step, FSDP parameters
    gathered layer by layer) and the sums are added over devices. Images may have another
    resolution than the training ones: the convolutional models pool globally, and a ViT's
    learned position embedding is resampled to the images' grid (`fit_position_embedding`)."""
    gather_dtype = fsdp.check_gather_dtype(fsdp_gather_dtype)

    def eval_step(params, batch_stats, batch: dict) -> dict:
        specs = data_parallel.param_specs(params, param_shardings)
        layouts = fsdp.sharded_layouts(params, specs)

        def on_device(params, batch_stats, images, labels, mask):
            gathering = contextlib.nullcontext()
            if layouts is not None:
                params, layer_layouts = fsdp.gather_root(params, layouts, gather_dtype)
                gathering = fsdp.per_layer(layer_layouts, gather_dtype)
            params = fit_position_embedding(model, params, images.shape)
            with gathering:
                logits, _ = _apply(model, params, batch_stats, normalize(images), False)
            mask = mask.astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            sums = {
                "loss": jnp.sum(loss * mask),
                "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
                "count": jnp.sum(mask),
            }
            return jax.lax.psum(sums, BATCH_AXES)

        batch_spec = PartitionSpec(BATCH_AXES)
        return jax.shard_map(
            on_device,
            mesh=data_parallel.resolve_mesh(mesh),
            in_specs=(specs, PartitionSpec(), batch_spec, batch_spec, batch_spec),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(params, batch_stats, batch["image"], batch["label"], batch["mask"])

    return eval_step


# ----------------------------------------------------------------------------------------------
# The steps of a config, as train.py runs them.
# ----------------------------------------------------------------------------------------------


def normalizer(config):
    """uint8 images (and PCA lighting offsets) -> normalized images in the compute dtype."""
    return lambda images, lighting=None: data_config.normalize(
        images, config.data, jnp.dtype(config.compute_dtype), lighting
    )


def fsdp_gather_dtype(config) -> str | None:
    """config.fsdp.gather_dtype (configs/common.py), None for configs without it."""
    return config.get("fsdp", {}).get("gather_dtype")


def jit_train_step(config, model, optimizer, schedule, mesh, state_sharding):
    """The config's train step, jitted with the state's and the batch's shardings and the state
    donated (also what benchmarks/ time)."""
    step = make_train_step(
        model, optimizer, schedule,
        seed=config.seed,
        num_classes=config.data.num_classes,
        normalize=normalizer(config),
        label_smoothing=config.label_smoothing,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        mix_mode=config.get("mix_mode", "switch"),
        grad_accum_steps=config.grad_accum_steps,
        ema_decay=config.ema_decay,
        sam_rho=config.sam.rho,
        sam_ascent_fraction=config.sam.ascent_fraction,
        sam_num_groups=config.sam.num_groups,
        mesh=mesh,
        param_shardings=state_sharding.params,
        fsdp_gather_dtype=fsdp_gather_dtype(config),
    )
    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
