"""pycls's AlexNet-style PCA lighting noise (imagedata/lighting.py, data_config.normalize)."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from imagedata import data_config, lighting

# pycls/datasets/imagenet.py (branch vitconfigs).
PYCLS_MEAN = [0.485, 0.456, 0.406]
PYCLS_STD = [0.229, 0.224, 0.225]
PYCLS_EIG_VALS = [[0.2175, 0.0188, 0.0045]]
PYCLS_EIG_VECS = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
]


def pycls_lighting(im, alpha, eig_val, eig_vec):
    """pycls/datasets/transforms.py `lighting`, its `np.random.normal` draw passed in as
    `alpha` (shape (1, 3))."""
    alpha = np.repeat(alpha, 3, axis=0)
    eig_val = np.repeat(np.array(eig_val), 3, axis=0)
    rgb = np.sum(np.array(eig_vec) * alpha * eig_val, axis=1)
    for i in range(3):
        im[:, :, i] = im[:, :, i] + rgb[i]
    return im


def pycls_color_norm(im, mean, std):
    """pycls/datasets/transforms.py `color_norm`."""
    for i in range(3):
        im[:, :, i] = (im[:, :, i] - mean[i]) / std[i]
    return im


def test_lighting_then_normalisation_matches_pycls_given_the_same_draws():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    alphas = rng.normal(0.0, 0.1, (4, 1, 3))
    expected = np.stack([
        # pycls's float32 [0, 1] image after AutoAugment (`augment`: uint8 / 255).
        pycls_color_norm(
            pycls_lighting(im.astype(np.float32) / 255, a, PYCLS_EIG_VALS, PYCLS_EIG_VECS),
            PYCLS_MEAN, PYCLS_STD,
        )
        for im, a in zip(images, alphas, strict=True)
    ])
    offsets = np.stack([lighting.rgb_offset(tf.constant(a[0])).numpy() for a in alphas])
    config = data_config.default_data_config()  # ImageNet mean and std, as pycls's
    got = np.asarray(data_config.normalize(images, config, lighting=offsets))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    # The noise is not clipped: a white pixel with a positive offset stays above 1.
    white = np.full((1, 1, 1, 3), 255, np.uint8)
    brighter = lighting.rgb_offset(tf.constant([-0.3, 0.0, 0.0], tf.float64)).numpy()
    assert np.all(brighter > 0)
    got = np.asarray(data_config.normalize(white, config, lighting=brighter[None]))
    np.testing.assert_allclose(got[0, 0, 0], (1 + brighter - PYCLS_MEAN) / PYCLS_STD, rtol=1e-6)


def test_alphas_are_normal_with_the_configured_std_and_a_pure_function_of_the_seed():
    std = 0.1  # TRAIN.PCA_STD
    draws = np.stack([
        lighting.draw_alpha(tf.constant([7, i], tf.int64), std).numpy() for i in range(600)
    ])
    assert scipy.stats.kstest(draws.ravel(), scipy.stats.norm(0, std).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(draws.ravel(), scipy.stats.norm(0, 1.2 * std).cdf).pvalue < 1e-3
    again = lighting.lighting_offset(tf.constant([7, 3], tf.int64), std).numpy()
    expected = lighting.rgb_offset(tf.constant(draws[3])).numpy()
    np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize("std", [-0.1, float("nan")])
def test_a_negative_std_is_refused_in_one_sentence(std):
    import input_pipeline

    config = data_config.default_data_config()
    config.pca_lighting_std = std
    with pytest.raises(ValueError, match=r"^config\.data\.pca_lighting_std is .*; choose a "
                       r"standard deviation >= 0 \(0 turns it off; pycls uses 0\.1\)\.$"):
        input_pipeline.check_data_config(config)
