"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a
reduced search space"), stateless and seeded, on uint8 HWC RGB images in TensorFlow.

The op set, the order of ops and the magnitude-to-argument rules are those of the implementation
the NFNet experiments used (Brock et al. 2021; deepmind-research/nfnets `autoaugment.py`,
itself tensorflow/tpu's EfficientNet code): each of `num_layers` layers picks one of 16 ops
uniformly and applies it with magnitude `m` on a 0..10 scale, where 10 is `_MAX_LEVEL`; NFNets use
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

import dataclasses
import math
import re

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
    return random_layers(
        image, seed, num_layers,
        [lambda image, op_seed, op=op: op(image, float(magnitude), op_seed) for op in OPS.values()],
    )


def random_layers(image: tf.Tensor, seed: tf.Tensor, num_layers, ops) -> tf.Tensor:
    """`num_layers` times, one of `ops` (each `(image, op_seed) -> image`) drawn uniformly with
    replacement and applied; layer i draws from the seeds split off fold_in(seed, i)."""
    shape = image.shape

    def layer(i, image):
        choice_seed, op_seed = tf.unstack(
            tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, i)
            )
        )
        choice = tf.random.stateless_uniform([], choice_seed, maxval=len(ops), dtype=tf.int32)
        branches = [(lambda op=op: tf.ensure_shape(op(image, op_seed), shape)) for op in ops]
        return i + 1, tf.switch_case(choice, branches)

    # A loop rather than `num_layers` copies of the ops keeps the graph (and its build) small.
    _, image = tf.while_loop(lambda i, _: i < num_layers, layer, [tf.constant(0), image])
    return image


# ---------------------------------------------------------------------------------------------
# timm's RandAugment (`timm.data.auto_augment.rand_augment_transform`), as ConvNeXt (Liu et al.
# 2022) trains with it: "rand-m9-mstd0.5-inc1". The ops are PIL's, reproduced exactly (timm
# applies them to PIL images): geometric ops resample bicubically as PIL's affine `transform`
# (cubic convolution with a = -1, edge pixels repeated, sample points outside the image take
# the fill colour) and fill with the dataset mean, `round(255 * mean)`.
# ---------------------------------------------------------------------------------------------

_LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitudes are on a 0..10 scale.
_TRANSLATE_PCT = 0.45  # timm's default `translate_pct`: shift by up to 45% of the side.


def _pil_grey(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> "L": (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 (H, W, 1)."""
    x = tf.cast(image, tf.int32)
    weighted = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(weighted, 16)[..., None]


def _pil_blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL `Image.blend` in its C arithmetic: float32 `d + factor * (x - d)`, clipped, truncated."""
    d = tf.cast(degenerate, tf.float32)
    blended = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _cubic(v1, v2, v3, v4, d):
    """PIL Geometry.c `BICUBIC`: cubic convolution (a = -1) through v1..v4 at d in [0, 1)."""
    p1 = v2
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def _affine_sample_points(image: tf.Tensor, matrix):
    """Where PIL's AFFINE transform samples for each output pixel (x, y): the input point
    (a0 (x + .5) + a1 (y + .5) + a2, a3 (x + .5) + ...) - .5, in float64 as PIL does. Returns
    (h, w, inside the input, the point's integer part x0, y0, and its fractions dx, dy)."""
    a = [tf.cast(v, tf.float64) for v in matrix]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    ys = tf.cast(tf.range(h), tf.float64)[:, None] + 0.5
    xs = tf.cast(tf.range(w), tf.float64)[None, :] + 0.5
    xin = a[0] * xs + a[1] * ys + a[2]
    yin = a[3] * xs + a[4] * ys + a[5]
    inside = (xin >= 0.0) & (xin < wf) & (yin >= 0.0) & (yin < hf)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = tf.floor(xin), tf.floor(yin)
    return h, w, inside, x0, y0, (xin - x0)[..., None], (yin - y0)[..., None]


def pil_affine(image: tf.Tensor, matrix, fill) -> tf.Tensor:
    """PIL `Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill)` on uint8 RGB: output
    pixel (x, y) samples the input at (a0 (x + .5) + a1 (y + .5) + a2, a3 (x + .5) + ...), in
    float64 as PIL does."""
    h, w, inside, x0, y0, dx, dy = _affine_sample_points(image, matrix)
    taps = tf.constant([-1, 0, 1, 2], tf.int32)
    cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + taps, 0, w - 1)  # (H, W, 4)
    rows = tf.clip_by_value(tf.cast(y0, tf.int32)[..., None] + taps, 0, h - 1)
    pixels = tf.cast(image, tf.float64)

    def row(r):  # the cubic along x through row rows[..., r]: (H, W, 3)
        vals = [tf.gather_nd(pixels, tf.stack([rows[..., r], cols[..., c]], -1)) for c in range(4)]
        return _cubic(*vals, dx)

    value = _cubic(row(0), row(1), row(2), row(3), dy)
    value = tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)  # PIL truncates
    fill = tf.broadcast_to(tf.constant(fill, tf.uint8), tf.shape(image))
    return tf.where(inside[..., None], value, fill)


