"""Random-access data sources: record i of a split, for any i, in O(1) memory per record.

The input pipeline decides which record each example slot reads (a pure function of the step),
so it needs sources that can read any record on demand rather than streams:

- `TfdsSource`: a TFDS dataset prepared in ArrayRecord format (`tfds.data_source`).
- `ArraySource`: in-memory numpy arrays, raw uint8 images or encoded bytes (small datasets;
  `NpzSource` loads them from `{data_dir}/{split}.npz`).
- `ImageFolderSource`: `{data_dir}/{split}/{class_name}/*.jpg|png|...`, one folder per class.
- `SyntheticSource`: random images generated in-graph from (seed, index), for benchmarks.
- `digits_source`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

Every source has `len()`, `num_classes` (None when unknown), `encoded` (images are encoded
bytes rather than uint8 arrays of `image_shape`), `read(records) -> (images, labels)` in numpy
and `tf_read(records)` for use inside a tf.data graph, and `describe(record)` for error messages.
`open_source(data_config, split)` picks the source named by `config.data.name`.

Reads are batched: the pipeline makes one `read` call per host batch, and each source serves the
whole batch at once, in the order asked, with its waits outside Python's GIL: ArrayRecord through
the data source's `__getitems__` (array_record reads each shard's records in parallel in C++),
image files through a thread pool, arrays by indexing. A record that cannot be read raises
`RecordReadError` naming it.
"""

import os
import zlib
from concurrent import futures

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
SYNTHETIC = "synthetic"
DIGITS = "digits"
IMAGE_FOLDER = "image_folder"
NPZ = "npz"
# Threads that read image files: reads wait on storage with the GIL released, so more threads
# than cores overlap the waits (the default of Python's ThreadPoolExecutor, min(32, cores + 4)).
FILE_READ_THREADS = min(32, (os.cpu_count() or 1) + 4)


class RecordReadError(OSError):
    """A record could not be read from storage (missing, unreadable or corrupt)."""


def _read_naming_the_failure(source, keys: list[int], read_batch, read_one):
    """`read_batch(keys)`; if it fails, the error naming the first key that `read_one` cannot
    read on its own (or the batch's error, when each key reads alone)."""
    try:
        return read_batch(keys)
    except Exception:  # Whatever the storage library raises: find the record.
        for key in keys:
            try:
                read_one(key)
            except Exception as cause:
                raise RecordReadError(
                    f"Could not read {source.describe(key)} ({type(cause).__name__}: {cause}); "
                    "check that the data is complete and readable, or prepare it again."
                ) from cause
        raise


class RandomAccessSource:
    """Base class: subclasses set the attributes below and implement `read` and `describe`."""

    num_classes: int | None = None
    encoded: bool = True
    image_shape: tuple[int, ...] | None = None  # For raw (not encoded) images.

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (object array of bytes, or uint8 array) and int32 labels of `records`."""
        raise NotImplementedError

    def describe(self, record: int) -> str:
        raise NotImplementedError

    def tf_read(self, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`read` as a graph op on an int64 vector of record indices."""
        image_dtype = tf.string if self.encoded else tf.uint8
        images, labels = tf.numpy_function(
            self.read, [records], [image_dtype, tf.int32], stateful=False
        )
        image_shape = [None] if self.encoded else [None, *self.image_shape]
        return tf.ensure_shape(images, image_shape), tf.ensure_shape(labels, [None])

    def _check_records(self, records: np.ndarray) -> np.ndarray:
        records = np.asarray(records, np.int64)
        if records.size and (records.min() < 0 or records.max() >= len(self)):
            raise IndexError(
                f"Record indices must lie in [0, {len(self)}), got {records.min()}..."
                f"{records.max()}; index the source with positions inside the split."
            )
        return records


