"""Deterministic, resumable input pipeline: the global example order is a pure function of step.

Data order. Global example number `g = step * U + j` (`U = global_batch / repeats` distinct
examples per step, `j` in [0, U)) belongs to epoch `e = g // N` at position `g % N` and reads
source record `perm(seed, e)[g % N]`, where `perm(seed, e)` is a seeded bijection of [0, N)
(TensorFlow's `RandomIndexShuffle`: a 4-round Simon-style Feistel cipher on the next power of
two, cycle-walked into [0, N) as in Black & Rogaway 2002; O(1) memory, so N may be billions).
Every epoch therefore reads each record exactly once, whatever batches straddle its boundaries.
Slot `i` in [0, B) of the global batch of a step holds example `j = i % U`, so with repeated
augmentation (Hoffer et al. 2020) each example fills `repeats` slots of the same batch, spread
over the batch rather than adjacent. Host `p` of `P` reads slots [p B / P, (p + 1) B / P); the
global sequence does not depend on P, and resuming needs only the step: a run may resume on
another host count and see the same data.

Augmentation. Slot `i` of step `s` is augmented with the stateless seed derived from
(seed, s B + i) (`imagedata/augment.py`), so a resumed run yields bit-identical batches, pixels
included.

Batches are dicts of numpy arrays: `image` uint8 (b, R, R, 3), `label` int32, `index` int64 (the
source record each slot reads; -1 for evaluation padding), `replaced` bool (the slot read a
substitute for a corrupt record), for evaluation `mask` bool (the slot holds a real example),
and for training with `pca_lighting_std` > 0 `lighting` float32 (b, 3) (the slot's PCA lighting
offset, imagedata/lighting.py). Images stay uint8 on the host; `data_config.normalize` runs on
device.

Corrupt records. A record whose preprocessing fails (e.g. an undecodable image) stops the run
with `CorruptRecordError` naming it (`corrupt_records='error'`), or (`'replace'`) is substituted
by the first of the following records, in index order, that preprocesses successfully in the
same slot; the batch is rebuilt from its step, so the substitution is a pure function of the
data, the epoch length never changes and `replaced` counts it. An evaluation slot that read a
substitute is masked out.
"""

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from imagedata import augment, autoaugment, data_sources, lighting

Batch = dict[str, np.ndarray]


def keep_tensorflow_on_the_host() -> None:
    """Makes only the CPUs visible to TensorFlow, which runs this pipeline on the host: on a GPU
    machine it would otherwise reserve most of every GPU's memory, which JAX needs."""
    try:
        tf.config.set_visible_devices(tf.config.list_physical_devices("CPU"))
    except RuntimeError as error:  # TensorFlow ran an op before this module was imported.
        logging.warning("TensorFlow's devices were already initialised; it may hold "
                        "accelerator memory (%s). Import input_pipeline before using it.", error)


keep_tensorflow_on_the_host()

# Salts that keep the random streams derived from one user seed apart.
_ORDER_SALT = 0x5EED0
_AUGMENT_SALT = 0xA06
_LIGHTING_SALT = 0x1167

CORRUPT_RECORD_MODES = ("error", "replace")