def _signed(value, negate):
    return tf.where(negate, -value, value)


def _pil_rotate_matrix(degrees, width, height):
    """PIL `Image.rotate`'s affine matrix (about the centre (w / 2, h / 2), no expansion)."""
    angle = -tf.math.floormod(degrees, 360.0) * (math.pi / 180.0)
    round15 = lambda v: tf.round(v * 1e15) / 1e15
    cos, sin = round15(tf.cos(angle)), round15(tf.sin(angle))
    cx, cy = width / 2.0, height / 2.0
    return [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]


def timm_rotate(image, magnitude, negate, fill):
    """Rotate by `30 * m / 10` degrees, in a random direction (counter-clockwise if positive)."""
    degrees = _signed(magnitude / _LEVEL_DENOM * 30.0, negate)
    size = tf.cast(tf.shape(image), tf.float64)
    return pil_affine(image, _pil_rotate_matrix(degrees, size[1], size[0]), fill)


def timm_shear_x(image, magnitude, negate, fill):
    factor = _signed(magnitude / _LEVEL_DENOM * 0.3, negate)
    return pil_affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], fill)


def timm_shear_y(image, magnitude, negate, fill):
    factor = _signed(magnitude / _LEVEL_DENOM * 0.3, negate)
    return pil_affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], fill)


def timm_translate_x_rel(image, magnitude, negate, fill):
    """Shift by `0.45 * m / 10` of the width."""
    pct = _signed(magnitude / _LEVEL_DENOM * _TRANSLATE_PCT, negate)
    pixels = pct * tf.cast(tf.shape(image)[1], tf.float64)
    return pil_affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill)


def timm_translate_y_rel(image, magnitude, negate, fill):
    pct = _signed(magnitude / _LEVEL_DENOM * _TRANSLATE_PCT, negate)
    pixels = pct * tf.cast(tf.shape(image)[0], tf.float64)
    return pil_affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill)


def pil_auto_contrast(image, *_):
    """PIL `ImageOps.autocontrast`: per channel `int(x * scale + offset)`, scale = 255 / (hi -
    lo), offset = -lo * scale, in float64; a constant channel is kept."""
    x = tf.cast(image, tf.float64)
    lo, hi = tf.reduce_min(x, axis=(0, 1)), tf.reduce_max(x, axis=(0, 1))
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.cast(x * scale + -lo * scale, tf.int32), 0, 255)
    return tf.where(hi > lo, tf.cast(stretched, tf.uint8), image)


def pil_posterize(image, bits):
    """PIL `ImageOps.posterize`: keep the top `bits` bits (0 bits: black)."""
    mask = 256 - tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def pil_solarize(image, threshold):
    """PIL `ImageOps.solarize`: invert values at or above `threshold`."""
    return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image)


def pil_solarize_add(image, addition, threshold=128):
    """timm's `solarize_add`: add `addition` to values below `threshold`, clipped to 255."""
    x = tf.cast(image, tf.int32)
    added = tf.minimum(x + tf.cast(addition, tf.int32), 255)
    return tf.cast(tf.where(x < threshold, added, x), tf.uint8)


def pil_color(image, factor):
    """PIL `ImageEnhance.Color`: blend with the "L" image."""
    return _pil_blend(tf.tile(_pil_grey(image), [1, 1, 3]), image, factor)


def pil_contrast(image, factor):
    """PIL `ImageEnhance.Contrast`: blend with the constant `int(mean of "L" + 0.5)`."""
    grey = _pil_grey(image)
    mean = tf.reduce_sum(tf.cast(grey, tf.float64)) / tf.cast(tf.size(grey), tf.float64)
    level = tf.cast(tf.floor(mean + 0.5), tf.int32)
    return _pil_blend(tf.fill(tf.shape(image), level), image, factor)


def pil_brightness(image, factor):
    return _pil_blend(tf.zeros_like(image), image, factor)


def pil_sharpness(image, factor):
    """PIL `ImageEnhance.Sharpness`: blend with `ImageFilter.SMOOTH`."""
    return _pil_blend(_pil_smooth(image), image, factor)


