"""Training-preprocessing throughput: the deterministic pipeline vs a plain shuffle-buffer one.

Both pipelines decode the same in-memory JPEGs and run the same `augment.train_image` (random
resized crop decoded from the JPEG window, resize, flip, RandAugment; uint8 output) with the
same parallelism. They differ only in what the issue changes: ours computes each slot's record
and augmentation seed from (seed, step), reads records by index and batches per host; the plain
one (as in the reference NFNet code) repeats, shuffles through a buffer and draws augmentation
seeds from a stateful generator. Rounds alternate between the two, each pipeline running alone,
so that load from other processes affects both alike; the median rate of each is printed, per
core, with their ratio.

    python -m benchmarks.input_pipeline_benchmark [--images 256 --batch 64 --batches 8]
"""

import argparse
import functools
import os

import numpy as np
import tensorflow as tf

import input_pipeline
from benchmarks import pipeline_timing
from imagedata import augment, data_config, data_sources


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain) of ImageNet-like sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        h, w = int(rng.integers(300, 500)), int(rng.integers(350, 550))
        coarse = rng.uniform(0, 255, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse, [h, w], method="bicubic").numpy()
        grain = rng.normal(0, 8, (h, w, 3))
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        images.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return images


def ours(jpegs, config, batch: int) -> tf.data.Dataset:
    source = data_sources.ArraySource(jpegs, np.zeros(len(jpegs), np.int64), num_classes=1)
    return input_pipeline.create_train_iterator(
        config, global_batch_size=batch, seed=0, process_index=0, process_count=1, source=source
    )


def plain(jpegs, config, batch: int):
    """The reference NFNet pattern: repeat, shuffle buffer, map, batch, prefetch."""
    p = input_pipeline.train_preprocessing(config)
    images = tf.data.Dataset.from_tensor_slices(jpegs).repeat().shuffle(10 * batch)
    seeds = tf.data.Dataset.random(seed=0).batch(2)
    ds = tf.data.Dataset.zip(images, seeds)
    ds = ds.map(
        lambda image, seed: augment.train_image(image, seed, p),
        num_parallel_calls=config.num_parallel_calls,
    )
    ds = ds.batch(batch, drop_remainder=True).prefetch(config.prefetch)
    # The reference's training options: order may vary with thread timing, one thread per op.
    options = tf.data.Options()
    options.deterministic = False
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).as_numpy_iterator()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs in memory")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    # NFNet-F1, trained at 224 px, uses RandAugment (4, 10) (Brock et al. 2021a, Table 1).
    parser.add_argument("--randaugment", type=float, nargs=2, default=(4, 10))
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    config = data_config.default_data_config("benchmark")
    config.update(
        train_resolution=args.resolution,
        num_classes=1,
        randaugment=(int(args.randaugment[0]), args.randaugment[1]),
        num_parallel_calls=cores,
        prefetch=2,
    )
    jpegs = make_jpegs(args.images)
    builders = {"deterministic": functools.partial(ours, jpegs, config, args.batch),
                "plain": functools.partial(plain, jpegs, config, args.batch)}
    timed = pipeline_timing.measure(builders, args.rounds, args.batches, args.batch)
    rates = {name: [wall for wall, _ in r] for name, r in timed.items()}

    print(
        f"train preprocessing at {args.resolution} px, RandAugment {tuple(config.randaugment)}, "
        f"batch {args.batch}, {cores} cores, {args.rounds} rounds of {args.batches} batches"
    )
    median = {name: float(np.median(r)) for name, r in rates.items()}
    for name, value in median.items():
        rounds = ", ".join(f"{r / cores:.1f}" for r in rates[name])
        print(f"{name:>13}: {value / cores:7.1f} images/s/core (rounds: {rounds})")
    print(f"ratio deterministic / plain: {median['deterministic'] / median['plain']:.3f}")


if __name__ == "__main__":
    main()