def check_data_config(c) -> None:
    """Raises ValueError, one sentence naming the field and the fix, for a bad `config.data`."""
    def fail(what: str, fix: str):
        raise ValueError(f"config.data.{what}; {fix}.")

    for field in ("train_resolution", "eval_resolution"):
        if int(c[field]) <= 0:
            fail(f"{field} is {c[field]}", "set it to a positive integer")
    if int(c.num_classes) < 0:
        fail(f"num_classes is {c.num_classes}", "set it to the class count, or 0 for the data's")
    if not 0 < c.eval_crop_ratio <= 1:
        fail(f"eval_crop_ratio is {c.eval_crop_ratio}", "choose a ratio in (0, 1], e.g. 0.875")
    if len(c.mean) != 3 or len(c.std) != 3 or min(c.std) <= 0:
        fail(f"mean {c.mean} / std {c.std} are invalid", "give 3 values each, std positive")
    lo, hi = c.crop_area_range
    if not 0 < lo <= hi <= 1:
        fail(f"crop_area_range is {c.crop_area_range}", "choose 0 < min <= max <= 1")
    lo, hi = c.crop_aspect_ratio_range
    if not 0 < lo <= hi:
        fail(f"crop_aspect_ratio_range is {c.crop_aspect_ratio_range}", "choose 0 < min <= max")
    if c.randaugment is not None and (
        len(c.randaugment) != 2 or c.randaugment[0] < 0 or c.randaugment[1] < 0
    ):
        fail(f"randaugment is {c.randaugment}", "set it to None or (layers, magnitude)")
    policy = c.get("auto_augment", "")
    if policy and c.randaugment is not None:
        fail(f"randaugment {c.randaugment} and auto_augment {policy!r} are both set",
             "keep one of them (set the other to None or '')")
    if policy:
        autoaugment.check_policy(policy)  # an unknown policy: one sentence naming the valid
    if not c.get("pca_lighting_std", 0.0) >= 0:
        fail(f"pca_lighting_std is {c.pca_lighting_std}",
             "choose a standard deviation >= 0 (0 turns it off; pycls uses 0.1)")
    if not 0 <= c.random_erasing <= 1:
        fail(f"random_erasing is {c.random_erasing}", "choose a probability in [0, 1]")
    if int(c.repeated_augmentation) < 1:
        fail(f"repeated_augmentation is {c.repeated_augmentation}", "use 1 to disable it")
    if c.corrupt_records not in CORRUPT_RECORD_MODES:
        fail(f"corrupt_records is {c.corrupt_records!r}", f"choose one of {CORRUPT_RECORD_MODES}")
    if c.interpolation not in augment.INTERPOLATIONS:
        fail(f"interpolation is {c.interpolation!r}", f"choose one of {augment.INTERPOLATIONS}")
    if c.num_parallel_calls == 0 or c.num_parallel_calls < -1:
        fail(f"num_parallel_calls is {c.num_parallel_calls}", "use a positive count or -1")
    if c.prefetch < -1:
        fail(f"prefetch is {c.prefetch}", "use a count of batches >= 0 or -1")


# ---------------------------------------------------------------------------------------------
# Data order.
# ---------------------------------------------------------------------------------------------


def _check_order_args(*, num_examples, global_batch_size, seed, repeats) -> None:
    if num_examples <= 0:
        raise ValueError(f"The split has {num_examples} examples; point the config at data.")
    if global_batch_size <= 0 or repeats <= 0 or global_batch_size % repeats:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"repeated_augmentation {repeats}; change one of them."
        )
    if not 0 <= seed < 2**63:
        raise ValueError(f"The seed must lie in [0, 2**63), got {seed}; pick another seed.")


def _example_and_slot(step, lo: int, hi: int, *, global_batch_size: int, repeats: int):
    """Global example numbers and global slot numbers of slots [lo, hi) of `step`'s batch."""
    slots = tf.range(lo, hi, dtype=tf.int64)
    unique = global_batch_size // repeats
    step = tf.cast(step, tf.int64)
    return step * unique + slots % unique, step * global_batch_size + slots