def _pil_smooth(image):
    """PIL `ImageFilter.SMOOTH` ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13); border pixels kept."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    x = tf.cast(image, tf.float32)[None]
    smooth = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.cast(tf.round(tf.clip_by_value(smooth, 0.0, 255.0)), tf.uint8)
    return tf.tensor_scatter_nd_update(image, _interior_indices(image), tf.reshape(smooth, [-1, 3]))


def _interior_indices(image):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ys, xs = tf.meshgrid(tf.range(1, h - 1), tf.range(1, w - 1), indexing="ij")
    return tf.reshape(tf.stack([ys, xs], -1), [-1, 2])


def _enhance_increasing(magnitude, negate):
    """timm `_enhance_increasing_level_to_arg`: max(0.1, 1 +- 0.9 m / 10)."""
    factor = 1.0 + _signed(magnitude / _LEVEL_DENOM * 0.9, negate)
    return tf.maximum(tf.constant(0.1, tf.float64), factor)


def _enhance(magnitude, negate):
    """timm `_enhance_level_to_arg`: 1.8 m / 10 + 0.1 (no sign)."""
    del negate
    return magnitude / _LEVEL_DENOM * 1.8 + 0.1


def _level_int(magnitude, scale):
    """Python's `int(m / 10 * scale)` for m >= 0."""
    return tf.cast(tf.floor(magnitude / _LEVEL_DENOM * scale), tf.int32)


# timm's ops by name: f(uint8 image, magnitude (float64), negate (bool), fill) -> image, each
# with its `LEVEL_TO_ARG` rule.
TIMM_OPS = {
    "AutoContrast": lambda x, m, s, f: pil_auto_contrast(x),
    "Equalize": lambda x, m, s, f: equalize(x, None, None),
    "Invert": lambda x, m, s, f: invert(x, None, None),
    "Rotate": timm_rotate,
    "Posterize": lambda x, m, s, f: pil_posterize(x, tf.minimum(_level_int(m, 4.0), 8)),
    "PosterizeIncreasing": lambda x, m, s, f: pil_posterize(x, 4 - _level_int(m, 4.0)),
    "PosterizeOriginal": lambda x, m, s, f: pil_posterize(
        x, tf.minimum(_level_int(m, 4.0) + 4, 8)
    ),
    "Solarize": lambda x, m, s, f: pil_solarize(x, tf.minimum(256, _level_int(m, 256.0))),
    "SolarizeIncreasing": lambda x, m, s, f: pil_solarize(
        x, 256 - tf.minimum(256, _level_int(m, 256.0))
    ),
    "SolarizeAdd": lambda x, m, s, f: pil_solarize_add(x, tf.minimum(128, _level_int(m, 110.0))),
    "Color": lambda x, m, s, f: pil_color(x, _enhance(m, s)),
    "ColorIncreasing": lambda x, m, s, f: pil_color(x, _enhance_increasing(m, s)),
    "Contrast": lambda x, m, s, f: pil_contrast(x, _enhance(m, s)),
    "ContrastIncreasing": lambda x, m, s, f: pil_contrast(x, _enhance_increasing(m, s)),
    "Brightness": lambda x, m, s, f: pil_brightness(x, _enhance(m, s)),
    "BrightnessIncreasing": lambda x, m, s, f: pil_brightness(x, _enhance_increasing(m, s)),
    "Sharpness": lambda x, m, s, f: pil_sharpness(x, _enhance(m, s)),
    "SharpnessIncreasing": lambda x, m, s, f: pil_sharpness(x, _enhance_increasing(m, s)),
    "ShearX": timm_shear_x,
    "ShearY": timm_shear_y,
    "TranslateXRel": timm_translate_x_rel,
    "TranslateYRel": timm_translate_y_rel,
}

# timm's `_RAND_TRANSFORMS` and `_RAND_INCREASING_TRANSFORMS` ('inc1'), in timm's order.
TIMM_RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
TIMM_RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_TIMM_POLICY_KEYS = ("m", "n", "p", "mstd", "mmax", "inc")


def _policy_error(spec: str) -> ValueError:
    return ValueError(
        f"Unknown RandAugment policy {spec!r}; config.data.auto_augment takes timm's "
        "'rand-<sections>' with sections m<magnitude 0..10>, n<layers>, p<probability 0..1>, "
        "mstd<std >= 0>, mmax<max magnitude>, inc<0|1> (e.g. 'rand-m9-mstd0.5-inc1'), or ''."
    )


