"""Reading a TFDS ArrayRecord dataset: our pipeline vs a plain tf.data one over the same files,
and batched reads vs one read per record, with and without simulated storage latency.

A small TFDS dataset of photo-like JPEGs is prepared locally in ArrayRecord format (no
download). Three pipelines run the same training preprocessing (`augment.train_image`: random
resized crop decoded from the JPEG window, resize, flip; uint8 output) with the same
parallelism:

- ours: `input_pipeline.create_train_iterator` over `data_sources.TfdsSource`, which reads each
  host batch with one batched call (records chosen by index, from (seed, step));
- plain: the usual streaming pattern over the same shards: contiguous chunks of a batch of
  records read in file order (one call per chunk), a shuffle buffer, the tf.train.Example parsed
  in the graph as TFDS's `as_dataset` does, augmentation seeds from a stateful generator, and
  non-deterministic order (ArrayRecord has no tf.data reader: `as_dataset` refuses it);
- per-record: ours, but reading one record per storage call, as the source did before batching.

Cloud storage is simulated by sleeping `--latency_ms` once per read call (the GIL released, as
in a real wait), so a batched call pays it once and the per-record reading once per image.
Rounds alternate between the pipelines, each running alone; the median rate of each is printed
per core, with the ratios, and so is its rate per second of this process's CPU time, the steadier
figure for CPU-bound runs on cores shared with other work (a wait costs no CPU time, so only the
wall-clock figure says what latency costs).

    python -m benchmarks.array_record_benchmark [--images 1024 --batch 64 --latency_ms 5]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

import input_pipeline
from benchmarks import pipeline_timing
from imagedata import augment, data_config, data_sources

NUM_CLASSES = 10
SPLIT = "train"


class ArrayRecordBenchmarkImages(tfds.core.GeneratorBasedBuilder):
    """`count` photo-like JPEGs of about `size` px (smooth colour fields plus grain), labels
    i % 10; prepared with `file_format='array_record'`."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # No checksums or metadata files beside this module to look up.

    def __init__(self, *, count: int = 0, size: int = 0, **kwargs):
        self._count, self._size = count, size
        super().__init__(**kwargs)

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(self._count):
            h, w = (int(x) for x in rng.integers(self._size * 3 // 4, self._size * 5 // 4, 2))
            coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
            smooth = tf.image.resize(coarse, [h, w], method="bicubic").numpy()
            pixels = np.clip(smooth + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            yield i, {"image": pixels, "label": i % NUM_CLASSES}


def prepare(data_dir: str, count: int, size: int) -> tfds.core.DatasetBuilder:
    builder = ArrayRecordBenchmarkImages(
        count=count, size=size, data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare()
    return builder


def wait(latency_s: float) -> None:
    """One simulated storage round trip (time.sleep releases the GIL, as a real wait does)."""
    if latency_s:
        time.sleep(latency_s)


class SimulatedLatency(data_sources.RandomAccessSource):
    """`source`, paying `latency_s` once per read call."""

    def __init__(self, source: data_sources.RandomAccessSource, latency_s: float):
        self._source, self._latency_s = source, latency_s
        self.num_classes, self.encoded = source.num_classes, source.encoded
        self.image_shape = source.image_shape

    def __len__(self) -> int:
        return len(self._source)

    def read(self, records):
        wait(self._latency_s)
        return self._source.read(records)

    def describe(self, record: int) -> str:
        return self._source.describe(record)


class OneReadPerRecord(SimulatedLatency):
    """`source` read as `TfdsSource` read before batching: tfds's per-record `__getitem__` with
    its Python deserialization, one storage call (and one latency) per record."""

    def __init__(self, source, latency_s: float, builder):
        super().__init__(source, latency_s)
        self._records = tfds.data_source(
            builder.name,
            split=SPLIT,
            data_dir=str(builder.data_dir_root),
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def read(self, records):
        records = self._check_records(records)
        images = np.empty(len(records), dtype=object)
        labels = np.empty(len(records), np.int32)
        for i, r in enumerate(records):
            wait(self._latency_s)
            example = self._records[int(r)]
            images[i] = example["image"]
            labels[i] = example["label"]
        return images, labels


def ours(source, config, batch: int):
    return input_pipeline.create_train_iterator(
        config, global_batch_size=batch, seed=0, process_index=0, process_count=1, source=source
    )


def plain(builder, config, batch: int, latency_s: float):
    """Streams chunks of `batch` records in file order, shuffles, parses, augments, batches."""
    split = builder.info.splits[SPLIT]
    shards = array_record_data_source.ArrayRecordDataSource(split.file_instructions)
    n = len(shards)

    def read_chunk(start):
        wait(latency_s)
        return np.array(shards.__getitems__(range(start, min(start + batch, n))), dtype=object)

    features = builder.info.features
    decoders = {"image": tfds.decode.SkipDecoding()}
    p = input_pipeline.train_preprocessing(config)

    def preprocess(serialized, seed):
        example = features.deserialize_example(serialized, decoders=decoders)
        return augment.train_image(example["image"], seed, p), example["label"]

    chunks = tf.data.Dataset.range(0, n, batch).repeat()
    records = chunks.map(
        lambda start: tf.numpy_function(read_chunk, [start], tf.string, stateful=False),
        num_parallel_calls=config.num_parallel_calls,
    )
    records = records.unbatch().shuffle(10 * batch)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    ds = tf.data.Dataset.zip(records, seeds)
    ds = ds.map(preprocess, num_parallel_calls=config.num_parallel_calls)
    ds = ds.batch(batch, drop_remainder=True).prefetch(config.prefetch)
    # The reference's training options: order may vary with thread timing, one thread per op.
    options = tf.data.Options()
    options.deterministic = False
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).as_numpy_iterator()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024, help="records in the dataset")
    parser.add_argument("--size", type=int, default=96, help="typical image side, px")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=32, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency_ms", type=float, default=5.0, help="per read call")
    parser.add_argument("--data_dir", default=None, help="default: a temporary folder")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    config = data_config.default_data_config("benchmark")
    config.update(
        train_resolution=args.resolution,
        num_classes=NUM_CLASSES,
        num_parallel_calls=cores,
        prefetch=2,
    )
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or scratch
        builder = prepare(data_dir, args.images, args.size)
        source = data_sources.TfdsSource(builder.name, SPLIT, data_dir)
        medians = {}
        for latency_ms in (0.0, args.latency_ms):
            latency_s = latency_ms / 1000
            builders = {
                "ours": lambda s=latency_s: ours(SimulatedLatency(source, s), config, args.batch),
                "plain": lambda s=latency_s: plain(builder, config, args.batch, s),
                "per-record": lambda s=latency_s: ours(
                    OneReadPerRecord(source, s, builder), config, args.batch
                ),
            }
            rates = pipeline_timing.measure(builders, args.rounds, args.batches, args.batch)
            medians[latency_ms] = {
                name: float(np.median([wall for wall, _ in r])) for name, r in rates.items()
            }
            report(rates, latency_ms, cores, args)
    return medians


def report(rates, latency_ms: float, cores: int, args) -> None:
    print(
        f"ArrayRecord, {args.images} JPEGs of ~{args.size} px, train preprocessing at "
        f"{args.resolution} px, batch {args.batch}, {cores} cores, {latency_ms:g} ms per read "
        f"call, {args.rounds} rounds of {args.batches} batches"
    )
    wall = {name: float(np.median([w for w, _ in r])) for name, r in rates.items()}
    cpu = {name: float(np.median([c for _, c in r])) for name, r in rates.items()}
    for name in rates:
        rounds = ", ".join(f"{w / cores:.1f}" for w, _ in rates[name])
        print(
            f"{name:>11}: {wall[name] / cores:8.1f} images/s/core (rounds: {rounds}); "
            f"{cpu[name]:8.1f} images per CPU-second"
        )
    for what, median in (("images/s", wall), ("images per CPU-second", cpu)):
        print(
            f"{what}: ours / plain {median['ours'] / median['plain']:.3f}, "
            f"ours / per-record {median['ours'] / median['per-record']:.2f}"
        )


if __name__ == "__main__":
    main()