def _record_indices(example_numbers: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
    """`perm(seed, g // N)[g % N]` for each global example number g."""
    # The raw op, because `tf.random.experimental.index_shuffle` mis-pads per-element seeds;
    # each element's key is (seed, its epoch, a salt).
    epochs = example_numbers // num_examples
    ones = tf.ones_like(example_numbers)
    seeds = tf.stack([ones * seed, epochs, ones * _ORDER_SALT], axis=1)
    return tf.raw_ops.RandomIndexShuffle(
        index=example_numbers % num_examples,
        seed=seeds,
        max_index=tf.cast(num_examples - 1, tf.int64),
        rounds=4,
    )


def global_batch_indices(
    step: int, *, num_examples: int, global_batch_size: int, seed: int, repeats: int = 1
) -> np.ndarray:
    """Source record indices (int64, shape (global_batch_size,)) of the global batch at `step`.

    Slot i reads `perm(seed, g // N)[g % N]` with `g = step * U + i % U`,
    `U = global_batch_size / repeats` (see the module docstring).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    _check_order_args(
        num_examples=num_examples, global_batch_size=global_batch_size, seed=seed, repeats=repeats
    )
    args = (step, num_examples, global_batch_size, seed, repeats)
    return _global_batch_indices_graph(*[tf.constant(a, tf.int64) for a in args]).numpy()


@tf.function(autograph=False)
def _global_batch_indices_graph(step, num_examples, global_batch_size, seed, repeats):
    """`global_batch_indices` as one traced graph (all arguments int64 scalars)."""
    examples, _ = _example_and_slot(
        step, 0, global_batch_size, global_batch_size=global_batch_size, repeats=repeats
    )
    return _record_indices(examples, num_examples, seed)


# ---------------------------------------------------------------------------------------------
# tf.data assembly shared by the training and evaluation pipelines.
# ---------------------------------------------------------------------------------------------


class CorruptRecordError(ValueError):
    """A record could not be preprocessed and `corrupt_records` is 'error'."""


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything that determines one host's batches."""

    source: data_sources.RandomAccessSource
    global_batch_size: int
    host_batch_size: int
    # Batch number -> dict of (host_batch,) tensors: `slot`, `record`, `index` (+ `mask`).
    elements: Callable[[tf.Tensor], dict]
    preprocess: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (image, slot) -> uint8 image.
    num_batches: int | None  # None: endless.
    corrupt_records: str
    num_parallel_calls: int
    prefetch: int
    is_eval: bool
    # Slot -> dict of per-example tensors added to its batch entry (e.g. `lighting`), or None.
    extras: Callable[[tf.Tensor], dict] | None = None


def _read(plan: _Plan, elements: dict, overrides: dict[int, int]) -> dict:
    """Reads each slot's record, or its substitute in `overrides` (slot -> record)."""
    record, slot = elements.pop("record"), elements["slot"]
    replaced = tf.zeros_like(slot, tf.bool)
    if overrides:
        keys = tf.constant(sorted(overrides), tf.int64)
        values = tf.constant([overrides[k] for k in sorted(overrides)], tf.int64)
        at = tf.minimum(tf.searchsorted(keys, slot), len(overrides) - 1)
        replaced = tf.equal(tf.gather(keys, at), slot)
        record = tf.where(replaced, tf.gather(values, at), record)
    images, labels = plan.source.tf_read(record)
    out = dict(elements, image=images, label=labels, replaced=replaced)
    if plan.is_eval:
        out["mask"] = out["mask"] & ~replaced
    return out


def _dataset(plan: _Plan, first_batch: int, overrides: dict[int, int]) -> tf.data.Dataset:
    stop = plan.num_batches if plan.num_batches is not None else np.iinfo(np.int64).max
    ds = tf.data.Dataset.range(first_batch, stop)
    ds = ds.map(plan.elements)
    # One read call per host batch (`source.tf_read`), run ahead of the preprocessing so that
    # storage waits overlap it rather than stall it; order and errors stay in place.
    ds = ds.map(lambda e: _read(plan, e, overrides), num_parallel_calls=plan.num_parallel_calls)
    if plan.prefetch:
        ds = ds.prefetch(plan.prefetch)
    ds = ds.unbatch()

    def preprocess(e):
        e = dict(e)
        slot = e.pop("slot")
        e["image"] = plan.preprocess(e["image"], slot)
        if plan.extras is not None:
            e.update(plan.extras(slot))
        return e

    ds = ds.map(preprocess, num_parallel_calls=plan.num_parallel_calls)
    ds = ds.batch(plan.host_batch_size, drop_remainder=True)
    if plan.prefetch:
        ds = ds.prefetch(plan.prefetch)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _summary(error: Exception) -> str:
    """The first informative line of a TensorFlow error message."""
    for line in str(getattr(error, "message", error)).splitlines():
        line = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", "", line).strip()
        skip = ("Graph execution error", "Detected at node", "File ")
        if line and not line.startswith(skip):
            return line
    return type(error).__name__


def _substitutes(
    plan: _Plan, preprocess, batch: int, overrides: dict, error: Exception
) -> dict[int, int]:
    """Finds the slots of `batch` whose preprocessing fails and returns their substitutes.

    Re-runs each slot's preprocessing one by one; raises CorruptRecordError in 'error' mode,
    and re-raises `error` if no slot fails on its own (the failure was not a corrupt record).
    """
    elements = {k: v.numpy() for k, v in plan.elements(tf.constant(batch, tf.int64)).items()}
    slots = elements["slot"]
    records = np.array(
        [overrides.get(int(s), int(r)) for s, r in zip(slots, elements["record"], strict=True)]
    )
    images, _ = plan.source.read(records)  # Read errors are not corruption: let them raise.

    def fails(image, slot) -> str | None:
        try:
            preprocess(tf.constant(image), tf.constant(slot, tf.int64))
        except tf.errors.OpError as e:
            return _summary(e)
        return None

    found = {}
    for slot, record, image in zip(slots, records, images, strict=True):
        message = fails(image, slot)
        if message is None:
            continue
        if plan.corrupt_records == "error":
            raise CorruptRecordError(
                f"{plan.source.describe(int(record))} could not be preprocessed ({message}); "
                "repair or remove it, or set config.data.corrupt_records='replace' to "
                "substitute it deterministically."
            ) from error
        n = len(plan.source)
        for offset in range(1, n):
            candidate = (int(record) + offset) % n
            if fails(plan.source.read(np.array([candidate]))[0][0], slot) is None:
                found[int(slot)] = candidate
                break
        else:
            raise CorruptRecordError(
                f"No record of the split preprocesses successfully (the first failure: "
                f"{plan.source.describe(int(record))}: {message}); check the data."
            ) from error
    if not found:
        raise error
    return found


def _iterate(plan: _Plan, first_batch: int) -> Iterator[Batch]:
    """Yields the host batches from `first_batch` on, rebuilding the dataset at a failing batch
    with substitutes for its corrupt records."""
    overrides: dict[int, int] = {}
    batch = first_batch
    # Runs one slot's preprocessing on its own, to find which records fail.
    preprocess = tf.function(plan.preprocess, autograph=False, reduce_retracing=True)
    while plan.num_batches is None or batch < plan.num_batches:
        try:
            for out in _dataset(plan, batch, overrides).as_numpy_iterator():
                batch += 1
                yield out
            return
        except GeneratorExit:  # Closed by its consumer: nothing to recover.
            raise
        except tf.errors.OpError as error:
            earliest = batch * plan.global_batch_size
            overrides = {s: r for s, r in overrides.items() if s >= earliest}
            overrides.update(_substitutes(plan, preprocess, batch, overrides, error))


def _host_range(global_batch_size: int, process_index, process_count) -> tuple[int, int]:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} is not in [0, process_count={process_count}); "
            "pass this host's index and the number of hosts."
        )
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not a positive multiple of the "
            f"{process_count} hosts; choose a multiple of the host count."
        )
    host = global_batch_size // process_count
    return process_index * host, (process_index + 1) * host


