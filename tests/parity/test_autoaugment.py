"""pycls's AutoAugment (imagedata/autoaugment.py) against pycls's own, exported by
tests/fixtures/export_pycls_augment_fixtures.py."""

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from configs import vit_c_4gf, vit_p_4gf
from imagedata import autoaugment as aa

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pycls_augment_ops.npz"


@pytest.fixture(scope="module")
def pycls():
    return np.load(FIXTURES)


def test_policy_table_and_ranges_are_pycls(pycls):
    ops = [[op for op, _, _ in sub] for sub in aa.PYCLS_AUTOAUGMENT_POLICY]
    probs = [[p for _, p, _ in sub] for sub in aa.PYCLS_AUTOAUGMENT_POLICY]
    magnitudes = [[m for _, _, m in sub] for sub in aa.PYCLS_AUTOAUGMENT_POLICY]
    assert ops == pycls["policy_ops"].tolist()
    assert probs == pycls["policy_probs"].tolist()
    assert magnitudes == pycls["policy_magnitudes"].tolist()
    ranges = {key.split("/")[1]: pycls[key].tolist() for key in pycls.files if "range/" in key}
    assert {op: list(map(float, r)) for op, r in aa.PYCLS_OP_RANGES.items()} == ranges


def test_ops_match_pycls_exactly(pycls):
    images = pycls["images"]
    cases = [key for key in pycls.files if key.startswith("op/")]
    assert {key.split("/")[1] for key in cases} == set(aa.PYCLS_OPS)
    for key in cases:
        _, op, magnitude, negate = key.split("/")
        v = aa.pycls_level(op, float(magnitude)) * (-1 if negate == "1" else 1)
        for image, expected in zip(images, pycls[key], strict=True):
            out = aa.PYCLS_OPS[op](tf.constant(image), tf.constant(v, tf.float64))
            np.testing.assert_array_equal(out.numpy(), expected, err_msg=key)


def test_sub_policies_are_drawn_uniformly_from_the_seed():
    seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), num=5000)
    draw = tf.function(lambda s: tf.map_fn(aa.sub_policy_index, s, fn_output_signature=tf.int32))
    counts = np.bincount(draw(seeds).numpy(), minlength=25)
    assert len(counts) == 25
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    np.testing.assert_array_equal(draw(seeds[:50]).numpy(), draw(seeds[:50]).numpy())


def test_each_image_is_an_outcome_of_its_sub_policy(pycls):
    # Every output is one pycls's sub-policy can produce from the image (each op skipped or
    # applied, either sign), and ops apply with about their probabilities.
    image = pycls["images"][0]
    augment = tf.function(lambda s: (aa.pycls_autoaugment(tf.constant(image), s),
                                     aa.sub_policy_index(s)))
    seeds = [tf.constant([i, 7], tf.int64) for i in range(150)]
    unchanged = 0
    for seed in seeds:
        out, index = (t.numpy() for t in augment(seed))
        reachable = pycls[f"reachable/{index}"]
        assert any(np.array_equal(out, r) for r in reachable), f"seed {seed.numpy()}"
        unchanged += np.array_equal(out, image)
    np.testing.assert_array_equal(augment(seeds[0])[0].numpy(), augment(seeds[0])[0].numpy())
    # P(both ops skipped, or no-ops on this image) = 0.18 over the policy: 27 of 150 expected.
    assert 12 <= unchanged <= 44


def test_unknown_policies_are_refused_with_the_valid_ones_named():
    for valid in ("", "pycls-autoaugment", "rand-m9-mstd0.5-inc1"):
        aa.check_policy(valid)
    for bad in ("pycls-autoaugment-v0", "AutoAugment", "rand-m9-x1"):
        with pytest.raises(ValueError, match="'pycls-autoaugment'.*'rand-m9-mstd0.5-inc1'"):
            aa.check_policy(bad)


def test_xiao_et_al_vits_train_with_pycls_autoaugment():
    for module in (vit_c_4gf, vit_p_4gf):
        data = module.get_config().data
        assert data.auto_augment == aa.POLICY_NAME and data.randaugment is None
