"""pycls's AutoAugment (Cubuk et al. 2019, "AutoAugment: Learning augmentation strategies from
data"), the augmentation of Xiao et al. 2021's ViT recipe, stateless and seeded, on uint8 HWC RGB
images in TensorFlow.

Xiao et al. trained with pycls; their configs (pycls branch `vitconfigs`,
configs/vitconv_baselines/vit/*.yaml) set `TRAIN.AUGMENT: AutoAugment`, which is
`pycls/datasets/augment.py` `auto_augment`: one of 25 sub-policies (the "policy_v0" of the
EfficientNet code, magnitudes rescaled to 0..1) drawn uniformly, then each of its two ops applied
with its probability. pycls's rules, kept here exactly:

- an op's argument is `v = magnitude * (max - min) + min` over its `OP_RANGES` row, negated with
  probability 1/2 for the ops marked signed (the sign is drawn only when the op is applied);
- geometric ops resample bilinearly (PIL `BILINEAR`) and fill with grey 128 (pycls
  `WARP_PARAMS`), translations are fractions of the side;
- Posterize keeps at least 1 bit (pycls `POSTERIZE_MIN = 1`; the EfficientNet code allows 0).

This is neither timm's "v0" nor "original" policy (those resample bicubically or at random and
fill with the dataset mean). The ops are the PIL-exact ones of `imagedata/randaugment.py`. pycls
draws with Python's `random`; here every draw is a stateless function of the seed passed in.
"""

import tensorflow as tf

from imagedata import randaugment as ra

POLICY_NAME = "pycls-autoaugment"  # config.data.auto_augment for this policy
_FILL = (128, 128, 128)  # pycls WARP_PARAMS fillcolor

# pycls augment.py OP_RANGES: (min, max, signed) of each op's argument, for the ops the
# policy uses.
PYCLS_OP_RANGES = {
    "auto_contrast": (0, 1, False),
    "equalize": (0, 1, False),
    "invert": (0, 1, False),
    "rotate": (0.0, 30.0, True),
    "posterize": (0, 4, False),
    "solarize": (0, 256, False),
    "solarize_add": (0, 110, False),
    "color": (0.1, 1.9, False),
    "shear_x": (0.0, 0.3, True),
    "shear_y": (0.0, 0.3, True),
    "trans_y": (0.0, 0.45, True),
}

# pycls augment.py AUTOAUG_POLICY ("policy_v0", magnitudes <= 1): sub-policies of
# (op, probability, magnitude), in pycls's order.
PYCLS_AUTOAUGMENT_POLICY = (
    (("equalize", 0.8, 0.1), ("shear_y", 0.8, 0.4)),
    (("color", 0.4, 0.9), ("equalize", 0.6, 0.3)),
    (("color", 0.4, 0.1), ("rotate", 0.6, 0.8)),
    (("solarize", 0.8, 0.3), ("equalize", 0.4, 0.7)),
    (("solarize", 0.4, 0.2), ("solarize", 0.6, 0.2)),
    (("color", 0.2, 0.0), ("equalize", 0.8, 0.8)),
    (("equalize", 0.4, 0.8), ("solarize_add", 0.8, 0.3)),
    (("shear_x", 0.2, 0.9), ("rotate", 0.6, 0.8)),
    (("color", 0.6, 0.1), ("equalize", 1.0, 0.2)),
    (("invert", 0.4, 0.9), ("rotate", 0.6, 0.0)),
    (("equalize", 1.0, 0.9), ("shear_y", 0.6, 0.3)),
    (("color", 0.4, 0.7), ("equalize", 0.6, 0.0)),
    (("posterize", 0.4, 0.6), ("auto_contrast", 0.4, 0.7)),
    (("solarize", 0.6, 0.8), ("color", 0.6, 0.9)),
    (("solarize", 0.2, 0.4), ("rotate", 0.8, 0.9)),
    (("rotate", 1.0, 0.7), ("trans_y", 0.8, 0.9)),
    (("shear_x", 0.0, 0.0), ("solarize", 0.8, 0.4)),
    (("shear_y", 0.8, 0.0), ("color", 0.6, 0.4)),
    (("color", 1.0, 0.0), ("rotate", 0.6, 0.2)),
    (("equalize", 0.8, 0.4), ("equalize", 0.0, 0.8)),
    (("equalize", 1.0, 0.4), ("auto_contrast", 0.6, 0.2)),
    (("shear_y", 0.4, 0.7), ("solarize_add", 0.6, 0.7)),
    (("posterize", 0.8, 0.2), ("solarize", 0.6, 1.0)),
    (("solarize", 0.6, 0.8), ("equalize", 0.6, 0.1)),
    (("color", 0.8, 0.6), ("rotate", 0.4, 0.5)),
)