class ArraySource(RandomAccessSource):
    """In-memory images and labels.

    `images` is either a uint8 array (N, H, W, C) or a sequence of N encoded images (bytes).
    """

    def __init__(self, images, labels, *, num_classes: int | None = None, name: str = "arrays"):
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
            raise ValueError(
                f"Labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
                f"{labels.shape}; pass one integer class id per image."
            )
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            if images.ndim != 4:
                raise ValueError(
                    f"Raw images must have shape (N, H, W, C), got {images.shape}; add the "
                    "missing axes (e.g. images[..., None] for greyscale)."
                )
            self.encoded = False
            self.image_shape = tuple(images.shape[1:])
            self._images = images
        else:
            self._images = np.empty(len(images), dtype=object)
            self._images[:] = [bytes(x) for x in images]
        if len(self._images) != len(labels):
            raise ValueError(
                f"Got {len(self._images)} images but {len(labels)} labels; pass one label per "
                "image."
            )
        self._labels = labels.astype(np.int32)
        self.num_classes = num_classes
        self._name = name

    def __len__(self) -> int:
        return len(self._labels)

    def read(self, records):
        records = self._check_records(records)
        return self._images[records], self._labels[records]

    def describe(self, record: int) -> str:
        return f"record {record} of {self._name}"


class NpzSource(ArraySource):
    """`{data_dir}/{split}.npz` with arrays `image` and `label`, loaded into memory."""

    def __init__(self, data_dir: str, split: str):
        path = os.path.join(data_dir or "", f"{split}.npz")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No file {path}; save the split with np.savez('{path}', image=..., label=...) "
                "or set config.data.data_dir to the folder that holds it."
            )
        with np.load(path, allow_pickle=False) as data:
            super().__init__(data["image"], data["label"], name=path)


