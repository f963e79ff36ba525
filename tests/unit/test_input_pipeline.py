"""Data order, resumption, host sharding, eval coverage and corrupt records of the pipeline."""

import jax
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import input_pipeline as ip
from imagedata import data_config, data_sources

SLOW_EXAMPLES = settings(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def small_config(**overrides):
    config = data_config.default_data_config("test")
    config.update(
        dict(num_classes=7, train_resolution=8, eval_resolution=8, num_parallel_calls=2),
        **overrides,
    )
    return config


def index_images(n: int, size: int = 12) -> data_sources.ArraySource:
    """Constant images whose pixel value identifies the record (records < 256)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
    return data_sources.ArraySource(np.ascontiguousarray(images), np.arange(n) % 7, num_classes=7)


def jpeg_images(n: int, seed: int = 0) -> data_sources.ArraySource:
    rng = np.random.default_rng(seed)
    images = [
        tf.io.encode_jpeg(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)).numpy()
        for h, w in rng.integers(12, 40, size=(n, 2))
    ]
    return data_sources.ArraySource(images, np.arange(n) % 7, num_classes=7)


def global_batches(config, source, *, batch, seed, start, steps, hosts):
    """Concatenates the host slices of `steps` global batches from `hosts` iterators."""
    iterators = [
        ip.create_train_iterator(
            config,
            global_batch_size=batch,
            seed=seed,
            start_step=start,
            process_index=p,
            process_count=hosts,
            source=source,
        )
        for p in range(hosts)
    ]
    out = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        out.append({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})
    return out


def assert_epochs_are_permutations(indices: np.ndarray, num_examples: int) -> int:
    complete = len(indices) // num_examples
    for epoch in range(complete):
        seen = indices[epoch * num_examples : (epoch + 1) * num_examples]
        np.testing.assert_array_equal(np.sort(seen), np.arange(num_examples))
    return complete


@st.composite
def runs(draw, max_examples=40, max_batch=12, max_steps=24):
    """A run: N, batch, repeats, seed and the steps of its restarts (each resumes from a
    checkpoint at or before the step it was interrupted at)."""
    n = draw(st.integers(1, max_examples))
    repeats = draw(st.sampled_from([1, 2, 3]))
    batch = repeats * draw(st.integers(1, max_batch // repeats))
    seed = draw(st.integers(0, 2**63 - 1))
    total = draw(st.integers(1, max_steps))
    segments, step = [], 0
    while step < total:
        start = draw(st.integers(0, step))  # Resume from some earlier checkpoint.
        stop = draw(st.integers(start + 1, total))
        segments.append((start, stop))
        step = max(step, stop)
    return n, batch, repeats, seed, total, segments


@settings(max_examples=80, deadline=None, derandomize=True)
@given(runs())
def test_each_completed_epoch_reads_every_record_once_under_restarts(run):
    n, batch, repeats, seed, total, segments = run
    final = {}
    for start, stop in segments:
        for step in range(start, stop):
            indices = ip.global_batch_indices(
                step, num_examples=n, global_batch_size=batch, seed=seed, repeats=repeats
            )
            assert indices.dtype == np.int64 and indices.shape == (batch,)
            if step in final:  # A replayed step reads exactly what it read before.
                np.testing.assert_array_equal(indices, final[step])
            final[step] = indices
    unique = batch // repeats
    per_step = np.stack([final[s] for s in range(total)])
    for copy in range(repeats):  # Every copy of an example sits in the same batch.
        np.testing.assert_array_equal(
            per_step[:, copy * unique : (copy + 1) * unique], per_step[:, :unique]
        )
    assert_epochs_are_permutations(per_step[:, :unique].reshape(-1), n)


def test_epochs_are_reshuffled_and_seeds_differ():
    def epoch(e, seed):
        return np.concatenate(
            [
                ip.global_batch_indices(s, num_examples=100, global_batch_size=10, seed=seed)
                for s in range(10 * e, 10 * e + 10)
            ]
        )

    first, second = epoch(0, seed=1), epoch(1, seed=1)
    np.testing.assert_array_equal(np.sort(first), np.arange(100))
    np.testing.assert_array_equal(np.sort(second), np.arange(100))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, epoch(0, seed=2))
    assert not np.array_equal(first, np.arange(100))


def test_order_scales_to_billions_of_examples():
    n = 4_000_000_000  # JFT-4B.
    step = 10**6
    indices = ip.global_batch_indices(step, num_examples=n, global_batch_size=4096, seed=0)
    assert indices.min() >= 0 and indices.max() < n
    assert len(np.unique(indices)) == 4096


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0, global_batch_size=4, seed=0), "examples"),
        (dict(num_examples=5, global_batch_size=4, seed=0, repeats=3), "multiple"),
        (dict(num_examples=5, global_batch_size=4, seed=-1), "seed"),
    ],
)
def test_global_batch_indices_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ip.global_batch_indices(0, **kwargs)


@settings(SLOW_EXAMPLES, max_examples=5)
@given(
    n=st.integers(3, 30),
    batch=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**31),
    hosts=st.lists(st.sampled_from([1, 2, 4]), min_size=2, max_size=2),
    restart=st.integers(1, 6),
)
def test_pipeline_yields_global_batch_indices_on_any_host_count(n, batch, seed, hosts, restart):
    config = small_config(random_flip=False)
    source = index_images(n)
    steps = 8
    run = global_batches(
        config, source, batch=batch, seed=seed, start=0, steps=steps, hosts=hosts[0]
    )
    resumed = global_batches(
        config, source, batch=batch, seed=seed, start=restart, steps=steps - restart, hosts=hosts[1]
    )
    for step, got in enumerate(run):
        expected = ip.global_batch_indices(step, num_examples=n, global_batch_size=batch, seed=seed)
        np.testing.assert_array_equal(got["index"], expected)
        # Each slot holds the record it names: constant images keep their value through the
        # crop and resize, and labels come from the same record.
        np.testing.assert_array_equal(got["image"][:, 0, 0, 0], expected)
        np.testing.assert_array_equal(got["label"], expected % 7)
        assert got["image"].dtype == np.uint8 and got["image"].shape == (batch, 8, 8, 3)
        assert got["label"].dtype == np.int32 and not got["replaced"].any()
    for step, got in enumerate(resumed, start=restart):
        for key in run[step]:
            np.testing.assert_array_equal(got[key], run[step][key])
    assert_epochs_are_permutations(np.concatenate([b["index"] for b in run]), n)


def test_resumed_run_is_bit_identical_with_full_augmentation():
    config = small_config(
        train_resolution=16, randaugment=(2, 9), random_erasing=0.5, repeated_augmentation=2,
        pca_lighting_std=0.1,
    )
    source = jpeg_images(11)
    run = global_batches(config, source, batch=8, seed=5, start=0, steps=5, hosts=1)
    resumed = global_batches(config, source, batch=8, seed=5, start=3, steps=2, hosts=2)
    for step, got in enumerate(resumed, start=3):
        assert set(got) == set(run[step]) >= {"image", "lighting"}
        for key in got:
            np.testing.assert_array_equal(got[key], run[step][key])
    # Repeated augmentation: slots i and i + 4 hold the same example, augmented differently.
    for got in run:
        np.testing.assert_array_equal(got["index"][:4], got["index"][4:])
        assert all(not np.array_equal(got["image"][i], got["image"][i + 4]) for i in range(4))
    # PCA lighting: each slot's offset is drawn from (seed, slot), 8 distinct ones per batch.
    lighting = np.concatenate([got["lighting"] for got in run])
    assert lighting.shape == (40, 3) and lighting.dtype == np.float32
    assert len(np.unique(lighting[:, 0])) == 40


def test_eval_covers_every_example_once_with_padding_masked():
    n, batch = 21, 8
    source = jpeg_images(n, seed=1)
    config = small_config(eval_resolution=10)
    batches = {}
    for hosts in (1, 2):
        parts = [
            list(
                ip.create_eval_iterator(
                    config,
                    global_batch_size=batch,
                    process_index=p,
                    process_count=hosts,
                    source=source,
                )
            )
            for p in range(hosts)
        ]
        assert all(len(p) == 3 for p in parts)  # ceil(21 / 8) batches on every host.
        batches[hosts] = [
            {k: np.concatenate([p[b][k] for p in parts]) for k in parts[0][b]} for b in range(3)
        ]
    for one, two in zip(batches[1], batches[2], strict=True):
        for key in one:
            np.testing.assert_array_equal(one[key], two[key])
    index = np.concatenate([b["index"] for b in batches[1]])
    mask = np.concatenate([b["mask"] for b in batches[1]])
    np.testing.assert_array_equal(index[mask], np.arange(n))
    assert (index[~mask] == -1).all() and mask.sum() == n
    first = batches[1][0]
    images, labels = source.read(np.arange(8))
    np.testing.assert_array_equal(first["label"], labels)
    expected = ip.augment.eval_image(tf.constant(images[3]), ip.eval_preprocessing(config))
    np.testing.assert_array_equal(first["image"][3], expected.numpy())
    assert first["image"].shape == (8, 10, 10, 3) and first["image"].dtype == np.uint8


def corrupt_source():
    source = jpeg_images(12, seed=2)
    images, labels = source.read(np.arange(12))
    images[4] = b"not an image"
    images[5] = images[5][:40]  # Truncated JPEG.
    return data_sources.ArraySource(list(images), labels, num_classes=7, name="test set"), (4, 5)


def test_corrupt_record_stops_the_run_naming_it():
    source, bad = corrupt_source()
    with pytest.raises(ip.CorruptRecordError, match=r"record [45] of test set.*'replace'"):
        for _ in ip.create_train_iterator(
            small_config(),
            global_batch_size=4,
            seed=0,
            process_index=0,
            process_count=1,
            source=source,
        ):
            pass


def test_corrupt_records_are_replaced_deterministically_and_counted():
    source, bad = corrupt_source()
    config = small_config(corrupt_records="replace")
    steps = 6  # Two epochs of 12 records in batches of 4.
    run = global_batches(config, source, batch=4, seed=3, start=0, steps=steps, hosts=1)
    index = np.concatenate([b["index"] for b in run])
    replaced = np.concatenate([b["replaced"] for b in run])
    assert assert_epochs_are_permutations(index, 12) == 2  # Epoch length unchanged.
    assert sorted(index[replaced]) == sorted(bad * 2)
    labels = np.concatenate([b["label"] for b in run])
    # Record 4 is replaced by 6 (5 is corrupt too), record 5 by 6; labels are id % 7.
    assert (labels[replaced] == 6).all()
    resumed = global_batches(config, source, batch=4, seed=3, start=4, steps=2, hosts=2)
    for step, got in enumerate(resumed, start=4):
        for key in got:
            np.testing.assert_array_equal(got[key], run[step][key])

    evaluation = list(
        ip.create_eval_iterator(
            config, global_batch_size=8, process_index=0, process_count=1, source=source
        )
    )
    mask = np.concatenate([b["mask"] for b in evaluation])
    replaced = np.concatenate([b["replaced"] for b in evaluation])
    assert list(np.flatnonzero(replaced)) == list(bad) and mask.sum() == 12 - len(bad)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("train_resolution", 0, "train_resolution"),
        ("eval_crop_ratio", 1.5, "eval_crop_ratio"),
        ("corrupt_records", "skip", "corrupt_records"),
        ("randaugment", (2, 9, 1), "randaugment"),
        ("random_erasing", 2.0, "random_erasing"),
        ("pca_lighting_std", -0.1, "pca_lighting_std is -0.1; choose a standard deviation"),
        ("repeated_augmentation", 0, "repeated_augmentation"),
        ("num_classes", 3, "num_classes=7"),
    ],
)
def test_bad_config_gives_one_clear_error(field, value, match):
    config = small_config(**{field: value})
    with pytest.raises(ValueError, match=match):
        ip.create_train_iterator(
            config,
            global_batch_size=4,
            seed=0,
            process_index=0,
            process_count=1,
            source=index_images(5),
        )


def test_batch_must_split_evenly_over_hosts():
    with pytest.raises(ValueError, match="multiple of the host count"):
        ip.create_train_iterator(
            small_config(),
            global_batch_size=6,
            seed=0,
            process_index=0,
            process_count=4,
            source=index_images(5),
        )


def test_default_config_and_presets():
    config = data_config.default_data_config()
    assert config.name == "imagenet2012" and config.num_classes == 1000
    assert config.corrupt_records == "error" and config.randaugment is None
    config.randaugment = (4, 15)  # Configs may turn RandAugment on.
    digits = data_config.default_data_config("digits")
    assert digits.num_classes == 10 and digits.eval_split == "test"
    assert ip.num_examples(digits, "train") == 1500 and ip.num_examples(digits, "test") == 297
    synthetic = data_config.default_data_config("synthetic")
    synthetic.synthetic.eval_examples = 17
    assert ip.num_examples(synthetic, "validation") == 17


def test_normalize_matches_its_formula():
    config = small_config()
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3) * 10
    got = data_config.normalize(images, config)
    expected = (images / 255.0 - np.array(config.mean)) / np.array(config.std)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32
    bf16 = jax.numpy.bfloat16
    assert data_config.normalize(images, config, dtype=bf16).dtype == bf16


def test_to_global_batch_shards_the_batch_axis():
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    b = 2 * len(devices)
    host = dict(
        image=np.arange(b * 4 * 4 * 3, dtype=np.uint8).reshape(b, 4, 4, 3),
        label=np.arange(b, dtype=np.int32),
        index=np.arange(b, dtype=np.int64) + 7,
    )
    out = ip.to_global_batch(host, sharding)
    for key, value in host.items():
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        assert out[key].shape == value.shape
        assert out[key].sharding.spec[0] == "data"
    assert out["image"].dtype == np.uint8
    if not jax.config.jax_enable_x64:
        assert out["index"].dtype == np.int32
        with pytest.raises(ValueError, match="int32"):
            ip.to_global_batch(dict(index=np.full(b, 2**40, np.int64)), sharding)


def test_iterator_counts_replacements_per_slot():
    # `replaced` is per slot, so the loop logs `batch["replaced"].sum()`; here none are.
    got = next(
        ip.create_train_iterator(
            small_config(),
            global_batch_size=4,
            seed=0,
            process_index=0,
            process_count=1,
            source=index_images(9),
        )
    )
    assert sorted(got) == ["image", "index", "label", "replaced"]
    assert got["replaced"].dtype == bool and got["replaced"].shape == (4,)


def test_tensorflow_is_kept_off_the_accelerators(monkeypatch, caplog):
    """On a GPU machine TensorFlow sees only the CPUs; if it initialised its devices first, the
    run says so."""
    devices = {"CPU": ["cpu:0"], "GPU": ["gpu:0", "gpu:1"]}
    visible = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices[kind])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda d, kind=None: visible.append(d))
    ip.keep_tensorflow_on_the_host()
    assert visible == [["cpu:0"]]

    def too_late(devices, kind=None):
        raise RuntimeError("Visible devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "set_visible_devices", too_late)
    ip.keep_tensorflow_on_the_host()
    assert "already initialised" in caplog.text
