"""The eval pipeline built once per run: every pass restarts at the first batch and yields the
same batches as a freshly built eval iterator, cached or read again."""

import numpy as np
import pytest

import input_pipeline as ip
from tests.unit.test_input_pipeline import jpeg_images, small_config


class CountingSource:
    """A source that counts the pipelines built to read it (tf.data traces `tf_read` once per
    pipeline)."""

    def __init__(self, source):
        self.source, self.reads = source, 0

    def __len__(self):
        return len(self.source)

    def __getattr__(self, name):
        return getattr(self.source, name)

    def tf_read(self, records):
        self.reads += 1
        return self.source.tf_read(records)


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("cache_max_bytes", [ip.EVAL_CACHE_MAX_BYTES, 0], ids=["cached", "read"])
def test_every_pass_yields_the_batches_of_a_fresh_eval_iterator(cache_max_bytes):
    config = small_config(eval_resolution=10)
    source = jpeg_images(21, seed=1)
    fresh = list(ip.create_eval_iterator(config, global_batch_size=8, process_index=0,
                                         process_count=1, source=source))
    counting = CountingSource(source)
    batches = ip.create_eval_pipeline(config, global_batch_size=8, process_index=0,
                                      process_count=1, source=counting,
                                      cache_max_bytes=cache_max_bytes)
    first = list(batches)
    reads = counting.reads
    assert reads > 0
    assert_same_batches(first, fresh)
    assert_same_batches(list(batches), fresh)
    assert_same_batches(list(batches), fresh)
    # Kept batches are neither read nor decoded again; bigger ones are, at every pass.
    assert counting.reads == (reads if cache_max_bytes else 3 * reads)
    if cache_max_bytes:
        assert not first[0]["image"].flags.writeable


def test_an_unfinished_pass_is_not_kept():
    config = small_config(eval_resolution=10)
    counting = CountingSource(jpeg_images(21, seed=1))
    batches = ip.create_eval_pipeline(config, global_batch_size=8, process_index=0,
                                      process_count=1, source=counting)
    first = next(iter(batches))
    assert_same_batches(list(batches)[:1], [first])  # Starts at the first batch again.
    reads = counting.reads
    assert len(list(batches)) == 3 and counting.reads == reads