def image_folder_classes(root: str) -> list[str]:
    """The sorted class sub-folder names of the split folder `root` (a directory listing)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"No split folder {root}; create {root}/<class name>/<image files> or point "
            "config.data.data_dir and the split name at an existing folder."
        )
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise FileNotFoundError(
            f"Split folder {root} has no class folders; put each class's images in their own "
            f"sub-folder, {root}/<class name>/<image files>."
        )
    return classes


class ImageFolderSource(RandomAccessSource):
    """`root/{class_name}/{file}` images; classes are the sorted sub-folder names, and records
    are the files in (class, file name) order."""

    def __init__(self, root: str):
        self.classes = image_folder_classes(root)
        self._paths, labels = [], []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise FileNotFoundError(
                    f"Class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add its images or remove the folder."
                )
            self._paths += [os.path.join(folder, f) for f in files]
            labels += [label] * len(files)
        self._labels = np.asarray(labels, np.int32)
        self.num_classes = len(self.classes)
        # Its threads start on the first read, so opening a source starts none.
        self._executor = futures.ThreadPoolExecutor(
            FILE_READ_THREADS, thread_name_prefix="image_folder_read"
        )

    def __len__(self) -> int:
        return len(self._paths)

    def read(self, records):
        records = self._check_records(records)
        images = np.empty(len(records), dtype=object)
        images[:] = list(self._executor.map(self._read_file, records))  # In record order.
        return images, self._labels[records]

    def _read_file(self, record: int) -> bytes:
        try:
            with open(self._paths[record], "rb") as f:
                return f.read()
        except OSError as error:
            raise RecordReadError(
                f"Could not read {self.describe(int(record))} ({error.strerror or error}); "
                "restore the file or remove it from the class folder."
            ) from error

    def describe(self, record: int) -> str:
        return f"image file {self._paths[record]} (record {record})"


class TfdsSource(RandomAccessSource):
    """A split of a TFDS dataset in ArrayRecord format, read with `tfds.data_source` as serialized
    tf.train.Examples and parsed by TensorFlow as TFDS's `as_dataset` parses them (one
    `tf.io.parse_example` per batch, with the features' `tf_example_spec`, rather than tfds's
    per-record Python deserialization); images stay encoded and are decoded by the
    preprocessing."""

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
    ):
        import tensorflow_datasets as tfds  # Imported here: only this source needs it.

        try:
            self._source = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                download=False,
                deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
            )
        except Exception as error:  # Explain what to prepare, then keep tfds's message below.
            raise _diagnose_tfds(name, split, data_dir) from error
        self._name, self._split = name, split
        self._image_key, self._label_key = image_key, label_key
        features = self._source.dataset_info.features
        spec = features.tf_example_spec
        for what, key in (("image_key", image_key), ("label_key", label_key)):
            if key not in spec:
                raise ValueError(
                    f"TFDS dataset {name!r} has no feature {key!r}; set config.data.{what} to "
                    f"one of its features, {sorted(spec)}."
                )
        self._example_spec = {image_key: spec[image_key], label_key: spec[label_key]}
        self.num_classes = getattr(features[label_key], "num_classes", None)

    def __len__(self) -> int:
        return len(self._source)

    def read(self, records):
        keys = [int(r) for r in self._check_records(records)]
        images, labels = _read_naming_the_failure(self, keys, self._read_and_parse, self._read_one)
        return images.numpy(), labels.numpy()

    def _read_serialized(self, keys: list[int]) -> tf.Tensor:
        """The serialized examples of `keys`, from one batched call: array_record reads the
        shards in parallel threads, and the records of a shard in parallel in C++, with the GIL
        released."""
        return tf.constant(self._source.__getitems__(keys), tf.string, shape=[len(keys)])

    def _read_and_parse(self, keys: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
        return self._parse(self._read_serialized(keys))

    def _read_one(self, key: int) -> None:
        """Reads and parses record `key` alone, raising what stops it."""
        serialized = self._read_serialized([key])
        try:
            self._parse(serialized)
        except Exception as error:  # TF may fail to decode its own message (tensorflow#5676).
            raise ValueError(
                "it is not a serialized tf.train.Example with the dataset's features"
            ) from error

    def _parse(self, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_example(serialized, self._example_spec)
        return example[self._image_key], tf.cast(example[self._label_key], tf.int32)

    def describe(self, record: int) -> str:
        return f"record {record} of tfds {self._name} split {self._split!r}"


def _diagnose_tfds(name: str, split: str, data_dir: str | None) -> Exception:
    """The one-sentence error for a TFDS dataset that `tfds.data_source` could not open."""
    import tensorflow_datasets as tfds

    where = f" --data_dir={data_dir}" if data_dir else ""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        return ValueError(
            f"Unknown dataset {name!r}: set config.data.name to a TFDS dataset name, "
            f"'{IMAGE_FOLDER}', '{NPZ}', '{DIGITS}' or '{SYNTHETIC}'."
        )
    if not builder.is_prepared():
        return FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it with "
            f"`tfds build {name}{where} --file_format=array_record` (manual downloads go in "
            "DATA_DIR/downloads/manual) or set config.data.data_dir to where it is."
        )
    if split not in builder.info.splits:
        return ValueError(
            f"Dataset {name!r} has no split {split!r}; set the split in config.data to one of "
            f"{sorted(builder.info.splits)}."
        )
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        return ValueError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which cannot be read by index; convert it with "
            f"`tfds convert_format --dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record`."
        )
    return RuntimeError(
        f"tfds.data_source could not open {name!r} split {split!r} in {builder.data_dir} (see "
        "the error above); check that the prepared files are complete and readable."
    )


class SyntheticSource(RandomAccessSource):
    """`num_examples` uniform-noise RGB images of `image_size` square with uniform labels, each a
    pure function of (seed, index), generated inside the graph (no reading, no decoding)."""

    encoded = False

    def __init__(self, num_examples: int, image_size: int, num_classes: int, seed: int):
        if num_examples <= 0 or image_size <= 0 or num_classes <= 0:
            raise ValueError(
                f"Synthetic data needs positive sizes, got {num_examples} examples of "
                f"{image_size} px and {num_classes} classes; fix config.data.synthetic."
            )
        self._n, self._size, self.num_classes, self._seed = (
            num_examples,
            image_size,
            num_classes,
            seed,
        )
        self.image_shape = (image_size, image_size, 3)

    def __len__(self) -> int:
        return self._n

    def tf_read(self, records):
        def one(record):
            key = tf.stack([tf.constant(self._seed, tf.int64), record])
            image_seed, label_seed = tf.unstack(tf.random.experimental.stateless_split(key))
            image = tf.random.stateless_uniform(
                self.image_shape, image_seed, minval=0, maxval=256, dtype=tf.int32
            )
            label = tf.random.stateless_uniform(
                [], label_seed, minval=0, maxval=self.num_classes, dtype=tf.int32
            )
            return tf.cast(image, tf.uint8), label

        return tf.map_fn(
            one,
            tf.cast(records, tf.int64),
            fn_output_signature=(tf.TensorSpec(self.image_shape, tf.uint8), tf.int32),
        )

    def read(self, records):
        images, labels = self.tf_read(tf.constant(self._check_records(records)))
        return images.numpy(), labels.numpy()

    def describe(self, record: int) -> str:
        return f"synthetic record {record}"


# scikit-learn's copy of the UCI optical digits test set: 1,797 8x8 images, values 0..16. The
# first 1,500 are the training split and the remaining 297 the evaluation split.
DIGITS_SPLITS = {"train": slice(0, 1500), "test": slice(1500, None)}


def digits_source(split: str) -> ArraySource:
    """The bundled digits as uint8 RGB (8, 8, 3) images (values scaled by 255 / 16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The 'digits' demo dataset ships with scikit-learn; install it with "
            "`pip install scikit-learn`."
        ) from error
    if split not in DIGITS_SPLITS:
        raise ValueError(
            f"The digits dataset has splits {sorted(DIGITS_SPLITS)}, not {split!r}; set "
            "config.data.train_split / eval_split accordingly."
        )
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)[DIGITS_SPLITS[split]]
    labels = digits.target[DIGITS_SPLITS[split]]
    return ArraySource(images, labels, num_classes=10, name=f"digits split {split!r}")