def _open(data_config, split: str, source):
    check_data_config(data_config)
    source = source if source is not None else data_sources.open_source(data_config, split)
    if len(source) == 0:
        raise ValueError(f"Split {split!r} is empty; point config.data at a split with data.")
    resolve_num_classes(data_config, split, source)
    return source


def resolve_num_classes(data_config, split: str, source) -> int:
    """`config.data.num_classes`, or the source's class count when it is 0 ("from the data");
    an error when the source disagrees with the value given or cannot say."""
    given = int(data_config.num_classes)
    if given == 0 and source.num_classes is None:
        raise ValueError(
            f"config.data.num_classes is 0 (take it from the data), but split {split!r} of the "
            f"{data_config.name!r} dataset does not record its class count; set "
            "config.data.num_classes to the number of classes."
        )
    if given and source.num_classes is not None and source.num_classes != given:
        raise ValueError(
            f"Split {split!r} has {source.num_classes} classes but config.data.num_classes is "
            f"{given}; set config.data.num_classes={source.num_classes} (or 0 to take it from "
            "the data)."
        )
    return given or source.num_classes


def _parallelism(data_config) -> dict:
    n = data_config.num_parallel_calls
    return dict(
        num_parallel_calls=tf.data.AUTOTUNE if n == -1 else int(n),
        prefetch=tf.data.AUTOTUNE if data_config.prefetch == -1 else int(data_config.prefetch),
        corrupt_records=data_config.corrupt_records,
    )


