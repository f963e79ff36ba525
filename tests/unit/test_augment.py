"""Stateless training and evaluation preprocessing (imagedata/augment.py)."""

import numpy as np
import pytest
import tensorflow as tf

from imagedata import augment


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def seed(i):
    return tf.constant([i, 7], tf.int64)


def test_inception_crop_windows_respect_area_and_aspect_ranges():
    shape = tf.constant([120, 90, 3])
    for i in range(60):
        top, left, h, w = augment.inception_crop_window(
            shape, seed(i), (0.08, 1.0), (3 / 4, 4 / 3), fallback_crop_ratio=0.875
        ).numpy()
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 90
        if (h, w) == (78, 78):  # Fallback: central square of floor(0.875 * 90).
            assert (top, left) == (21, 6)
            continue
        # Integer rounding of the sampled box moves the fractions slightly off the bounds.
        assert 0.07 <= h * w / (120 * 90) <= 1.0
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_impossible_crop_falls_back_to_the_central_crop():
    # No window of a 100x10 image covers >= 90% of it with aspect in [1, 1.1].
    window = augment.inception_crop_window(
        tf.constant([100, 10, 3]), seed(0), (0.9, 1.0), (1.0, 1.1), fallback_crop_ratio=0.5
    )
    np.testing.assert_array_equal(window.numpy(), [48, 3, 5, 5])


@pytest.mark.parametrize("encode", [tf.io.encode_png, tf.io.encode_jpeg])
def test_decode_crop_reads_the_window(encode):
    image = noise(40, 30)
    window = tf.constant([5, 7, 20, 16])
    encoded = encode(image)
    cropped = augment.decode_crop(encoded, lambda shape: window).numpy()
    decoded = tf.io.decode_image(encoded, channels=3).numpy()
    np.testing.assert_array_equal(cropped, decoded[5:25, 7:23])
    raw = augment.decode_crop(tf.constant(image), lambda shape: window).numpy()
    np.testing.assert_array_equal(raw, image[5:25, 7:23])


def test_greyscale_and_rgba_arrays_become_rgb():
    grey = noise(6, 6)[..., :1]
    np.testing.assert_array_equal(augment.decode(tf.constant(grey)).numpy(), np.repeat(grey, 3, -1))
    rgba = noise(6, 6, 1).repeat(2, axis=-1)[..., :4]
    np.testing.assert_array_equal(augment.decode(tf.constant(rgba)).numpy(), rgba[..., :3])


def test_train_image_is_a_pure_function_of_its_seed():
    p = augment.TrainPreprocessing(resolution=16, randaugment=(2, 9), random_erasing=0.5)
    image = tf.io.encode_jpeg(noise(30, 40))
    train = tf.function(lambda s: augment.train_image(image, s, p), autograph=False)
    first, again, other = train(seed(1)).numpy(), train(seed(1)).numpy(), train(seed(2)).numpy()
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_flip_mirrors_or_keeps():
    image = noise(5, 8)
    outcomes = set()
    for i in range(16):
        out = augment.random_flip(tf.constant(image), seed(i)).numpy()
        flipped = np.array_equal(out, image[:, ::-1])
        assert flipped or np.array_equal(out, image)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_random_erasing_erases_one_rectangle_of_the_specified_size():
    image = np.full((64, 48, 3), 100, np.uint8)
    kept = augment.random_erasing(tf.constant(image), seed(0), 0.0, (0.5,) * 3, (0.2,) * 3)
    np.testing.assert_array_equal(kept.numpy(), image)
    for i in range(10):
        out = augment.random_erasing(tf.constant(image), seed(i), 1.0, (0.5,) * 3, (0.2,) * 3)
        changed = np.any(out.numpy() != image, axis=-1)
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 0.015 <= h * w / (64 * 48) <= 1 / 3 + 0.02
        assert 0.3 - 0.1 <= w / h <= 1 / 0.3 + 0.5
        # Noise of mean 0.5 * 255 and std 0.2 * 255 fills the whole rectangle.
        values = out.numpy()[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(float)
        assert abs(values.mean() - 127.5) < 12 and abs(values.std() - 51) < 12


def test_eval_image_resizes_the_shorter_side_then_centre_crops():
    image = noise(50, 80)
    p = augment.EvalPreprocessing(resolution=20, crop_ratio=0.8)
    out = augment.eval_image(tf.io.encode_png(image), p).numpy()
    # Shorter side to floor(20 / 0.8) = 25: 50x80 -> 25x40, then the central 20x20.
    resized = tf.image.resize(image, [25, 40], method="bicubic").numpy()
    expected = np.clip(np.round(resized), 0, 255).astype(np.uint8)[3:23, 10:30]
    np.testing.assert_array_equal(out, expected)
    assert augment.eval_image(tf.constant(noise(20, 20)), augment.EvalPreprocessing(20, 1.0)).shape
    identity = augment.eval_image(tf.constant(image[:20, :20]), augment.EvalPreprocessing(20, 1.0))
    np.testing.assert_array_equal(identity.numpy(), image[:20, :20])


def test_resize_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="config.data.interpolation"):
        augment.resize(tf.constant(noise(4, 4)), 2, 2, "cubic")


def test_full_area_crop_falls_back_to_the_central_crop_like_the_reference():
    # The only window covering 100% of the area is the whole image, which the reference treats
    # as a failed sample and replaces by the central crop of side floor(0.875 * 32) = 28.
    image = noise(32, 32)
    p = augment.TrainPreprocessing(resolution=32, area_range=(1.0, 1.0), flip=False)
    out = augment.train_image(tf.constant(image), seed(3), p).numpy()
    expected = augment.resize(tf.constant(image[2:30, 2:30]), 32, 32, "bicubic").numpy()
    np.testing.assert_array_equal(out, expected)
