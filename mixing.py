"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on device, inside the train step.

As timm's `Mixup` in its default 'batch' mode: one mixing coefficient per batch, and a coin flip
with `switch_prob` choosing CutMix over MixUp when both are enabled. CutMix's coefficient is
corrected to the pasted box's actual area. Every draw comes from the key passed in, which the
loop derives from (seed, step), so a resumed run mixes identically.

Pairs. Each example is mixed with its neighbour: 2i with 2i + 1. (timm pairs the mirrored
positions i and B - 1 - i, which on a mesh are on different devices.) Any batch split into even
shards holds whole pairs, so the train step mixes each device's shard on its own and the pairs
are the same on every mesh.
"""

import jax
import jax.numpy as jnp


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