# ---------------------------------------------------------------------------------------------
# Public pipelines.
# ---------------------------------------------------------------------------------------------


def train_preprocessing(data_config) -> augment.TrainPreprocessing:
    c = data_config
    return augment.TrainPreprocessing(
        resolution=int(c.train_resolution),
        area_range=tuple(c.crop_area_range),
        aspect_ratio_range=tuple(c.crop_aspect_ratio_range),
        flip=bool(c.random_flip),
        randaugment=None if c.randaugment is None else tuple(c.randaugment),
        auto_augment=c.get("auto_augment", "") or "",
        random_erasing=float(c.random_erasing),
        mean=tuple(c.mean),
        std=tuple(c.std),
        interpolation=c.interpolation,
        fallback_crop_ratio=float(c.eval_crop_ratio),
    )


def eval_preprocessing(data_config) -> augment.EvalPreprocessing:
    c = data_config
    return augment.EvalPreprocessing(
        resolution=int(c.eval_resolution),
        crop_ratio=float(c.eval_crop_ratio),
        interpolation=c.interpolation,
    )


def create_train_iterator(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    source: data_sources.RandomAccessSource | None = None,
) -> Iterator[Batch]:
    """This host's slices of the global training batches of steps start_step, start_step + 1, ...

    process_index / process_count default to jax's; `source` overrides the one named by the
    config (e.g. a `data_sources.ArraySource` of in-memory arrays).
    """
    source = _open(data_config, data_config.train_split, source)
    repeats = int(data_config.repeated_augmentation)
    _check_order_args(
        num_examples=len(source), global_batch_size=global_batch_size, seed=seed, repeats=repeats
    )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}; resume from a real step.")
    lo, hi = _host_range(global_batch_size, process_index, process_count)
    n = len(source)

    def elements(step):
        examples, slots = _example_and_slot(
            step, lo, hi, global_batch_size=global_batch_size, repeats=repeats
        )
        records = _record_indices(examples, n, seed)
        return dict(slot=slots, record=records, index=records)

    train = train_preprocessing(data_config)
    augment_seed = slot_seeds(seed, _AUGMENT_SALT)

    def preprocess(image, slot):
        return augment.train_image(image, augment_seed(slot), train)

    plan = _Plan(
        source=source,
        global_batch_size=global_batch_size,
        host_batch_size=hi - lo,
        elements=elements,
        preprocess=preprocess,
        num_batches=None,
        is_eval=False,
        extras=lighting_extras(data_config.get("pca_lighting_std", 0.0), seed),
        **_parallelism(data_config),
    )
    return _iterate(plan, start_step)


