"""Stateless image preprocessing for training and evaluation (TensorFlow ops, uint8 in and out).

Every random choice is drawn with a `tf.random.stateless_*` op from a shape-[2] seed that the
pipeline derives from (seed, global example slot), so an image's augmentation depends on nothing
else: not on the thread that computes it, the host that reads it or the step a run resumed at.

Training (`train_image`), following the reference NFNet pipeline (deepmind-research/nfnets
`dataset.py`): Inception-style random resized crop (Szegedy et al. 2015), decoded straight from
the JPEG crop window; resize; horizontal flip; RandAugment (`imagedata/randaugment.py`: the NFNet
reference's, or timm's policy strings such as ConvNeXt's "rand-m9-mstd0.5-inc1") or pycls's
AutoAugment (`imagedata/autoaugment.py`, Xiao et al.'s ViTs: "pycls-autoaugment"); random erasing
(Zhong et al. 2020). Evaluation (`eval_image`): resize the shorter side to `resolution /
crop_ratio`, then take the central `resolution` square.

Images enter either as encoded bytes (a scalar tf.string: JPEG, PNG, GIF, BMP) or as decoded
uint8 (H, W, C) arrays with C in {1, 3, 4}; they leave as uint8 (resolution, resolution, 3).
"""

import dataclasses
import math

import tensorflow as tf

from imagedata import autoaugment as autoaugment_lib
from imagedata import randaugment as randaugment_lib

INTERPOLATIONS = ("bicubic", "bilinear", "area", "nearest", "lanczos3")


@dataclasses.dataclass(frozen=True)
class TrainPreprocessing:
    """Training preprocessing settings (the defaults are the ImageNet values of the papers)."""

    resolution: int
    # Inception crop (Szegedy et al. 2015, Sec. 6): 8%-100% of the area, aspect 3/4..4/3; at least
    # 10% of the image covered and 10 attempts as in the reference `_decode_and_random_crop`.
    area_range: tuple[float, float] = (0.08, 1.0)
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    randaugment: tuple[int, float] | None = None  # (layers, magnitude), the NFNet op set
    # timm's RandAugment policy string, e.g. "rand-m9-mstd0.5-inc1" (ConvNeXt), or
    # "pycls-autoaugment" (pycls's AutoAugment, Xiao et al.'s ViTs; imagedata/autoaugment.py);
    # "" is off.
    auto_augment: str = ""
    random_erasing: float = 0.0  # Probability of erasing one rectangle.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # Of pixel / 255, for erasing fill.
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"  # The reference resizes with bicubic interpolation.
    # When no crop satisfies the constraints the reference falls back to the central crop of the
    # evaluation preprocessing, whose side is this fraction of the shorter image side.
    fallback_crop_ratio: float = 0.875


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    resolution: int
    crop_ratio: float = 0.875  # 224 / 256, the usual ImageNet evaluation crop.
    interpolation: str = "bicubic"


def _is_encoded(image: tf.Tensor) -> bool:
    return image.dtype == tf.string


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, C) with C in {1, 3, 4} to (H, W, 3); alpha is dropped."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels != 3:
        raise ValueError(
            f"Images need 1, 3 or 4 channels, got shape {image.shape}; convert the source "
            "images to RGB."
        )
    return image


def decode(image: tf.Tensor) -> tf.Tensor:
    """The whole image as uint8 (H, W, 3), decoding it if it is encoded bytes."""
    if _is_encoded(image):
        decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
        return tf.ensure_shape(decoded, [None, None, 3])
    return _to_rgb(image)


def decode_crop(image: tf.Tensor, window_fn) -> tf.Tensor:
    """Crops `window_fn(shape)` = [top, left, height, width] out of the image.

    A JPEG is decoded only inside the window (`tf.image.decode_and_crop_jpeg`), which is what
    makes random-resized-crop pipelines fast; other formats are decoded whole, then cropped.
    """
    if not _is_encoded(image):
        rgb = _to_rgb(image)
        top, left, height, width = tf.unstack(window_fn(tf.shape(rgb)))
        return rgb[top : top + height, left : left + width]

    def jpeg():
        window = window_fn(tf.image.extract_jpeg_shape(image))
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

    def other():
        rgb = decode(image)
        top, left, height, width = tf.unstack(window_fn(tf.shape(rgb)))
        return rgb[top : top + height, left : left + width]

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(image), jpeg, other), [None, None, 3])