@dataclasses.dataclass(frozen=True)
class TimmRandAugment:
    """timm's RandAugment settings, as `rand_augment_transform` parses them (its defaults)."""

    num_layers: int = 2
    magnitude: float = 10.0
    prob: float = 0.5  # of applying each chosen op
    magnitude_std: float = 0.0  # inf: magnitude ~ U(0, magnitude)
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return TIMM_RAND_INCREASING_OPS if self.increasing else TIMM_RAND_OPS


def parse_timm_policy(spec: str) -> TimmRandAugment:
    """timm's `rand_augment_transform` config string, e.g. 'rand-m9-mstd0.5-inc1'."""
    sections = spec.split("-")
    if sections[0] != "rand":
        raise _policy_error(spec)
    values = {}
    for section in sections[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", section)
        if not match or match[1] not in _TIMM_POLICY_KEYS:
            raise _policy_error(spec)
        values[match[1]] = float(match[2])
    mstd = values.get("mstd", 0.0)
    policy = TimmRandAugment(
        num_layers=int(values.get("n", 2)),
        magnitude=int(values.get("m", _LEVEL_DENOM)),  # timm parses int(val)
        prob=values.get("p", 0.5),
        magnitude_std=math.inf if mstd > 100 else mstd,  # timm: > 100 means uniform
        magnitude_max=int(values.get("mmax", _LEVEL_DENOM)),
        increasing=bool(int(values.get("inc", 0))),
    )
    if not (0 <= policy.magnitude <= policy.magnitude_max and 0 <= policy.prob <= 1):
        raise _policy_error(spec)
    return policy


def timm_magnitude(seed, magnitude: float, std: float, upper: float) -> tf.Tensor:
    """timm `AugmentOp`'s magnitude: N(magnitude, std) (U(0, magnitude) if std is inf), clipped
    to [0, upper], float64; `magnitude` itself if std is 0."""
    if std == 0:
        drawn = tf.constant(magnitude, tf.float64)
    elif math.isinf(std):
        drawn = tf.random.stateless_uniform([], seed, 0.0, magnitude, tf.float64)
    else:
        drawn = magnitude + std * tf.random.stateless_normal([], seed, dtype=tf.float64)
    return tf.clip_by_value(drawn, 0.0, float(upper))


def timm_op(image, name: str, prob: float, magnitude: float, std: float, upper: float, seed,
            fill):
    """timm `AugmentOp.__call__`: with probability `prob`, op `name` at a drawn magnitude and
    random direction; otherwise the image unchanged."""
    apply_seed, magnitude_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3)
    )
    m = timm_magnitude(magnitude_seed, magnitude, std, upper)
    negate = tf.random.stateless_uniform([], sign_seed) < 0.5
    apply = tf.random.stateless_uniform([], apply_seed) < prob
    return tf.cond(
        apply, lambda: TIMM_OPS[name](image, m, negate, fill), lambda: tf.identity(image)
    )


def timm_randaugment(image: tf.Tensor, seed: tf.Tensor, policy: TimmRandAugment, fill):
    """timm's `RandAugment`: `num_layers` ops drawn uniformly with replacement from
    `policy.ops`, each applied as `timm_op`; `fill` is the RGB fill of geometric ops."""
    ops = [
        lambda image, op_seed, name=name: timm_op(
            image, name, policy.prob, policy.magnitude, policy.magnitude_std,
            policy.magnitude_max, op_seed, fill,
        )
        for name in policy.ops
    ]
    return random_layers(image, seed, policy.num_layers, ops)


def pil_affine_bilinear(image: tf.Tensor, matrix, fill) -> tf.Tensor:
    """PIL `Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill)` on uint8 RGB (pycls's
    AutoAugment resamples so): the sample points of `pil_affine`, then PIL Geometry.c `BILINEAR`,
    `a + (b - a) d` along x and then y in float64, edge pixels repeated, truncated to uint8."""
    h, w, inside, x0, y0, dx, dy = _affine_sample_points(image, matrix)
    cols = [tf.clip_by_value(tf.cast(x0, tf.int32) + t, 0, w - 1) for t in (0, 1)]
    rows = [tf.clip_by_value(tf.cast(y0, tf.int32) + t, 0, h - 1) for t in (0, 1)]
    pixels = tf.cast(image, tf.float64)

    def row(r):  # the line along x through row rows[r]: (H, W, 3)
        left, right = (tf.gather_nd(pixels, tf.stack([rows[r], c], -1)) for c in cols)
        return left + (right - left) * dx

    top, bottom = row(0), row(1)
    value = tf.cast(top + (bottom - top) * dy, tf.uint8)  # in [0, 255]; PIL truncates
    fill = tf.broadcast_to(tf.constant(fill, tf.uint8), tf.shape(image))
    return tf.where(inside[..., None], value, fill)