def local_data_dir(data_config) -> str:
    """`config.data.data_dir` of an image-folder or npz dataset, checked to exist."""
    data_dir = data_config.data_dir
    if not data_dir:
        raise ValueError(
            f"config.data.data_dir is empty; set it to the folder that holds the splits of the "
            f"{data_config.name!r} dataset."
        )
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"No folder {data_dir} (config.data.data_dir); set config.data.data_dir to the "
            f"existing folder that holds the splits of the {data_config.name!r} dataset."
        )
    return data_dir


def open_source(data_config, split: str) -> RandomAccessSource:
    """The source of `split` for `config.data` (see `data_config.default_data_config`)."""
    name = data_config.name
    if name == SYNTHETIC:
        synthetic = data_config.synthetic
        sizes = {data_config.train_split: synthetic.train_examples}
        sizes.setdefault(data_config.eval_split, synthetic.eval_examples)
        if split not in sizes:
            raise ValueError(
                f"Synthetic data has the splits {sorted(sizes)}, not {split!r}; use "
                "config.data.train_split or eval_split."
            )
        return SyntheticSource(
            sizes[split],
            synthetic.image_size,
            data_config.num_classes,
            seed=zlib.crc32(split.encode()),
        )
    if name == DIGITS:
        return digits_source(split)
    if name == IMAGE_FOLDER:
        return ImageFolderSource(os.path.join(local_data_dir(data_config), split))
    if name == NPZ:
        return NpzSource(local_data_dir(data_config), split)
    return TfdsSource(
        name,
        split,
        data_config.data_dir,
        image_key=data_config.image_key,
        label_key=data_config.label_key,
    )
