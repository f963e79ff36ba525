"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on device, inside the train step.

Two modes, `config.mix_mode`:

'switch' (timm's `Mixup` in its default 'batch' mode, used by ConvNeXt and ViT): one mixing
coefficient per batch, and a coin flip with `switch_prob` choosing CutMix over MixUp when both
are enabled. CutMix's coefficient is corrected to the pasted box's actual area. Each example is
mixed with its neighbour: 2i with 2i + 1. (timm pairs the mirrored positions i and B - 1 - i,
which on a mesh are on different devices.) B examples in, B out.

'halves' (the NFNet reference, deepmind-research/nfnets dataset.py `my_mixup_cutmix`,
`my_mixup`, `my_cutmix` and `cutmix_padding`). What the reference does, per device: it batches
2b examples to output b; the quarters Q0..Q3 (b/2 each) form pairs (Q0[i], Q1[i]) mixed by
MixUp and (Q2[i], Q3[i]) mixed by CutMix, the MixUp outputs first; every pair draws its own
coefficients: a MixUp ratio ~ Beta(alpha, alpha) (alpha 0.2) and a CutMix box whose centre is a
uniform pixel and whose sides are `int(sqrt(1 - u) * side)`, u ~ U(0, 1) (= Beta(1, 1)), from
`centre - side // 2` to `centre + side // 2`, clipped. Inside the box the output is the first
image, outside the second; the label weight of the first image is the MixUp ratio, or the
fraction of pixels inside the box. So the reference reads two examples per trained example;
with only one of MixUp or CutMix on, its pairs are (first half[i], second half[i]).

Here, on the global batch (positions 0..B-1, B/2 out): pair p is examples (2p, 2p + 1); output p
is pair p mixed by MixUp if p is even and by CutMix if p is odd (when only one is on, by that
one), with coefficients drawn from fold_in(key, p). Any shard of even size holds whole pairs,
and every draw depends on the pair's global index only, so each device mixes its own shard and
the result is the same on every mesh. Per device this is the reference applied to its shard
reordered as [x[0::4] | x[1::4] | x[2::4] | x[3::4]], with the outputs interleaved (MixUp,
CutMix, MixUp, ...) rather than concatenated; the examples arrive in random order, so the
reordering changes no distribution. The trained batch is half the batch read: configs that use
this mode read 2x the examples per step (configs/nfnet.py).

Every draw comes from the key passed in, which the loop derives from (seed, step), so a
resumed run mixes identically.
"""

import jax
import jax.numpy as jnp

MIX_MODES = ("switch", "halves")


def check_mix_mode(mode: str) -> None:
    if mode not in MIX_MODES:
        raise ValueError(
            f"Unknown mix_mode {mode!r}; set config.mix_mode to one of {MIX_MODES} ('switch': "
            "timm's MixUp or CutMix per batch, 'halves': the NFNet reference's MixUp on half the "
            "pairs and CutMix on the other half)."
        )


def inputs_per_trained_example(mode: str, mixup_alpha: float, cutmix_alpha: float) -> int:
    """Examples read per example trained on: 2 in 'halves' mode with mixing on, else 1."""
    check_mix_mode(mode)
    mixing = mixup_alpha > 0 or cutmix_alpha > 0
    return 2 if mode == "halves" and mixing else 1


def _cutmix_mask(key: jax.Array, height: int, width: int, lam: jax.Array) -> jax.Array:
    """A (height, width) float mask that is 0 inside a box of area (1 - lam), clipped at the
    image border, 1 elsewhere."""
    cy_key, cx_key = jax.random.split(key)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = jnp.round(height * ratio), jnp.round(width * ratio)
    cy = jax.random.randint(cy_key, (), 0, height).astype(jnp.float32)
    cx = jax.random.randint(cx_key, (), 0, width).astype(jnp.float32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys = jnp.arange(height, dtype=jnp.float32)[:, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :]
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return jnp.where(inside, 0.0, 1.0)


def neighbours(x: jax.Array) -> jax.Array:
    """x with examples 2i and 2i + 1 swapped along the leading axis."""
    if x.shape[0] % 2:
        raise ValueError(
            f"MixUp/CutMix pair neighbouring examples, so each device's batch must be even; got "
            f"{x.shape[0]}: change global_batch_size or the device count."
        )
    return x.reshape(-1, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)


def mix_batch(
    key: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Mixes a batch of images (B, H, W, C) and soft targets (B, K), B even, each example with its
    neighbour (`neighbours`); identity if both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    choice_key, lam_key, box_key = jax.random.split(key, 3)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(choice_key) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, max(cutmix_alpha, 1e-6), max(mixup_alpha, 1e-6))
    lam = jax.random.beta(lam_key, alpha, alpha)
    flipped = neighbours(images)
    height, width = images.shape[1:3]
    box = _cutmix_mask(box_key, height, width, lam)
    cut_lam = jnp.mean(box)  # the area actually kept
    mask = jnp.where(use_cutmix, box, lam)[None, :, :, None].astype(images.dtype)
    mixed = images * mask + flipped * (1 - mask)
    lam = jnp.where(use_cutmix, cut_lam, lam)
    return mixed, lam * targets + (1.0 - lam) * neighbours(targets)


def reference_cutmix_mask(
    image1_share: jax.Array, cy: jax.Array, cx: jax.Array, height: int, width: int
) -> jax.Array:
    """The reference's `cutmix_padding` for a batch of draws (P,): (P, height, width) float masks,
    1 inside the box where the first image is kept. Its sides are `int(sqrt(1 - u) * side)` (u:
    `image1_share`, a float32 draw) and it spans [centre - side // 2, centre + side // 2)."""
    ratio = jnp.sqrt(1.0 - image1_share.astype(jnp.float32))
    cut_h = (ratio * jnp.float32(height)).astype(jnp.int32)
    cut_w = (ratio * jnp.float32(width)).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    inside = (
        (ys >= y0[:, None, None]) & (ys < y1[:, None, None])
        & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    )
    return inside.astype(jnp.float32)


def pair_draws(
    key: jax.Array,
    pair_index: jax.Array,
    height: int,
    width: int,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> dict:
    """Each pair's coefficients, from fold_in(key, global pair index): MixUp ratio ~ Beta(mixup
    alpha), CutMix share u ~ Beta(cutmix alpha) (the reference's U(0, 1) at alpha 1) and the
    box centre (cy, cx), uniform over the pixels."""

    def beta(key, alpha):  # unused (0) when alpha is 0
        return jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.zeros((), jnp.float32)

    def one(p):
        ratio_key, share_key, y_key, x_key = jax.random.split(jax.random.fold_in(key, p), 4)
        return dict(
            mixup_ratio=beta(ratio_key, mixup_alpha),
            image1_share=beta(share_key, cutmix_alpha),
            cy=jax.random.randint(y_key, (), 0, height),
            cx=jax.random.randint(x_key, (), 0, width),
        )

    return jax.vmap(one)(pair_index)


def mix_pairs(
    images: jax.Array, targets: jax.Array, use_cutmix: jax.Array, draws: dict
) -> tuple[jax.Array, jax.Array]:
    """Output p = pair (2p, 2p + 1) mixed by CutMix where `use_cutmix[p]`, else by MixUp, with
    the pair's `draws` (`pair_draws`); the label weight of the first image is the MixUp ratio or
    the box's share of the pixels."""
    first, second = images[0::2], images[1::2]
    height, width = images.shape[1:3]
    box = reference_cutmix_mask(draws["image1_share"], draws["cy"], draws["cx"], height, width)
    ratio = draws["mixup_ratio"].astype(jnp.float32)
    mask = jnp.where(use_cutmix[:, None, None], box, ratio[:, None, None])
    mask = mask[..., None].astype(images.dtype)
    mixed = mask * first + (1 - mask) * second
    weight = jnp.where(use_cutmix, jnp.mean(box, axis=(1, 2)), ratio)[:, None]
    return mixed, weight * targets[0::2] + (1.0 - weight) * targets[1::2]


def mix_halves(
    key: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    labels: jax.Array,
    positions: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The NFNet reference's mixing ('halves', see the module docstring) of this device's
    examples at global `positions`: (images, targets, labels of the first images, positions in
    the trained batch), half as many as came in."""
    neighbours(images)  # refuses an odd batch
    pair_index = positions[0::2] // 2
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = pair_index % 2 == 1
    else:
        use_cutmix = jnp.full(pair_index.shape, cutmix_alpha > 0)
    height, width = images.shape[1:3]
    draws = pair_draws(key, pair_index, height, width, mixup_alpha, cutmix_alpha)
    mixed, mixed_targets = mix_pairs(images, targets, use_cutmix, draws)
    return mixed, mixed_targets, labels[0::2], pair_index


def mix(
    key: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    labels: jax.Array,
    positions: jax.Array,
    *,
    mode: str,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """This device's (images, soft targets, labels, global positions) after mixing by `mode`;
    identity if both alphas are 0. In 'halves' mode half as many come out (the labels and
    positions are then those of the outputs: the first image's label, the position in the
    trained batch)."""
    check_mix_mode(mode)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets, labels, positions
    if mode == "halves":
        return mix_halves(
            key, images, targets, labels, positions,
            mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
        )
    images, targets = mix_batch(
        key, images, targets, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha
    )
    return images, targets, labels, positions
