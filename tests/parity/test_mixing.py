"""MixUp/CutMix 'halves' mode (training/mixing.py) against a NumPy transcription of the NFNet
reference (deepmind-research/nfnets dataset.py: `cutmix_padding`, `my_mixup_cutmix`, and
experiment.py's label mixing), and its independence from how the batch is split over devices."""

import functools

import jax
import numpy as np
import pytest

from training import mixing, steps

H, W, K = 7, 9, 5  # image height, width and classes: odd and uneven, to catch swapped axes


def reference_cutmix_padding(h, w, r_x, r_y, image1_proportion):
    """The reference's mask for one example: 1 inside the box, float32 arithmetic as in TF."""
    ratio = np.sqrt(np.float32(1) - np.float32(image1_proportion))
    r_w, r_h = int(ratio * np.float32(w)), int(ratio * np.float32(h))
    x1, y1 = np.clip(r_x - r_w // 2, 0, w), np.clip(r_y - r_h // 2, 0, h)
    x2, y2 = np.clip(r_x + r_w // 2, 0, w), np.clip(r_y + r_h // 2, 0, h)
    mask = np.zeros((h, w), np.float32)
    mask[y1:y2, x1:x2] = 1
    return mask[..., None]


def reference_mixup_cutmix(images, labels, mixup_ratio, mask):
    """`my_mixup_cutmix` on one device's batch of 2b examples (b outputs), then experiment.py's
    targets: ratio * one_hot(labels) + (1 - ratio) * one_hot(mix_labels)."""
    bs = len(images) // 4
    ratio = mixup_ratio[:bs, None, None, None]
    mixup_images = ratio * images[:bs] + (1 - ratio) * images[bs : 2 * bs]
    cut = mask[2 * bs : 3 * bs]
    cutmix_images = cut * images[2 * bs : 3 * bs] + (1 - cut) * images[-bs:]
    cutmix_ratio = cut.mean(axis=(1, 2, 3))
    out_ratio = np.concatenate([mixup_ratio[:bs], cutmix_ratio])
    first = np.concatenate([labels[:bs], labels[2 * bs : 3 * bs]])
    second = np.concatenate([labels[bs : 2 * bs], labels[-bs:]])
    one_hot = np.eye(K, dtype=np.float32)
    targets = out_ratio[:, None] * one_hot[first] + (1 - out_ratio[:, None]) * one_hot[second]
    return np.concatenate([mixup_images, cutmix_images]), targets, first


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, H, W, 3)).astype(np.float32)
    return images, rng.integers(0, K, n)