def slot_seeds(seed: int, salt: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Slot -> the stateless seed of (seed, slot) in the random stream named by `salt`."""
    key = tf.constant([seed, salt], tf.int64)
    return lambda slot: tf.random.experimental.stateless_fold_in(key, slot)


def lighting_extras(std: float, seed: int) -> Callable[[tf.Tensor], dict] | None:
    """Slot -> {'lighting': its (3,) PCA lighting offset} (imagedata/lighting.py), drawn from the
    stateless seed of (seed, slot) in a stream of its own; None when `std` is 0."""
    if not std:
        return None
    lighting_seed = slot_seeds(seed, _LIGHTING_SALT)
    return lambda slot: {"lighting": lighting.lighting_offset(lighting_seed(slot), std)}


# Host memory the preprocessed eval batches may take to be kept between evaluations (per
# host); bigger eval splits are read and decoded again at every evaluation.
EVAL_CACHE_MAX_BYTES = 4 * 2**30


class EvalBatches:
    """This host's eval batches (see `create_eval_iterator`), built once and iterable any number
    of times: every pass starts at the first batch and yields the same batches. The batches of
    the first complete pass are kept (read-only) when they take at most `cache_max_bytes`, so
    later passes neither read nor decode, as big_vision's evaluators cache their preprocessed
    data (`cache_final`); otherwise every pass reads and decodes the split again."""

    def __init__(self, plan: "_Plan", cache_max_bytes: int):
        self._plan = plan
        self._cache_max_bytes = cache_max_bytes
        self._cache: list[Batch] | None = None

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            return iter(self._cache)
        return self._first_pass()

    def _first_pass(self) -> Iterator[Batch]:
        kept: list[Batch] | None = []
        for batch in _iterate(self._plan, 0):
            batch_bytes = sum(array.nbytes for array in batch.values())
            if kept is not None and batch_bytes * self._plan.num_batches <= self._cache_max_bytes:
                for array in batch.values():
                    array.flags.writeable = False  # Later passes yield these same arrays.
                kept.append(batch)
            else:
                kept = None
            yield batch
        if kept is not None:
            self._cache = kept


def create_eval_iterator(
    data_config,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    source: data_sources.RandomAccessSource | None = None,
) -> Iterator[Batch]:
    """This host's slices of `ceil(N / global_batch_size)` global batches covering the eval
    split once, in record order; slots past the end are padding with `mask` False and index -1.
    """
    return iter(create_eval_pipeline(data_config, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count,
                                     source=source, cache_max_bytes=0))


def create_eval_pipeline(
    data_config,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    source: data_sources.RandomAccessSource | None = None,
    cache_max_bytes: int = EVAL_CACHE_MAX_BYTES,
) -> EvalBatches:
    """The batches of `create_eval_iterator` as an `EvalBatches`, to evaluate many times."""
    source = _open(data_config, data_config.eval_split, source)
    lo, hi = _host_range(global_batch_size, process_index, process_count)
    n = len(source)

    def elements(batch):
        positions = tf.cast(batch, tf.int64) * global_batch_size + tf.range(lo, hi, dtype=tf.int64)
        mask = positions < n
        return dict(
            slot=positions, record=positions % n, index=tf.where(mask, positions, -1), mask=mask
        )

    evaluation = eval_preprocessing(data_config)

    def preprocess(image, slot):
        del slot  # Evaluation preprocessing is not random.
        return augment.eval_image(image, evaluation)

    plan = _Plan(
        source=source,
        global_batch_size=global_batch_size,
        host_batch_size=hi - lo,
        elements=elements,
        preprocess=preprocess,
        num_batches=math.ceil(n / global_batch_size),
        is_eval=True,
        **_parallelism(data_config),
    )
    return EvalBatches(plan, cache_max_bytes)


def num_examples(data_config, split: str) -> int:
    """Number of records in `split` of the dataset named by `config.data`."""
    return len(data_sources.open_source(data_config, split))


# ---------------------------------------------------------------------------------------------
# Device side.
# ---------------------------------------------------------------------------------------------


def to_global_batch(host_batch: Batch, sharding: jax.sharding.NamedSharding) -> dict:
    """Global jax arrays from each host's batch slice, batch axis sharded as `sharding`.

    `sharding.spec` names the mesh axes of the batch dimension (e.g. P(('data', 'fsdp')));
    each array uses it for its leading axis and replicates the rest. int64 arrays become int32
    when jax runs without x64 (an index too large for int32 is an error).
    """
    batch_axes = sharding.spec[0] if len(sharding.spec) else None
    spec = jax.sharding.PartitionSpec(batch_axes)
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        if value.dtype == np.int64 and not jax.config.jax_enable_x64:
            info = np.iinfo(np.int32)
            if value.size and (value.min() < info.min or value.max() > info.max):
                raise ValueError(
                    f"Batch entry {key!r} holds values beyond int32; enable jax_enable_x64 or "
                    "leave it out of the device batch."
                )
            value = value.astype(np.int32)
        out[key] = jax.make_array_from_process_local_data(
            jax.sharding.NamedSharding(sharding.mesh, spec), value
        )
    return out


# ---------------------------------------------------------------------------------------------
# `python -m input_pipeline stats --config=...`: per-channel mean and std of the train split.
# ---------------------------------------------------------------------------------------------

STATS_MAX_EXAMPLES = 10_000
STATS_USAGE = (
    "python -m input_pipeline stats --config=configs/X.py [--config.data.NAME=VALUE ...] "
    f"[--max_examples={STATS_MAX_EXAMPLES}]"
)


def stats_records(num_examples: int, max_examples: int) -> np.ndarray:
    """All records, or `max_examples` evenly spaced ones: a deterministic subsample."""
    count = min(num_examples, max_examples)
    return np.arange(count, dtype=np.int64) * num_examples // count


def channel_stats(source, max_examples: int = STATS_MAX_EXAMPLES):
    """(mean, std, images read): per-channel statistics of pixels / 255 over whole decoded
    images (every pixel weighs the same) of `stats_records` of the source."""
    records = stats_records(len(source), max_examples)

    def sums(image, label):
        del label
        x = tf.reshape(tf.cast(augment.decode(image), tf.float64) / 255.0, [-1, 3])
        return tf.reduce_sum(x, 0), tf.reduce_sum(x * x, 0), tf.cast(tf.shape(x)[0], tf.float64)

    ds = tf.data.Dataset.from_tensor_slices(records).batch(256).map(source.tf_read).unbatch()
    ds = ds.map(sums, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    total, squares, pixels = np.zeros(3), np.zeros(3), 0.0
    try:
        for s, s2, n in ds.as_numpy_iterator():
            total, squares, pixels = total + s.sum(0), squares + s2.sum(0), pixels + n.sum()
    except tf.errors.OpError as error:
        raise _undecodable(source, records) from error
    mean = total / pixels
    return mean, np.sqrt(np.maximum(squares / pixels - mean**2, 0.0)), len(records)


def _undecodable(source, records) -> ValueError:
    """The error naming the first of `records` whose image does not decode."""
    for record in records:
        image, _ = source.read(np.array([record]))
        try:
            augment.decode(tf.constant(image[0]))
        except tf.errors.OpError as error:
            return ValueError(
                f"{source.describe(int(record))} cannot be decoded ({_summary(error)}); repair "
                "or remove it."
            )
    return ValueError("The images could not be read; see the error above.")


def stats_report(data_config, max_examples: int = STATS_MAX_EXAMPLES) -> str:
    """What `python -m input_pipeline stats` prints, ending with the flags to paste."""
    split = data_config.train_split
    source = data_sources.open_source(data_config, split)
    mean, std, count = channel_stats(source, max_examples)
    fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"
    return (
        f"Split {split!r} of {data_config.name!r}: {count} of {len(source)} images "
        f"(--max_examples={max_examples}, evenly spaced), pixels / 255 per channel:\n"
        f"  mean {fmt(mean)}\n  std  {fmt(std)}\n"
        f"--config.data.mean='{fmt(mean)}' --config.data.std='{fmt(std)}'"
    )


def _stats_main() -> None:
    import sys

    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "Config whose config.data is read.")
    max_examples = flags.DEFINE_integer(
        "max_examples", STATS_MAX_EXAMPLES, "Read at most this many (evenly spaced) images."
    )

    def main(argv):
        if argv[1:] != ["stats"] or config.value is None or max_examples.value <= 0:
            raise app.UsageError(f"Usage: {STATS_USAGE}")
        try:
            print(stats_report(config.value.data, max_examples.value))
        except (ValueError, OSError) as error:  # The data sources' one-sentence errors.
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(main)


if __name__ == "__main__":
    _stats_main()
