"""Random-access sources: image folders, npz arrays, TFDS ArrayRecord, synthetic, digits."""

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core.data_sources import array_record as tfds_array_record

import input_pipeline as ip
from imagedata import data_config, data_sources


def noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class PipelineTestImages(tfds.core.GeneratorBasedBuilder):
    """Six JPEG images in three classes, prepared locally in either file format."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # No checksums or metadata files beside this module to look up.

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": noise(10 + i, 12, i), "label": i % 3}


def prepared(tmp_path, file_format):
    data_dir = str(tmp_path / file_format)
    PipelineTestImages(data_dir=data_dir, file_format=file_format).download_and_prepare()
    return data_dir


def test_tfds_array_record_source_reads_encoded_records(tmp_path):
    source = data_sources.TfdsSource(
        "pipeline_test_images", "train", prepared(tmp_path, "array_record")
    )
    assert len(source) == 6 and source.num_classes == 3 and source.encoded
    images, labels = source.read(np.arange(6))
    assert all(x[:2] == b"\xff\xd8" for x in images)  # Still JPEG: decoded in the graph.
    heights = np.array([tf.io.decode_jpeg(x).shape[0] for x in images])
    assert sorted(heights) == list(range(10, 16))  # Example i is 10 + i pixels high ...
    np.testing.assert_array_equal(labels, (heights - 10) % 3)  # ... and has label i % 3.


def test_tfrecord_only_dataset_names_the_conversion_command(tmp_path):
    with pytest.raises(
        ValueError, match="tfds convert_format --dataset_version_dir=.*array_record"
    ):
        data_sources.TfdsSource("pipeline_test_images", "train", prepared(tmp_path, "tfrecord"))


def test_missing_dataset_split_or_name_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build pipeline_test_images"):
        data_sources.TfdsSource("pipeline_test_images", "train", str(tmp_path / "empty"))
    data_dir = prepared(tmp_path, "array_record")
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['train'\]"):
        data_sources.TfdsSource("pipeline_test_images", "validation", data_dir)
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset_xyz'"):
        data_sources.TfdsSource("no_such_dataset_xyz", "train", str(tmp_path))


def getitems_one_by_one(self, keys):
    """`__getitems__` for tfds.testing.mock_data (tfds 4.9.10), which installs its own as a plain
    attribute of a MagicMock, so that it is called without `self` and fails with a TypeError."""
    return [self[key] for key in keys]


def test_tfds_mock_data_flows_through_the_train_pipeline():
    config = data_config.default_data_config("mnist")
    config.update(num_classes=10, train_resolution=8, eval_resolution=8, num_parallel_calls=2)
    with (
        tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(
            tfds_array_record.ArrayRecordDataSource, "__getitems__", getitems_one_by_one
        ),
    ):
        assert ip.num_examples(config, "train") == 10
        batch = next(
            ip.create_train_iterator(
                config, global_batch_size=4, seed=0, process_index=0, process_count=1
            )
        )
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(
        batch["index"], ip.global_batch_indices(0, num_examples=10, global_batch_size=4, seed=0)
    )
    assert batch["label"].dtype == np.int32 and (batch["label"] < 10).all()


def test_image_folder_source(tmp_path):
    root = tmp_path / "train"
    for name, encode in (("cat", tf.io.encode_jpeg), ("ant", tf.io.encode_png)):
        os.makedirs(root / name)
        for i in range(2):
            (root / name / f"{i}.{'jpg' if name == 'cat' else 'png'}").write_bytes(
                encode(noise(9, 7, i)).numpy()
            )
    (root / "cat" / "notes.txt").write_text("not an image")
    config = data_config.default_data_config("image_folder")
    config.update(data_dir=str(tmp_path), num_classes=2, train_resolution=6, eval_split="train")
    source = data_sources.open_source(config, "train")
    assert source.classes == ["ant", "cat"] and len(source) == 4
    images, labels = source.read(np.arange(4))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(tf.io.decode_png(images[1]).numpy(), noise(9, 7, 1))
    assert source.describe(3).startswith(f"image file {root / 'cat' / '1.jpg'}")
    batches = list(
        ip.create_eval_iterator(config, global_batch_size=4, process_index=0, process_count=1)
    )
    assert len(batches) == 1 and batches[0]["mask"].all()
    with pytest.raises(FileNotFoundError, match="<class name>"):
        data_sources.open_source(config, "validation")
    os.remove(root / "cat" / "0.jpg")
    with pytest.raises(data_sources.RecordReadError, match=r"cat/0.jpg \(record 2\)"):
        source.read(np.arange(4))


def test_npz_and_array_sources(tmp_path):
    images = np.stack([noise(5, 5, i) for i in range(3)])
    np.savez(tmp_path / "train.npz", image=images, label=np.array([2, 0, 1]))
    config = data_config.default_data_config("npz")
    config.data_dir = str(tmp_path)
    source = data_sources.open_source(config, "train")
    got, labels = source.read(np.array([2, 0]))
    np.testing.assert_array_equal(got, images[[2, 0]])
    np.testing.assert_array_equal(labels, [1, 2])
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        source.read(np.array([3]))
    with pytest.raises(FileNotFoundError, match="np.savez"):
        data_sources.open_source(config, "validation")
    with pytest.raises(ValueError, match="one label per image"):
        data_sources.ArraySource(images, [0, 1])


def test_synthetic_images_are_a_function_of_seed_and_index():
    source = data_sources.SyntheticSource(100, image_size=6, num_classes=5, seed=1)
    a_images, a_labels = source.read(np.array([3, 7, 3]))
    np.testing.assert_array_equal(a_images[0], a_images[2])
    assert not np.array_equal(a_images[0], a_images[1])
    b_images, _ = data_sources.SyntheticSource(100, 6, 5, seed=2).read(np.array([3]))
    assert not np.array_equal(a_images[0], b_images[0])
    labels = source.read(np.arange(100))[1]
    assert set(labels) == set(range(5))


def test_digits_demo_is_bundled_and_learnable():
    config = data_config.default_data_config("digits")

    def features(split):
        config.eval_split = split
        batches = list(
            ip.create_eval_iterator(config, global_batch_size=500, process_index=0, process_count=1)
        )
        images = np.concatenate([b["image"][b["mask"]] for b in batches]).astype(np.float32)
        labels = np.concatenate([b["label"][b["mask"]] for b in batches])
        return images.reshape(len(images), -1), labels

    train_x, train_y = features("train")
    test_x, test_y = features("test")
    assert train_x.shape == (1500, 32 * 32 * 3) and test_x.shape[0] == 297
    assert set(train_y) == set(range(10))
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(10)])
    distances = ((test_x[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == test_y).mean()
    assert accuracy > 0.8, accuracy  # Chance is 0.1.
    batch = next(
        ip.create_train_iterator(
            config, global_batch_size=8, seed=0, process_index=0, process_count=1
        )
    )
    assert batch["image"].shape == (8, 32, 32, 3)


# ---------------------------------------------------------------------------------------------
# Batched reads: one call per batch returns what reading record by record returns.
# ---------------------------------------------------------------------------------------------


def tfds_array_record_source(tmp_path):
    """The source, and TFDS's own one-record-at-a-time reading of the same split."""
    data_dir = prepared(tmp_path, "array_record")
    one_by_one = tfds.data_source(
        "pipeline_test_images",
        split="train",
        data_dir=data_dir,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    source = data_sources.TfdsSource("pipeline_test_images", "train", data_dir)
    return source, lambda r: (one_by_one[r]["image"], one_by_one[r]["label"])


def image_folder_source(tmp_path):
    """The source, and each file's bytes and its class folder's position."""
    paths = []
    for label, name in enumerate(("ant", "bee")):
        os.makedirs(tmp_path / name)
        for i in range(3):
            paths.append((tmp_path / name / f"{i}.png", label))
            paths[-1][0].write_bytes(tf.io.encode_png(noise(4, 5 + i, 3 * label + i)).numpy())
    return data_sources.ImageFolderSource(str(tmp_path)), lambda r: (
        paths[r][0].read_bytes(),
        paths[r][1],
    )


def npz_source(tmp_path):
    images = np.stack([noise(3, 4, i) for i in range(6)])
    labels = np.array([3, 1, 4, 1, 5, 9])
    np.savez(tmp_path / "train.npz", image=images, label=labels)
    return data_sources.NpzSource(str(tmp_path), "train"), lambda r: (images[r], labels[r])


def record_by_record(source):
    """The same source read one record per call."""
    return source, lambda r: tuple(x[0] for x in source.read(np.array([r])))


SOURCES = dict(
    tfds_array_record=tfds_array_record_source,
    image_folder=image_folder_source,
    npz=npz_source,
    synthetic=lambda _: record_by_record(data_sources.SyntheticSource(6, 5, 3, seed=4)),
    digits=lambda _: record_by_record(data_sources.digits_source("test")),
)


@pytest.mark.parametrize("name", SOURCES)
def test_a_batched_read_returns_the_records_in_the_order_asked(name, tmp_path):
    source, one_record = SOURCES[name](tmp_path)
    records = np.array([5, 0, 3, 3, 1, 4, 2])  # Out of order, with a repeat.
    images, labels = source.read(records)
    assert len(images) == len(records) and labels.dtype == np.int32
    assert images.dtype == (object if source.encoded else np.uint8)
    for image, label, record in zip(images, labels, records, strict=True):
        want_image, want_label = one_record(int(record))
        if source.encoded:
            assert isinstance(image, bytes) and image == want_image, record
        else:
            np.testing.assert_array_equal(image, want_image)
        assert label == want_label, record


def test_an_unreadable_record_is_named_by_reads_and_by_the_pipeline(tmp_path):
    data_dir = prepared(tmp_path, "array_record")
    (shard,) = Path(data_dir).glob("pipeline_test_images/1.0.0/*.array_record-*")
    reader = array_record_module.ArrayRecordReader(str(shard))
    records = reader.read_all()
    reader.close()
    records[4] = b"\xff" * 8  # Not a tf.train.Example: an invalid wire type.
    writer = array_record_module.ArrayRecordWriter(str(shard), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    source = data_sources.TfdsSource("pipeline_test_images", "train", data_dir)
    named = r"Could not read record 4 of tfds pipeline_test_images split 'train' \(ValueError: it "
    with pytest.raises(data_sources.RecordReadError, match=named):
        source.read(np.arange(6))
    assert len(source.read(np.array([5, 3, 0]))[0]) == 3  # The other records still read.
    config = data_config.default_data_config("pipeline_test_images")
    config.update(num_classes=3, eval_resolution=8, num_parallel_calls=2)
    with pytest.raises(data_sources.RecordReadError, match=named):
        list(
            ip.create_eval_iterator(
                config, global_batch_size=6, process_index=0, process_count=1, source=source
            )
        )
