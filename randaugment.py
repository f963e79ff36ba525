"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a
reduced search space"), stateless and seeded, on uint8 HWC RGB images in TensorFlow.

The op set, the order of ops and the magnitude-to-argument rules are those of the implementation
the NFNet experiments used (Brock et al. 2021; deepmind-research/nfnets `autoaugment.py`, itself
tensorflow/tpu's EfficientNet code): each of `num_layers` layers picks one of 16 ops uniformly
and applies it with magnitude `m` on a 0..10 scale, where 10 is `_MAX_LEVEL`; NFNets use
(layers, magnitude) = (4, 5) for F0 up to (4, 15) for F3 and larger (Brock et al. 2021a,
Table 1), so magnitudes above 10 extrapolate the same linear rules (at 15, as in the reference,
Posterize keeps 6 bits and Solarize's threshold of 384 leaves images unchanged). Geometric ops
sample with nearest-neighbour interpolation and fill uncovered pixels with grey 128; translations
and Cutout are in absolute pixels, as in the reference.

Differences from that code: Contrast blends towards the mean grey level of the image, as PIL
does (the reference blends towards `height * width / 256`, a known bug); AutoContrast evaluates
`floor(255 (x - lo) / (hi - lo))` exactly; and every random choice is a stateless function of the
seed passed in, so a resumed run reproduces every image bit for bit.
"""

import math

import tensorflow as tf

_MAX_LEVEL = 10.0
_FILL = 128  # `replace_value` of the reference for geometric ops and Cutout.
_TRANSLATE_CONST = 100.0  # Pixels of translation at level 10 (reference `translate_const`).
_CUTOUT_CONST = 40.0  # Half-size in pixels of the Cutout square at level 10 (`cutout_const`).


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL `Image.blend(degenerate, image, factor)`: `d + factor * (x - d)`, clipped, truncated."""
    d = tf.cast(degenerate, tf.float32)
    blended = d + factor * (tf.cast(image, tf.float32) - d)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _grey(image: tf.Tensor) -> tf.Tensor:
    """ITU-R 601-2 luma `round(0.299 R + 0.587 G + 0.114 B)` (PIL's "L" mode), float (H, W, 1)."""
    weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
    return tf.round(tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True))


def _random_sign(value: float, seed: tf.Tensor) -> tf.Tensor:
    """`value` or `-value` with probability 1/2 each (reference `_randomly_negate_tensor`)."""
    negate = tf.random.stateless_uniform([], seed) < 0.5
    return tf.where(negate, -value, value)


def _transform(image: tf.Tensor, matrix: list) -> tf.Tensor:
    """Projective transform: output pixel (x, y) reads input pixel
    (a0 x + a1 y + a2, b0 x + b1 y + b2), where `matrix` = [a0, a1, a2, b0, b1, b2]."""
    transforms = tf.reshape(tf.stack([tf.cast(v, tf.float32) for v in matrix] + [0.0, 0.0]), [1, 8])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transforms,
        output_shape=tf.shape(image)[:2],
        fill_value=float(_FILL),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return out[0]


def auto_contrast(image, level, seed):
    """Per channel, map [min, max] linearly onto [0, 255] (PIL `ImageOps.autocontrast`)."""
    del level, seed
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=(0, 1))
    hi = tf.reduce_max(x, axis=(0, 1))
    # floor(255 (x - lo) / (hi - lo)); PIL evaluates it as x * scale + offset in doubles, which
    # can land just below an integer and truncate one lower.
    stretched = tf.floor((x - lo) * 255.0 / tf.maximum(hi - lo, 1.0))
    return tf.cast(tf.where(hi > lo, stretched, x), tf.uint8)


def equalize(image, level, seed):
    """Per-channel histogram equalisation, PIL's `ImageOps.equalize` algorithm.

    With h the 256-bin histogram and `step = (sum(h) - h[last non-empty bin]) // 255`, the
    lookup table is `lut[v] = (step // 2 + sum(h[:v])) // step`; a channel with step 0 is kept.
    """
    del level, seed

    def channel(c):
        values = tf.cast(c, tf.int32)
        hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(hist) - nonzero[-1]) // 255
        safe_step = tf.maximum(step, 1)
        lut = (tf.cumsum(hist, exclusive=True) + safe_step // 2) // safe_step
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.where(step > 0, tf.gather(lut, values), values)

    return tf.cast(tf.stack([channel(image[..., c]) for c in range(3)], axis=-1), tf.uint8)


def invert(image, level, seed):
    del level, seed
    return 255 - image


def rotate(image, level, seed):
    """Rotate about the centre by `30 * level / 10` degrees, in a random direction."""
    radians = _random_sign(level / _MAX_LEVEL * 30.0, seed) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
    # Input point = centre + R(angle) @ (output point - centre).
    return _transform(
        image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    )


def posterize(image, level, seed):
    """Keep the top `int(4 * level / 10)` bits of each value (the reference's rule)."""
    del seed
    shift = 8 - int(level / _MAX_LEVEL * 4)
    if shift >= 8:
        return tf.zeros_like(image)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, level, seed):
    """Invert values at or above the threshold `int(256 * level / 10)`."""
    del seed
    threshold = int(level / _MAX_LEVEL * 256)
    return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image, level, seed):
    """Add `int(110 * level / 10)` to values below 128, clipped to 255."""
    del seed
    addition = int(level / _MAX_LEVEL * 110)
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
    return tf.where(image < 128, added, image)


