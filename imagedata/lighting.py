"""AlexNet-style PCA lighting noise (Krizhevsky et al. 2012, Section 4.1) as pycls applies it
in Xiao et al. 2021's ViT recipe (TRAIN.PCA_STD 0.1).

pycls (branch `vitconfigs`, pycls/datasets/imagenet.py `_prepare_im`) trains on
random-sized crop, flip, AutoAugment, then `transforms.lighting`, then colour normalisation,
all on float pixels in [0, 1]: `lighting` draws alpha ~ N(0, PCA_STD) per image and channel and
adds `rgb = EIG_VECS @ (alpha * EIG_VALS)` to every pixel, without clipping. Here the host draws
alpha from (seed, example slot) and ships the offset `rgb` with the uint8 image (batch entry
`lighting`, float32 (3,)); `data_config.normalize` adds it on device before normalising, so the
order and the unclipped [0, 1] scale are pycls's and the images stay uint8 on the host.
"""

import tensorflow as tf

# pycls/datasets/imagenet.py `_EIG_VALS`, `_EIG_VECS` (RGB; from fb.resnet.torch
# datasets/imagenet.lua): eigenvalues and eigenvectors (columns) of ImageNet's RGB covariance.
EIG_VALS = (0.2175, 0.0188, 0.0045)
EIG_VECS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def rgb_offset(alpha: tf.Tensor) -> tf.Tensor:
    """pycls `transforms.lighting`'s per-channel offset `sum_j EIG_VECS[i][j] alpha_j
    EIG_VALS_j` for the (3,) draws `alpha`, on the [0, 1] pixel scale."""
    eig_vecs = tf.constant(EIG_VECS, tf.float64)
    eig_vals = tf.constant(EIG_VALS, tf.float64)
    return tf.cast(tf.linalg.matvec(eig_vecs, tf.cast(alpha, tf.float64) * eig_vals), tf.float32)


def draw_alpha(seed: tf.Tensor, std: float) -> tf.Tensor:
    """alpha ~ N(0, std^2) per channel (pycls: `np.random.normal(0, alpha_std, size=(1, 3))`),
    a pure function of the shape-[2] `seed`."""
    return std * tf.random.stateless_normal([3], seed, dtype=tf.float64)


def lighting_offset(seed: tf.Tensor, std: float) -> tf.Tensor:
    """The (3,) float32 offset one image gets, drawn from `seed`."""
    return rgb_offset(draw_alpha(seed, std))