def pycls_level(op: str, magnitude: float) -> float:
    """pycls `apply_op`'s argument before its sign: `magnitude * (max - min) + min`, in Python
    floats as pycls computes it (e.g. color's range is 1.9 - 0.1 = 1.7999999999999998)."""
    low, high, _ = PYCLS_OP_RANGES[op]
    return magnitude * (high - low) + low


def _solarize_add(image, v):
    """pycls: `x.point(lambda i: min(255, v + i) if i < 128 else i)`; PIL rounds the table."""
    x = tf.cast(image, tf.float64)
    added = tf.round(tf.minimum(v + x, 255.0))  # Python's round: half to even, as tf.round
    return tf.cast(tf.where(x < 128.0, added, x), tf.uint8)


def _rotate(image, degrees):
    size = tf.cast(tf.shape(image), tf.float64)
    return ra.pil_affine_bilinear(image, ra._pil_rotate_matrix(degrees, size[1], size[0]), _FILL)


# pycls augment.py OP_FUNCTIONS: f(uint8 image, v (float64, signed)) -> image.
PYCLS_OPS = {
    "auto_contrast": lambda x, v: ra.pil_auto_contrast(x),
    "equalize": lambda x, v: ra.equalize(x, None, None),
    "invert": lambda x, v: ra.invert(x, None, None),
    "rotate": _rotate,
    "posterize": lambda x, v: ra.pil_posterize(x, tf.maximum(1, tf.cast(tf.floor(v), tf.int32))),
    "solarize": lambda x, v: ra.pil_solarize(x, tf.cast(tf.floor(v), tf.int32)),
    "solarize_add": _solarize_add,
    "color": ra.pil_color,
    "shear_x": lambda x, v: ra.pil_affine_bilinear(x, [1.0, v, 0.0, 0.0, 1.0, 0.0], _FILL),
    "shear_y": lambda x, v: ra.pil_affine_bilinear(x, [1.0, 0.0, 0.0, v, 1.0, 0.0], _FILL),
    "trans_y": lambda x, v: ra.pil_affine_bilinear(
        x, [1.0, 0.0, 0.0, 0.0, 1.0, v * tf.cast(tf.shape(x)[0], tf.float64)], _FILL
    ),
}


def sub_policy_index(seed: tf.Tensor) -> tf.Tensor:
    """The sub-policy an image gets, uniform over the 25 (pycls `random.choice(policy)`)."""
    choice_seed = tf.random.experimental.stateless_fold_in(seed, 0)
    return tf.random.stateless_uniform(
        [], choice_seed, maxval=len(PYCLS_AUTOAUGMENT_POLICY), dtype=tf.int32
    )


def pycls_op(image: tf.Tensor, op: str, prob: float, magnitude: float, seed: tf.Tensor):
    """pycls `apply_op`: unless a uniform draw exceeds `prob`, op `op` with argument
    `pycls_level(op, magnitude)`, negated if the op is signed and a second draw exceeds 1/2."""
    apply_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    v = tf.constant(pycls_level(op, magnitude), tf.float64)
    if PYCLS_OP_RANGES[op][2]:
        v = tf.where(tf.random.stateless_uniform([], sign_seed) > 0.5, -v, v)
    applied = tf.logical_not(tf.random.stateless_uniform([], apply_seed) > prob)
    return tf.cond(applied, lambda: PYCLS_OPS[op](image, v), lambda: tf.identity(image))


def pycls_autoaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """pycls `auto_augment`: the sub-policy `sub_policy_index(seed)`, its ops in order.

    Args:
      image: uint8 (H, W, 3) RGB image.
      seed: int32/int64 shape-[2] stateless seed; the same seed gives the same image.
    """
    shape = image.shape
    ops_seed = tf.random.experimental.stateless_fold_in(seed, 1)

    def run(sub_policy):
        out = image
        for i, (op, prob, magnitude) in enumerate(sub_policy):
            op_seed = tf.random.experimental.stateless_fold_in(ops_seed, i)
            out = pycls_op(out, op, prob, magnitude, op_seed)
        return tf.ensure_shape(out, shape)

    branches = [lambda sub=sub: run(sub) for sub in PYCLS_AUTOAUGMENT_POLICY]
    return tf.switch_case(sub_policy_index(seed), branches)


def check_policy(spec: str) -> None:
    """Refuses a config.data.auto_augment that is neither this policy nor a timm RandAugment
    string, in one sentence naming the valid ones."""
    if not spec or spec == POLICY_NAME:
        return
    try:
        ra.parse_timm_policy(spec)
    except ValueError:
        raise ValueError(
            f"Unknown augmentation policy {spec!r}; config.data.auto_augment takes "
            f"'{POLICY_NAME}' (pycls's AutoAugment, Xiao et al. 2021's ViTs), timm's RandAugment "
            "'rand-<sections>' with sections m<magnitude 0..10>, n<layers>, p<probability 0..1>, "
            "mstd<std >= 0>, mmax<max magnitude>, inc<0|1> (e.g. 'rand-m9-mstd0.5-inc1'), "
            "or '' (off)."
        ) from None
