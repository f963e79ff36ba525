"""RandAugment ops against PIL, the library whose operations they reproduce."""

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from imagedata import randaugment as ra

SEED = tf.constant([3, 4], tf.int64)


def photo(h=24, w=20, seed=0):
    """Smooth gradients plus noise: a histogram with gaps and a non-trivial range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([y * 5 + 20, x * 7 + 10, (x + y) * 3 + 60], axis=-1)
    return np.clip(base + rng.integers(-15, 16, base.shape), 0, 255).astype(np.uint8)


def run(op, image, level, seed=SEED):
    return op(tf.constant(image), float(level), seed).numpy()


@pytest.mark.parametrize(
    "op, pil", [(ra.equalize, ImageOps.equalize), (ra.invert, ImageOps.invert)]
)
def test_level_free_ops_match_pil(op, pil):
    image = photo()
    np.testing.assert_array_equal(run(op, image, 5), np.asarray(pil(Image.fromarray(image))))


def test_auto_contrast_stretches_each_channel_to_the_full_range():
    image = photo()
    out = run(ra.auto_contrast, image, 5)
    lo, hi = image.min((0, 1)), image.max((0, 1))
    expected = np.floor((image - lo) * 255.0 / (hi - lo))
    np.testing.assert_array_equal(out, expected)
    pil = np.asarray(ImageOps.autocontrast(Image.fromarray(image))).astype(int)
    assert np.abs(out.astype(int) - pil).max() <= 1  # PIL's double rounding, see the op.
    flat = np.full((4, 4, 3), 9, np.uint8)
    np.testing.assert_array_equal(run(ra.auto_contrast, flat, 5), flat)


@pytest.mark.parametrize("level", [5, 7.5, 10])
def test_posterize_and_solarize_match_pil(level):
    image = photo(seed=1)
    bits = int(level / 10 * 4)
    expected = np.asarray(ImageOps.posterize(Image.fromarray(image), bits))
    np.testing.assert_array_equal(run(ra.posterize, image, level), expected)
    threshold = int(level / 10 * 256)
    expected = np.asarray(ImageOps.solarize(Image.fromarray(image), threshold))
    np.testing.assert_array_equal(run(ra.solarize, image, level), expected)


def test_solarize_add_adds_below_128_only():
    image = photo(seed=2)
    addition = int(6 / 10 * 110)
    expected = np.where(image < 128, np.minimum(image.astype(int) + addition, 255), image)
    np.testing.assert_array_equal(run(ra.solarize_add, image, 6), expected)


@pytest.mark.parametrize(
    "op, enhancer",
    [
        (ra.color, ImageEnhance.Color),
        (ra.contrast, ImageEnhance.Contrast),
        (ra.brightness, ImageEnhance.Brightness),
        (ra.sharpness, ImageEnhance.Sharpness),
    ],
)
@pytest.mark.parametrize("level", [2, 9, 15])
def test_enhance_ops_match_pil_within_rounding(op, enhancer, level):
    image = photo(seed=3)
    factor = level / 10 * 1.8 + 0.1
    expected = np.asarray(enhancer(Image.fromarray(image)).enhance(factor)).astype(int)
    diff = np.abs(run(op, image, level).astype(int) - expected)
    # PIL's integer grey conversion may round one level away from ours; blending scales that
    # by |1 - factor|, and truncation adds at most one more.
    assert diff.max() <= 1 + int(abs(1 - factor)), diff.max()
    assert diff.mean() < 0.1


def test_translate_shifts_by_the_level_in_pixels_and_fills_grey():
    image = photo(30, 30)
    level = 0.5  # 100 * 0.5 / 10 = 5 pixels.
    outcomes = set()
    for i in range(8):
        out = run(ra.translate_x, image, level, tf.constant([i, 0], tf.int64))
        if np.array_equal(out[:, :25], image[:, 5:]):  # Content moved left by 5.
            assert (out[:, 25:] == 128).all()
            outcomes.add("left")
        else:
            np.testing.assert_array_equal(out[:, 5:], image[:, :25])
            assert (out[:, :5] == 128).all()
            outcomes.add("right")
    assert outcomes == {"left", "right"}
    out = run(ra.translate_y, image, level)
    assert np.array_equal(out[:25], image[5:]) or np.array_equal(out[5:], image[:25])


def test_rotate_by_ninety_degrees_is_exact():
    image = photo(21, 21)  # Odd size: the centre is a pixel, so nearest sampling is exact.
    out = run(ra.rotate, image, 30)  # 30 * 30 / 10 = 90 degrees.
    assert np.array_equal(out, np.rot90(image, 1)) or np.array_equal(out, np.rot90(image, -1))


def test_shear_moves_rows_in_proportion_to_their_height():
    image = photo(20, 40)
    out = run(ra.shear_x, image, 10 / 3)  # 0.3 * (10 / 3) / 10 = 0.1.
    for y in (0, 10, 19):
        shift = int(np.round(0.1 * y))
        row_left, row_right = out[y, : 40 - shift], out[y, shift:]
        assert np.array_equal(row_left, image[y, shift:]) or np.array_equal(
            row_right, image[y, : 40 - shift]
        )
    np.testing.assert_array_equal(run(ra.shear_y, image, 0), image)


def test_cutout_greys_one_square():
    image = np.zeros((60, 60, 3), np.uint8)
    out = run(ra.cutout, image, 5)  # Half-size 40 * 5 / 10 = 20: a 40x40 square when inside.
    grey = (out == 128).all(-1)
    rows, cols = np.flatnonzero(grey.any(1)), np.flatnonzero(grey.any(0))
    assert grey.sum() == len(rows) * len(cols)  # A rectangle ...
    assert len(rows) <= 40 and len(cols) <= 40 and grey.sum() > 0  # ... clipped to the image.
    assert ((out == 0) | (out == 128)).all()


def test_randaugment_is_seeded_and_identity_with_zero_layers():
    image = photo(16, 16)
    outs = [
        ra.randaugment(tf.constant(image), tf.constant([i, 1], tf.int64), 2, 9).numpy()
        for i in range(6)
    ]
    again = ra.randaugment(tf.constant(image), tf.constant([0, 1], tf.int64), 2, 9).numpy()
    np.testing.assert_array_equal(outs[0], again)
    assert len({o.tobytes() for o in outs}) > 3
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(ra.randaugment(tf.constant(image), SEED, 0, 9).numpy(), image)
    with pytest.raises(ValueError, match="randaugment"):
        ra.randaugment(tf.constant(image), SEED, -1, 9)


# timm's RandAugment ("rand-m9-mstd0.5-inc1", ConvNeXt): ops against timm's, exported by
# tests/fixtures/export_timm_augment_fixtures.py.
TIMM_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "timm_augment_ops.npz"


def test_timm_ops_match_timm_exactly():
    fixtures = np.load(TIMM_FIXTURES)
    images, fill = fixtures["images"], tuple(int(v) for v in fixtures["fill"])
    cases = [key for key in fixtures.files if key.startswith("op/")]
    assert {key.split("/")[1] for key in cases} >= set(ra.TIMM_RAND_INCREASING_OPS)
    for key in cases:
        _, name, magnitude, negate = key.split("/")
        for image, expected in zip(images, fixtures[key], strict=True):
            out = ra.TIMM_OPS[name](
                tf.constant(image), tf.constant(float(magnitude), tf.float64),
                tf.constant(negate == "1"), fill,
            )
            np.testing.assert_array_equal(out.numpy(), expected, err_msg=key)


def test_timm_magnitudes_are_clipped_normals():
    # timm AugmentOp: random.gauss(9, 0.5), clipped to [0, 10].
    seeds = tf.random.experimental.stateless_split(tf.constant([5, 6], tf.int64), num=4000)
    draw = tf.function(lambda s: ra.timm_magnitude(s, 9.0, 0.5, 10.0))
    magnitudes = tf.map_fn(draw, seeds, fn_output_signature=tf.float64).numpy()
    assert magnitudes.max() == 10.0 and 0.01 < np.mean(magnitudes == 10.0) < 0.04  # P = 2.3%
    inside = magnitudes[magnitudes < 10.0]
    truncated = scipy.stats.truncnorm(-np.inf, (10.0 - 9.0) / 0.5, loc=9.0, scale=0.5)
    assert scipy.stats.kstest(inside, truncated.cdf).pvalue > 1e-3


def test_timm_policy_strings_parse_as_timm_does():
    policy = ra.parse_timm_policy("rand-m9-mstd0.5-inc1")
    assert policy == ra.TimmRandAugment(
        num_layers=2, magnitude=9, prob=0.5, magnitude_std=0.5, increasing=True
    )
    assert policy.ops == ra.TIMM_RAND_INCREASING_OPS and len(policy.ops) == 15
    assert ra.parse_timm_policy("rand-n3-m7-mstd101").magnitude_std == np.inf
    for bad in ("rand-m9-x1", "rnd-m9", "rand-m11", "rand-p2"):
        with pytest.raises(ValueError, match="rand-m9-mstd0.5-inc1"):
            ra.parse_timm_policy(bad)


def test_timm_randaugment_is_seeded_and_applies_about_half_the_ops():
    image = photo(16, 16)
    policy = ra.parse_timm_policy("rand-m9-mstd0.5-inc1")
    run_policy = tf.function(lambda s: ra.timm_randaugment(tf.constant(image), s, policy,
                                                           (124, 116, 104)))
    outs = [run_policy(tf.constant([i, 3], tf.int64)).numpy() for i in range(24)]
    np.testing.assert_array_equal(outs[0], run_policy(tf.constant([0, 3], tf.int64)).numpy())
    unchanged = np.mean([np.array_equal(o, image) for o in outs])
    assert 0.1 < unchanged < 0.45  # both ops skipped (1/4), or no-ops on this image