@functools.partial(jax.jit, static_argnames="alphas")
def _mix_halves(key, images, labels, positions, smoothing, alphas):
    """`mixing.mix` in 'halves' mode, and the pairs' draws (jitted: one compilation per shape)."""
    targets = steps.smoothed_targets(labels, K, smoothing)
    mixed = mixing.mix(
        key, images, targets, labels, positions,
        mode="halves", mixup_alpha=alphas[0], cutmix_alpha=alphas[1],
    )
    return mixed, mixing.pair_draws(key, positions[0::2] // 2, H, W, *alphas)


def mix_halves(images, labels, positions, key=None, alphas=(0.2, 1.0), smoothing=0.0):
    key = jax.random.key(7) if key is None else key
    return _mix_halves(key, images, labels, positions, smoothing, alphas=alphas)


def test_halves_match_the_reference_with_the_same_draws():
    n = 16  # one device's 2b = 16 examples: 4 MixUp and 4 CutMix outputs
    images, labels = batch(n)
    key = jax.random.key(11)
    (out, targets, out_labels, positions), draws = mix_halves(images, labels, np.arange(n), key)
    draws = jax.tree.map(np.asarray, draws)
    # Our pair 2j (examples 4j, 4j + 1) is the reference's MixUp pair j (Q0[j], Q1[j]); our pair
    # 2j + 1 (examples 4j + 2, 4j + 3) its CutMix pair j (Q2[j], Q3[j]).
    order = np.concatenate([np.arange(q, n, 4) for q in range(4)])
    quarter = n // 4
    mixup_ratio = np.zeros(n, np.float32)
    mixup_ratio[:quarter] = draws["mixup_ratio"][0::2]
    mask = np.zeros((n, H, W, 1), np.float32)
    for j, pair in enumerate(range(1, n // 2, 2)):
        mask[2 * quarter + j] = reference_cutmix_padding(
            H, W, draws["cx"][pair], draws["cy"][pair], draws["image1_share"][pair]
        )
    assert 0 < mask.mean() < 1
    ref_images, ref_targets, ref_labels = reference_mixup_cutmix(
        images[order], labels[order], mixup_ratio, mask
    )
    interleave = np.stack([np.arange(quarter), np.arange(quarter) + quarter], 1).reshape(-1)
    np.testing.assert_allclose(out, ref_images[interleave], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, ref_targets[interleave], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out_labels, ref_labels[interleave])
    np.testing.assert_array_equal(positions, np.arange(n // 2))
    # CutMix outputs are pixels of their two images only.
    for j in range(quarter):
        a, b = images[4 * j + 2], images[4 * j + 3]
        assert np.all((out[2 * j + 1] == a) | (out[2 * j + 1] == b))


def test_label_smoothing_commutes_with_label_mixing():
    # experiment.py smooths the mixed targets; the step mixes smoothed ones: the same targets.
    images, labels = batch(16, seed=1)
    (_, plain, _, _), _ = mix_halves(images, labels, np.arange(16))
    (_, smooth, _, _), _ = mix_halves(images, labels, np.arange(16), smoothing=0.1)
    np.testing.assert_allclose(smooth, np.asarray(plain) * 0.9 + 0.1 / K, rtol=1e-6)
    np.testing.assert_allclose(np.sum(smooth, -1), 1.0, rtol=1e-6)


def test_halves_do_not_depend_on_the_device_count():
    # 8 devices of 2 examples: each holds a single pair, MixUp on even devices, CutMix on odd.
    n, size = 16, 2
    images, labels = batch(n, seed=2)
    (*whole, _), _ = mix_halves(images, labels, np.arange(n))
    parts = [
        mix_halves(images[s : s + size], labels[s : s + size], np.arange(s, s + size))[0]
        for s in range(0, n, size)
    ]
    images_parts, targets_parts, labels_parts, positions_parts = zip(*parts, strict=True)
    # Equal up to float rounding (XLA may fuse the blend differently for other shapes).
    np.testing.assert_allclose(whole[0], np.concatenate(images_parts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole[1], np.concatenate(targets_parts), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(whole[2], np.concatenate(labels_parts))
    np.testing.assert_array_equal(np.concatenate(positions_parts), np.arange(n // 2))


def test_unknown_mix_modes_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="mix_mode 'half'.*'switch', 'halves'"):
        mixing.check_mix_mode("half")
    assert mixing.inputs_per_trained_example("halves", 0.2, 1.0) == 2
    assert mixing.inputs_per_trained_example("halves", 0.0, 0.0) == 1
    assert mixing.inputs_per_trained_example("switch", 0.2, 1.0) == 1


def test_a_step_in_halves_mode_trains_on_half_the_batch_it_reads():
    import train
    from configs import quickstart

    config = quickstart.get_config()
    config.update(mix_mode="halves", mixup_alpha=0.2, cutmix_alpha=1.0, global_batch_size=64)
    assert train.trained_per_step(config) == 32
    counters = dict(nonfinite_count=0, replaced_records=0)
    record = train.progress_record(10, {}, counters, 0.5, config, 640, 100, ideal_step_time=None)
    assert (record["examples_seen"], record["examples_trained"]) == (640, 320)
    assert record["epoch"] == 1.0 and record["examples_per_sec"] == 64
    config.mix_mode = "switch"
    assert train.trained_per_step(config) == 64