def _enhance_factor(level: float) -> float:
    return level / _MAX_LEVEL * 1.8 + 0.1


def color(image, level, seed):
    """PIL `ImageEnhance.Color`: blend with the grey image by `1.8 * level / 10 + 0.1`."""
    del seed
    return _blend(tf.tile(_grey(image), [1, 1, 3]), image, _enhance_factor(level))


def contrast(image, level, seed):
    """PIL `ImageEnhance.Contrast`: blend with a constant image at the mean grey level."""
    del seed
    mean = tf.floor(tf.reduce_mean(_grey(image)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, _enhance_factor(level))


def brightness(image, level, seed):
    """PIL `ImageEnhance.Brightness`: blend with black."""
    del seed
    return _blend(tf.zeros_like(image), image, _enhance_factor(level))


def sharpness(image, level, seed):
    """PIL `ImageEnhance.Sharpness`: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13
    (border pixels keep their values)."""
    del seed
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    x = tf.cast(image, tf.float32)[None]
    smooth = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.round(tf.clip_by_value(smooth, 0.0, 255.0))
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    interior = tf.pad(tf.ones([h - 2, w - 2, 3], tf.bool), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior, tf.cast(smooth, tf.uint8), image)
    return _blend(degenerate, image, _enhance_factor(level))


def shear_x(image, level, seed):
    """Input x = x + s y with `s = 0.3 * level / 10` in a random direction."""
    s = _random_sign(level / _MAX_LEVEL * 0.3, seed)
    return _transform(image, [1.0, s, 0.0, 0.0, 1.0, 0.0])


def shear_y(image, level, seed):
    """Input y = s x + y with `s = 0.3 * level / 10` in a random direction."""
    s = _random_sign(level / _MAX_LEVEL * 0.3, seed)
    return _transform(image, [1.0, 0.0, 0.0, s, 1.0, 0.0])


def translate_x(image, level, seed):
    """Shift by `100 * level / 10` pixels along x in a random direction."""
    pixels = _random_sign(level / _MAX_LEVEL * _TRANSLATE_CONST, seed)
    return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0])


def translate_y(image, level, seed):
    """Shift by `100 * level / 10` pixels along y in a random direction."""
    pixels = _random_sign(level / _MAX_LEVEL * _TRANSLATE_CONST, seed)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels])


def cutout(image, level, seed):
    """Grey out a square of half-size `int(40 * level / 10)` centred on a uniform random pixel
    (DeVries & Taylor 2017), clipped to the image."""
    pad = int(level / _MAX_LEVEL * _CUTOUT_CONST)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed))
    cy = tf.random.stateless_uniform([], seed_y, minval=0, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed_x, minval=0, maxval=w, dtype=tf.int32)
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    inside = (rows >= cy - pad) & (rows < cy + pad) & (cols >= cx - pad) & (cols < cx + pad)
    return tf.where(inside, tf.constant(_FILL, tf.uint8), image)


# The reference's `available_ops`, in its order (the order fixes which op an index selects).
OPS = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int, magnitude: float):
    """Applies `num_layers` ops, each drawn uniformly from `OPS`, at level `magnitude`.

    Args:
      image: uint8 (H, W, 3) RGB image.
      seed: int32/int64 shape-[2] stateless seed; the same seed gives the same image.
      num_layers: N in the paper.
      magnitude: M in the paper, on the reference's 0..10 scale (values above 10 extrapolate).
    """
    if num_layers < 0 or magnitude < 0:
        raise ValueError(
            f"RandAugment needs num_layers >= 0 and magnitude >= 0, got ({num_layers}, "
            f"{magnitude}); set config.data.randaugment to (layers, magnitude), e.g. (4, 15)."
        )
    ops = list(OPS.values())
    shape = image.shape

    def layer(i, image):
        choice_seed, op_seed = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, i)
            )
        )
        choice = tf.random.stateless_uniform([], choice_seed, maxval=len(ops), dtype=tf.int32)
        branches = [
            (lambda op=op: tf.ensure_shape(op(image, float(magnitude), op_seed), shape))
            for op in ops
        ]
        return i + 1, tf.switch_case(choice, branches)

    # A loop rather than `num_layers` copies of the 16 ops keeps the graph (and its build) small.
    _, image = tf.while_loop(lambda i, _: i < num_layers, layer, [tf.constant(0), image])
    return image