def center_crop_window(shape: tf.Tensor, crop_ratio: float) -> tf.Tensor:
    """Central square whose side is `floor(crop_ratio * min(height, width))` (at least 1)."""
    height, width = shape[0], shape[1]
    side = tf.cast(crop_ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def inception_crop_window(
    shape: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float],
    fallback_crop_ratio: float,
) -> tf.Tensor:
    """Random crop window covering `area_range` of the image with aspect in `aspect_ratio_range`.

    If none of 10 attempts fits (the sampler then returns the whole image), the central crop of
    `center_crop_window(shape, fallback_crop_ratio)` is used, as in the reference.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.where(failed, center_crop_window(shape, fallback_crop_ratio), window)


def resize(image: tf.Tensor, height, width, interpolation: str) -> tf.Tensor:
    """Resizes a uint8 image, rounding and clipping the result back to uint8."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"Unknown interpolation {interpolation!r}; set config.data.interpolation to one of "
            f"{INTERPOLATIONS}."
        )
    resized = tf.image.resize(image, tf.stack([height, width]), method=interpolation)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors the image left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def random_erasing(
    image: tf.Tensor,
    seed: tf.Tensor,
    probability: float,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tf.Tensor:
    """Random erasing (Zhong et al. 2020) with timm's settings, as used by ConvNeXt.

    With probability `probability`, one rectangle of area `s * H * W`, `s ~ U(0.02, 1/3)`, and
    aspect ratio `r`, `log r ~ U(log 0.3, log(1 / 0.3))`, with sides `round(sqrt(s H W r))` by
    `round(sqrt(s H W / r))`, is placed uniformly; the first of 10 draws that fits is used and
    none is erased if none fits. Its pixels become `255 * (mean + std * z)`, z ~ N(0, 1) per pixel
    and channel, i.e. standard normal noise after normalisation (timm's "pixel" mode), rounded and
    clipped to uint8.
    """
    attempts = 10
    apply_seed, area_seed, ratio_seed, pos_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(height * width, tf.float32)
    scale = tf.random.stateless_uniform([attempts], area_seed, 0.02, 1.0 / 3.0)
    log_ratio = tf.random.stateless_uniform([attempts], ratio_seed, math.log(0.3), -math.log(0.3))
    ratio = tf.exp(log_ratio)
    rect_h = tf.cast(tf.round(tf.sqrt(scale * area * ratio)), tf.int32)
    rect_w = tf.cast(tf.round(tf.sqrt(scale * area / ratio)), tf.int32)
    fits = (rect_h < height) & (rect_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    rect_h, rect_w = rect_h[first], rect_w[first]
    u = tf.random.stateless_uniform([2], pos_seed)
    top = tf.cast(u[0] * tf.cast(height - rect_h + 1, tf.float32), tf.int32)
    left = tf.cast(u[1] * tf.cast(width - rect_w + 1, tf.float32), tf.int32)
    apply = (tf.random.stateless_uniform([], apply_seed) < probability) & tf.reduce_any(fits)

    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + rect_h) & (cols >= left) & (cols < left + rect_w)
    noise = tf.random.stateless_normal(tf.shape(image), noise_seed)
    fill = 255.0 * (tf.constant(mean, tf.float32) + tf.constant(std, tf.float32) * noise)
    fill = tf.cast(tf.clip_by_value(tf.round(fill), 0.0, 255.0), tf.uint8)
    return tf.where(inside & apply, fill, image)


def train_image(image: tf.Tensor, seed: tf.Tensor, p: TrainPreprocessing) -> tf.Tensor:
    """Training preprocessing of one image; a pure function of (image, seed, p)."""
    crop_seed, flip_seed, randaugment_seed, erasing_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    image = decode_crop(
        image,
        lambda shape: inception_crop_window(
            shape, crop_seed, p.area_range, p.aspect_ratio_range, p.fallback_crop_ratio
        ),
    )
    image = resize(image, p.resolution, p.resolution, p.interpolation)
    if p.flip:
        image = random_flip(image, flip_seed)
    if p.randaugment is not None:
        num_layers, magnitude = p.randaugment
        image = randaugment_lib.randaugment(image, randaugment_seed, num_layers, magnitude)
    if p.auto_augment == autoaugment_lib.POLICY_NAME:
        image = autoaugment_lib.pycls_autoaugment(image, randaugment_seed)
    elif p.auto_augment:
        # timm fills geometric ops with the dataset mean (`create_transform`'s `img_mean`).
        fill = tuple(min(255, round(255 * m)) for m in p.mean)
        policy = randaugment_lib.parse_timm_policy(p.auto_augment)
        image = randaugment_lib.timm_randaugment(image, randaugment_seed, policy, fill)
    if p.random_erasing > 0:
        image = random_erasing(image, erasing_seed, p.random_erasing, p.mean, p.std)
    return tf.ensure_shape(image, [p.resolution, p.resolution, 3])


def eval_image(image: tf.Tensor, p: EvalPreprocessing) -> tf.Tensor:
    """Resize so the shorter side is `floor(resolution / crop_ratio)`, then centre-crop."""
    image = decode(image)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    short = float(math.floor(p.resolution / p.crop_ratio))
    scale = short / tf.minimum(height, width)
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), p.resolution)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), p.resolution)
    image = resize(image, new_h, new_w, p.interpolation)
    top = (new_h - p.resolution + 1) // 2
    left = (new_w - p.resolution + 1) // 2
    image = image[top : top + p.resolution, left : left + p.resolution]
    return tf.ensure_shape(image, [p.resolution, p.resolution, 3])
