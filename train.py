r"""Trains any model of this codebase; the same command resumes from the workdir's checkpoint.

    python train.py --config=configs/nfnet_f7plus.py:epochs=8,lr=1.6 --workdir=DIR
    python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart --config.seed=1
    python train.py --config=configs/nfnet_f0.py:imagenet --workdir=DIR --dry_run
    python train.py --config=configs/nfnet_f7plus.py:epochs=8 --dry_run --topology=v4-256

Writes DIR/config.json, DIR/metrics.jsonl (one JSON object per logged step), TensorBoard
summaries and DIR/checkpoints/. One code path for one CPU, a GPU box, a TPU host or a
multi-host pod: config -> mesh -> data -> model -> sharded jitted step -> metrics/checkpoints.
"""

import math
import os
import sys
import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

import input_pipeline
from imagedata import data_config, data_sources
from modeling import hardware, macs, registry
from training import (
    checkpoint,
    compiled_cost,
    distributed,
    finetune,
    fsdp,
    mixing,
    optim,
    sam,
    sharding,
    steps,
    tpu_slices,
)
from training.metric_logging import ExampleIndexLog, MetricsLog

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:argument].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build everything, print sizes, shardings and step count, then exit."
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "With --dry_run: compile the train and eval steps for this TPU slice "
    "(v4-256, v5p-128, v5litepod-64, v6e-64 or a shape such as v4:4x4x8) with libtpu, here, "
    "and print whether they fit its HBM, the predicted step time and core-hours."
)


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and how to fix it."""


# ----------------------------------------------------------------------------------------------
# Setup: distributed runtime, config checks, run length.
# ----------------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict, mesh) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    devices, processes = mesh.devices.size, jax.process_count()
    batch, accum = config.global_batch_size, config.grad_accum_steps
    need(batch > 0, f"global_batch_size must be positive, got {batch}.")
    need(accum >= 1, f"grad_accum_steps must be >= 1, got {accum}.")
    need(
        batch % (devices * accum) == 0,
        f"global_batch_size {batch} must be divisible by devices ({devices}) x grad_accum_steps "
        f"({accum}); change global_batch_size, grad_accum_steps or config.mesh.",
    )
    need(
        batch % processes == 0 and config.eval_batch_size % devices == 0,
        f"global_batch_size {batch} must split over {processes} processes and eval_batch_size "
        f"{config.eval_batch_size} over {devices} devices.",
    )
    need(config.optimizer.learning_rate > 0, "optimizer.learning_rate must be positive.")
    try:
        optim.check_schedule(config.optimizer.schedule, **optim.schedule_options(config.optimizer))
        fsdp.check_gather_dtype(steps.fsdp_gather_dtype(config))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    need(
        config.nonfinite_policy in ("halt", "skip"),
        f"nonfinite_policy is {config.nonfinite_policy!r}; choose 'halt' or 'skip'.",
    )
    need(
        config.compute_dtype in ("float32", "bfloat16", "float16"),
        f"compute_dtype {config.compute_dtype!r} is not one of float32, bfloat16, float16.",
    )
    for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        need(config[field] > 0, f"{field} must be positive, got {config[field]}.")
    decay = config.ema_decay
    need(decay is None or 0 < decay < 1, f"ema_decay must be in (0, 1) or None, got {decay}.")
    mixes = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    need(
        not mixes or (batch // devices) % 2 == 0,
        f"MixUp/CutMix pair neighbouring examples on each device, so the per-device batch "
        f"(global_batch_size {batch} / {devices} devices) must be even; change "
        "global_batch_size or config.mesh.",
    )
    mode = config.get("mix_mode", "switch")
    need(mode in mixing.MIX_MODES,
         f"mix_mode {mode!r} is not one of {mixing.MIX_MODES}; set config.mix_mode.")
    need(
        not mixes or mode != "halves" or (batch // devices // 2) % accum == 0,
        f"mix_mode 'halves' trains on half of each device's batch, which grad_accum_steps "
        f"({accum}) must divide; change global_batch_size or grad_accum_steps.",
    )
    try:  # Before any compilation, so that a dry run refuses it too.
        input_pipeline.check_data_config(config.data)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    validate_finetune_config(config, need, mesh)


def validate_finetune_config(config: ml_collections.ConfigDict, need, mesh) -> None:
    """SAM, layer-wise lr decay and pre-trained initialisation (training/finetune.py)."""
    s, batch = config.sam, config.global_batch_size
    need(s.rho >= 0, f"sam.rho must be >= 0 (0 turns SAM off), got {s.rho}.")
    need(0 < s.ascent_fraction <= 1, f"sam.ascent_fraction must be in (0, 1], got "
         f"{s.ascent_fraction}.")
    need(s.num_groups >= 1 and batch % s.num_groups == 0,
         f"sam.num_groups {s.num_groups} must be >= 1 and divide global_batch_size {batch}.")
    layout_error = sam.device_layout_error(s.num_groups, s.ascent_fraction, mesh.devices.size)
    need(s.rho == 0 or layout_error is None, layout_error)
    need(s.rho == 0 or config.grad_accum_steps == 1,
         "SAM (sam.rho > 0) does not combine with gradient accumulation; set grad_accum_steps=1 "
         "or sam.rho=0.")
    decay = config.optimizer.layer_decay
    need(decay is None or 0 < decay <= 1, f"optimizer.layer_decay must be in (0, 1] or None, "
         f"got {decay}.")
    need(decay is None or config.optimizer.layer_decay_rule in optim.LAYER_RULES,
         f"optimizer.layer_decay_rule {config.optimizer.layer_decay_rule!r} is not one of "
         f"{sorted(optim.LAYER_RULES)}.")
    need(config.init.posemb_interpolation in ("bilinear", "bicubic"),
         f"init.posemb_interpolation {config.init.posemb_interpolation!r} is not 'bilinear' or "
         "'bicubic'.")


def run_length(config, num_train_examples: int) -> tuple[int, int]:
    """(total_steps, warmup_steps) from epochs or explicit step counts."""
    steps_per_epoch = num_train_examples / config.global_batch_size
    if config.total_steps > 0:
        total = config.total_steps
    elif config.total_epochs > 0:
        # Rounded down, as the reference (360 ImageNet epochs at batch 4096: 112,602 steps).
        total = max(1, math.floor(config.total_epochs * steps_per_epoch))
    else:
        raise ConfigError("Set total_epochs or total_steps to a positive value.")
    opt = config.optimizer
    if opt.warmup_steps >= 0:
        warmup = opt.warmup_steps
    else:
        warmup = round(opt.warmup_epochs * steps_per_epoch)
    if warmup > total:
        raise ConfigError(
            f"Warm-up ({warmup} steps) is longer than the run ({total} steps); lower "
            "optimizer.warmup_epochs / warmup_steps or train longer."
        )
    return total, warmup


def open_data(config, dry_run: bool = False):
    """Opens the train and eval splits once, before the model exists: sets
    config.data.num_classes from the data when it is 0 (the model's head needs it) and returns
    (train source, eval source, number of training examples). A dry run opens nothing that it
    does not need. Data errors become ConfigErrors."""
    data, num_train = config.data, config.num_train_examples
    if dry_run and num_train > 0 and data.num_classes > 0:
        return None, None, num_train
    try:
        try:
            train_source = data_sources.open_source(data, data.train_split)
        except (ValueError, OSError) as error:
            if dry_run:  # Only shapes are needed: the published size will do.
                return None, None, published_train_size(config, error)
            raise
        data.num_classes = input_pipeline.resolve_num_classes(data, data.train_split, train_source)
        eval_source = None
        if not dry_run:  # Fail now rather than at the first evaluation.
            eval_source = data_sources.open_source(data, data.eval_split)
            input_pipeline.resolve_num_classes(data, data.eval_split, eval_source)
            check_same_classes(data, train_source, eval_source)
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None
    return train_source, eval_source, num_train if num_train > 0 else len(train_source)


def published_train_size(config, error: Exception) -> int:
    """A dry run's training-set size when the data is not here: config.num_train_examples, else
    the dataset's published size (data_config.PUBLISHED_TRAIN_EXAMPLES), said on the console."""
    data = config.data
    size = config.num_train_examples
    if size <= 0:
        size = data_config.PUBLISHED_TRAIN_EXAMPLES.get(data.name, 0)
    if size <= 0 or data.num_classes <= 0:
        raise ConfigError(
            f"{error} A dry run needs only the data's size: set --config.num_train_examples "
            "and --config.data.num_classes to run it without the data.")
    print(f"data             {data.name} is not readable here; the dry run assumes {size:,} "
          f"training examples and {data.num_classes:,} classes (set "
          "--config.num_train_examples to change)")
    return size


def check_same_classes(data, train_source, eval_source) -> None:
    """Image folders label their classes by sorted folder name, so the eval split's folders must
    be the train split's: the same count under other names would silently mislabel."""
    train_classes = getattr(train_source, "classes", None)
    eval_classes = getattr(eval_source, "classes", None)
    if train_classes is not None and eval_classes is not None and train_classes != eval_classes:
        only_train = sorted(set(train_classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(train_classes))
        raise ValueError(
            f"The class folders of split {data.eval_split!r} differ from those of "
            f"{data.train_split!r} (only in {data.train_split!r}: {only_train}; only in "
            f"{data.eval_split!r}: {only_eval}); give both splits the same class folders."
        )


def create_model(config):
    return registry.create(
        config.model.name,
        num_classes=config.data.num_classes,
        dtype=jnp.dtype(config.compute_dtype),
        **config.model.overrides,
    )


# ----------------------------------------------------------------------------------------------
# Batches on devices, and evaluation.
# ----------------------------------------------------------------------------------------------


def device_batch(host_batch: dict, flag: str, batch_sharding) -> dict:
    """The global batch of the step's jitted function from this host's slice: uint8 images,
    int32 labels, the bool `flag` entry ('replaced' for training, 'mask' for evaluation) and
    the PCA lighting offsets when the pipeline draws them."""
    batch = {"image": host_batch["image"], "label": np.asarray(host_batch["label"], np.int32),
             flag: host_batch[flag]}
    if "lighting" in host_batch:
        batch["lighting"] = host_batch["lighting"]
    return input_pipeline.to_global_batch(batch, batch_sharding)


def abstract_batch(batch_size: int, resolution: int, flag: str, batch_sharding,
                   lighting: bool = False) -> dict:
    """Shapes, dtypes and sharding of `device_batch`'s output, to compile ahead of time."""
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    batch = {
        "image": spec((batch_size, resolution, resolution, 3), jnp.uint8),
        "label": spec((batch_size,), jnp.int32),
        flag: spec((batch_size,), jnp.bool_),
    }
    if lighting:
        batch["lighting"] = spec((batch_size, 3), jnp.float32)
    return batch


def compile_steps(config, model, optimizer, schedule, mesh, state, state_sharding):
    """(train step, eval step), jitted with their shardings and donation and compiled for the
    state (arrays or shapes) and the config's batches: what the loop runs, and what a dry run
    compiles for a TPU slice."""
    batch_sharding = sharding.batch_sharding(mesh)
    train_step = steps.jit_train_step(config, model, optimizer, schedule, mesh, state_sharding)
    eval_step = jax.jit(
        steps.make_eval_step(model, steps.normalizer(config), mesh=mesh,
                             param_shardings=state_sharding.params,
                             fsdp_gather_dtype=steps.fsdp_gather_dtype(config)),
        in_shardings=(state_sharding.params, state_sharding.batch_stats, batch_sharding),
        out_shardings=sharding.replicated(mesh),
    )
    train_step = train_step.lower(
        state, abstract_batch(config.global_batch_size, config.data.train_resolution,
                              "replaced", batch_sharding,
                              lighting=config.data.pca_lighting_std > 0),
    ).compile()
    eval_step = eval_step.lower(
        state.params, state.batch_stats,
        abstract_batch(config.eval_batch_size, config.data.eval_resolution, "mask",
                       batch_sharding),
    ).compile()
    return train_step, eval_step


def eval_sums(eval_step, params, batch_stats, eval_batches, batch_sharding) -> dict:
    """Summed loss, top-1, top-5 and count over the whole eval split, each example counted
    once, left on the devices (`eval_metrics` turns the fetched sums into means)."""
    totals = None
    for host_batch in eval_batches:
        sums = eval_step(params, batch_stats, device_batch(host_batch, "mask", batch_sharding))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return totals


def eval_metrics(totals: dict, prefix: str) -> dict:
    """{prefix}loss, top1 and top5: the means of fetched `eval_sums`."""
    count = float(totals["count"])
    return {f"{prefix}{key}": float(totals[key]) / count for key in ("loss", "top1", "top5")}


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------


def enable_compilation_cache(config, workdir: str) -> str | None:
    """Turns JAX's persistent compilation cache on, in config.compilation_cache_dir (default
    WORKDIR/compilation_cache; 'none': off), so that a restart of the run reuses the compiled
    steps. A directory already chosen (JAX_COMPILATION_CACHE_DIR) is kept. Returns the one
    in use."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = config.get("compilation_cache_dir", "")
    if directory == "none" or not (directory or workdir):  # E.g. a dry run without a workdir.
        return None
    directory = directory or os.path.join(workdir, "compilation_cache")
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def check_workdir_writable(workdir: str) -> None:
    """Refuses a workdir that refuses writes before anything is written there: process 0
    writes and deletes a probe file, and every process learns the outcome, so that all exit
    with the error rather than the others waiting for process 0 at the next barrier."""
    error = None
    if jax.process_index() == 0:
        probe = epath.Path(workdir) / ".write_probe"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except Exception as e:  # OSError locally; object stores raise their own errors.
            error = f"{type(e).__name__}: {e}"
    if not distributed.all_processes_agree(error is None):
        raise ConfigError(
            f"The workdir {workdir} refuses writes ({error or 'seen from process 0'}); give a "
            "writable --workdir, or fix its permissions or free space, and rerun the same "
            "command."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False,
                       topology: str | None = None):
    """Trains (or with `dry_run`, builds and describes) the run; `topology`: a TPU slice that a
    dry run compiles the steps for, ahead of time (training/tpu_slices.py)."""
    if topology and not dry_run:
        raise ConfigError("--topology compiles for a TPU slice without running; add --dry_run.")
    tpu_slice = devices = None
    if topology:
        try:
            tpu_slice = tpu_slices.parse_slice(topology)
            devices = tpu_slices.slice_devices(tpu_slice)
        except tpu_slices.SliceError as error:
            raise ConfigError(str(error)) from None
    else:
        distributed.maybe_initialize()
    enable_compilation_cache(config, workdir)
    try:
        mesh = sharding.create_mesh(dict(config.mesh), devices)
    except ValueError as error:
        where = f" ({tpu_slice.chips} chips of {topology})" if topology else ""
        raise ConfigError(f"{error}{where}") from None
    validate_config(config, mesh)
    batch_sharding = sharding.batch_sharding(mesh)

    # Data: the run length and every batch follow from the config and the step alone.
    train_source, eval_source, num_train = open_data(config, dry_run)
    total_steps, warmup_steps = run_length(config, num_train)

    # Model, optimizer and the sharded train state, created directly in its sharding.
    model = create_model(config)
    schedule = optim.config_schedule(
        config.optimizer, config.global_batch_size, total_steps, warmup_steps,
        steps_per_epoch=Fraction(num_train, config.global_batch_size),
    )
    optimizer = optim.create_optimizer(config.optimizer, schedule)
    image_shape = (config.data.train_resolution, config.data.train_resolution, 3)
    init = lambda key: steps.create_state(
        model, optimizer, key, image_shape, ema=config.ema_decay is not None
    )
    init_key = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(init, init_key)
    try:  # A parameter that the fsdp size cannot shard: one sentence naming it.
        state_sharding = sharding.tree_shardings(abstract_state, mesh,
                                                 config.fsdp_min_shard_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    num_params = macs.count_params(abstract_state.params)
    macs_per_example = macs.model_macs(model, config.data.train_resolution)

    if dry_run:
        print_dry_run(config, mesh, abstract_state, state_sharding, num_params,
                      macs_per_example, total_steps, warmup_steps, num_train)
        if config.init.path:  # Not read by a dry run; it may not exist yet.
            print(f"init             from {config.init.path} (not read by --dry_run)")
        if tpu_slice is None:
            return None
        compile_start = time.perf_counter()
        try:
            with jax.set_mesh(mesh):
                compiled = compile_steps(config, model, optimizer, schedule, mesh,
                                         sharding.with_shardings(abstract_state, state_sharding),
                                         state_sharding)
        except jax.errors.JaxRuntimeError as error:  # The compiler's "does not fit" included.
            compiled = error
        report = slice_report(config, model, tpu_slice, mesh, abstract_state, state_sharding,
                              compiled, total_steps, time.perf_counter() - compile_start)
        print_slice_report(report)
        return report

    if "://" not in workdir:  # Local path (orbax needs it absolute); gs://... kept as is.
        workdir = os.path.abspath(workdir)
    check_workdir_writable(workdir)
    checkpoint.check_or_write_config(workdir, config)
    checkpointer = checkpoint.Checkpointer(
        workdir,
        every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        async_save=config.async_checkpointing,
    )
    checkpointer.watch_sigterm()
    with jax.set_mesh(mesh):
        state = checkpointer.restore_latest(
            sharding.with_shardings(abstract_state, state_sharding)
        )
        if state is None:
            state = jax.jit(init, out_shardings=state_sharding)(init_key)
            if config.init.path:  # Fine-tuning; a resumed run restores its own checkpoint.
                try:
                    state = finetune.load_pretrained(
                        state, config, model, optimizer, state_sharding, workdir
                    )
                except finetune.PretrainedError as error:
                    raise ConfigError(str(error)) from None
        start_step = int(state.step)

        # Compiled ahead of the loop, so that every process enters it together: a process
        # that compiles much longer than another would otherwise time out the other's first
        # collective (on CPU, gloo waits 30 s). Pods recompile on every restart; say how long.
        compile_start = time.perf_counter()
        train_step, eval_step = compile_steps(config, model, optimizer, schedule, mesh, state,
                                              state_sharding)
        distributed.wait_for_all_processes("train and eval steps compiled")
        compile_seconds = time.perf_counter() - compile_start

        log = MetricsLog(workdir, resume_step=start_step, total_steps=total_steps)
        example_log = (ExampleIndexLog(workdir, resume_step=start_step)
                       if config.log_example_indices else None)
        train_flops_per_step = 6 * macs_per_example * trained_per_step(config)
        peak = config.peak_flops_per_device or hardware.peak_flops_per_second(
            jax.devices()[0].device_kind
        )
        # Seconds a step would take at the devices' peak FLOP/s: MFU = that / actual step time.
        ideal_step_time = train_flops_per_step / (peak * mesh.devices.size) if peak else None
        if jax.process_index() == 0:
            print(
                f"{config.model.name}: {num_params:,} params, {macs_per_example / 1e9:.3f} "
                f"GMACs/example, {mesh.devices.size} devices; "
                f"{'resuming at' if start_step else 'starting'} step {start_step} of "
                f"{total_steps} ({total_steps * config.global_batch_size / num_train:.3f} epochs "
                f"of {num_train:,} examples); compiled in {compile_seconds:.1f} s; "
                f"workdir {workdir}",
                flush=True,
            )

        # Built once: every evaluation iterates it from its first batch again.
        eval_batches = input_pipeline.create_eval_pipeline(
            config.data, global_batch_size=config.eval_batch_size, source=eval_source
        )

        def run_eval(state) -> dict:
            """{metric prefix: eval sums on the devices} for the params and the EMA params."""
            sums = {"eval_": eval_sums(eval_step, state.params, state.batch_stats,
                                       eval_batches, batch_sharding)}
            if state.ema_params is not None:
                sums["ema_eval_"] = eval_sums(eval_step, state.ema_params, state.batch_stats,
                                              eval_batches, batch_sharding)
            return sums

        train_iter = input_pipeline.create_train_iterator(
            config.data,
            global_batch_size=config.global_batch_size,
            seed=config.seed,
            start_step=start_step,
            source=train_source,
        )
        try:
            last_log_time, last_log_step = time.perf_counter(), start_step
            step = start_step
            while step < total_steps:
                host_batch = next(train_iter)
                batch = device_batch(host_batch, "replaced", batch_sharding)
                state, metrics = train_step(state, batch)
                step += 1
                if example_log:
                    # The gather is a collective of its own: let the step finish first, as
                    # XLA:CPU can deadlock when two multi-process programs overlap.
                    jax.block_until_ready(metrics)
                    example_log.write(step, host_batch["index"])

                is_last = step == total_steps
                eval_due = is_last or (config.eval_every_steps > 0
                                       and step % config.eval_every_steps == 0)
                fetched = None  # This step's values on the host.
                if step % config.log_every_steps == 0 or eval_due:
                    jax.block_until_ready(metrics)  # The step time ends here.
                    now = time.perf_counter()
                    step_time = (now - last_log_time) / (step - last_log_step)
                    # Everything logged, in one device-to-host copy.
                    fetched = jax.device_get(
                        {"train": metrics, "counters": state_counters(state),
                         "eval": run_eval(state) if eval_due else {}}
                    )
                    check_finite(fetched["counters"], config.nonfinite_policy)
                    record = progress_record(
                        step, fetched["train"], fetched["counters"], step_time, config,
                        num_train, total_steps, ideal_step_time=ideal_step_time,
                    )
                    for prefix, sums in fetched["eval"].items():
                        record |= eval_metrics(sums, prefix)
                    if eval_due:
                        now = time.perf_counter()  # Evaluation time is not step time.
                    last_log_time, last_log_step = now, step
                    log.write(step, record)
                    log.progress(step, record)

                preempted = checkpointer.preempted(step)
                if checkpointer.due(step) or is_last or preempted:
                    if fetched is None:
                        fetched = {"counters": jax.device_get(state_counters(state))}
                    check_finite(fetched["counters"], config.nonfinite_policy)
                    # The lines up to this step are written before the checkpoint can commit.
                    log.flush()
                    if example_log:
                        example_log.flush()
                    checkpointer.save(step, state)
                if preempted and not is_last:
                    logging.warning("Preempted: saved step %d; rerun the same command to resume.",
                                    step)
                    break
        finally:
            # Healthy checkpoints still being written are completed, whatever stopped the loop.
            try:
                checkpointer.close()
            finally:
                try:
                    if example_log:
                        example_log.flush()
                finally:
                    log.close()
    return state


def state_counters(state) -> dict:
    """The train state's counters that the loop logs and checks (device arrays)."""
    return {"nonfinite_count": state.nonfinite_count,
            "replaced_records": state.replaced_records,
            "first_nonfinite_step": state.first_nonfinite_step}


def trained_per_step(config) -> int:
    """Examples a step trains on: the global batch, or half of it where each trained example
    mixes two (mix_mode 'halves')."""
    reads = mixing.inputs_per_trained_example(
        config.get("mix_mode", "switch"), config.mixup_alpha, config.cutmix_alpha
    )
    return config.global_batch_size // reads


def progress_record(step, metrics, counters, step_time, config, num_train, total_steps, *,
                    ideal_step_time) -> dict:
    """The metrics.jsonl fields of a logged step (train metrics of that very step), from
    values already on the host."""
    record = dict(metrics)
    record |= {
        "epoch": step * config.global_batch_size / num_train,
        "examples_seen": step * config.global_batch_size,  # read (epochs count these)
        "examples_trained": step * trained_per_step(config),  # after mixing in 'halves' mode
        "nonfinite_steps": int(counters["nonfinite_count"]),
        "replaced_records": int(counters["replaced_records"]),
        "step_time": step_time,
        "examples_per_sec": trained_per_step(config) / step_time,
        "eta_hours": (total_steps - step) * step_time / 3600,
    }
    if ideal_step_time:
        record["mfu"] = ideal_step_time / step_time
    return record


def check_finite(counters: dict, policy: str) -> None:
    """With the 'halt' policy, stops (before any checkpoint) at the first NaN/Inf step;
    `counters` are the fetched `state_counters(state)`."""
    first = int(counters["first_nonfinite_step"])
    if policy == "halt" and first >= 0:
        raise FloatingPointError(
            f"Loss or gradient was NaN/Inf at step {first}; the update was not applied and no "
            "checkpoint was written after it. Lower the learning rate, or set "
            "nonfinite_policy='skip' to skip such steps."
        )


def per_device_bytes(tree, shardings) -> int:
    """Bytes of one device's shards of `tree` (abstract arrays) under `shardings`."""
    total = 0
    for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += int(np.prod(s.shard_shape(leaf.shape))) * leaf.dtype.itemsize
    return total


def print_dry_run(config, mesh, abstract_state, state_sharding, num_params, macs_per_example,
                  total_steps, warmup_steps, num_train) -> None:
    print(f"model            {config.model.name}")
    print(f"parameters       {num_params:,}")
    print(f"MACs / example   {macs_per_example / 1e9:.3f} G at {config.data.train_resolution} px")
    print(f"mesh             {dict(mesh.shape)} over {mesh.devices.size} devices, "
          f"{jax.process_count()} processes")
    print(f"train state      {per_device_bytes(abstract_state, state_sharding) / 2**30:.3f} GiB "
          "per device (params, optimizer state, EMA)")
    print(f"steps            {total_steps:,} ({warmup_steps:,} warm-up), batch "
          f"{config.global_batch_size}, {total_steps * config.global_batch_size / num_train:.3f} "
          f"epochs of {num_train:,} examples")
    print(f"train FLOPs      {6 * macs_per_example * trained_per_step(config) * total_steps:.3e} "
          "(6 x MACs x examples trained)")
    print("param shardings:")
    for line in sharding.describe(state_sharding.params, abstract_state.params):
        print("  " + line)


def slice_report(config, model, tpu_slice, mesh, abstract_state, state_sharding, compiled,
                 total_steps, compile_s) -> compiled_cost.SliceReport:
    """The dry run's answer for a TPU slice, from the steps compiled for it, or from the TPU
    compiler's refusal (`compiled`, an error) when the train step does not fit."""
    acc = hardware.accelerator(tpu_slice.accelerator)
    devices = mesh.devices.size
    layout = compiled_cost.Layout(
        batch_per_device=config.global_batch_size // devices,
        grad_accum_steps=config.grad_accum_steps, fsdp=mesh.shape["fsdp"], devices=devices,
        remat_policy=getattr(model, "remat_policy", None) if getattr(model, "remat", False)
        else None,
    )
    if isinstance(compiled, Exception):
        return refused_report(config, tpu_slice, mesh, abstract_state, state_sharding, compiled,
                              layout, total_steps, compile_s)
    train_macs = macs.model_macs(model, config.data.train_resolution)
    eval_macs = macs.model_macs(model, config.data.eval_resolution)
    analyze = lambda step, model_flops: compiled_cost.analyze(
        step, acc, devices, model_flops, abstract_state.params, state_sharding.params)
    train = analyze(compiled[0], 6 * train_macs * trained_per_step(config) / devices)
    evaluation = analyze(compiled[1], 2 * eval_macs * config.eval_batch_size / devices)
    return compiled_cost.SliceReport(
        **slice_fields(config, tpu_slice, mesh, abstract_state, total_steps, compile_s),
        train=train, evaluation=evaluation,
        verdict=compiled_cost.verdict(train.memory, evaluation.memory,
                                      compiled_cost.usable_hbm(acc), layout),
        core_hours=(compiled_cost.core_hours(train.step_s, total_steps, tpu_slice.chips, acc)
                    if train.step_s else None),
        train_hlo=compiled[0].as_text(),
    )


def refused_report(config, tpu_slice, mesh, abstract_state, state_sharding, error, layout,
                   total_steps, compile_s) -> compiled_cost.SliceReport:
    """The report of a train step that the TPU compiler refused as too large for the chip's HBM;
    any other compile error is raised."""
    oom = compiled_cost.compile_oom(str(error))
    if oom is None:
        raise error
    temporaries, available = oom
    state = per_device_bytes(abstract_state, state_sharding)
    train = compiled_cost.Memory(arguments=state, outputs=0, aliased=0, temporaries=temporaries,
                                 code=0)
    verdict = compiled_cost.Verdict(False, train.total, available,
                                    compiled_cost.suggestion(train, train.total, available,
                                                             layout))
    return compiled_cost.SliceReport(
        **slice_fields(config, tpu_slice, mesh, abstract_state, total_steps, compile_s),
        train=None, evaluation=None, verdict=verdict, core_hours=None,
        refused=f"its temporaries alone need {temporaries / 2**30:.2f} GiB of the chip's "
        f"{available / 2**30:.2f} GiB",
    )


def slice_fields(config, tpu_slice, mesh, abstract_state, total_steps, compile_s) -> dict:
    """The SliceReport fields that describe the run and the slice, compiled or refused."""
    return dict(
        model=config.model.name, params=macs.count_params(abstract_state.params),
        global_batch=config.global_batch_size, trained_per_step=trained_per_step(config),
        resolution=config.data.train_resolution, slice_name=tpu_slice.name,
        topology=tpu_slice.topology, chips=tpu_slice.chips, mesh=dict(mesh.shape),
        accelerator=hardware.accelerator(tpu_slice.accelerator).name, total_steps=total_steps,
        compile_s=compile_s)


def print_slice_report(report: compiled_cost.SliceReport) -> None:
    for line in compiled_cost.format_verdict(report):
        print(line)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Keep library INFO logs off the console.
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py.")
    if not _DRY_RUN.value and not _WORKDIR.value:
        raise app.UsageError("--workdir is required (it also resumes a run).")
    if _TOPOLOGY.value:
        jax.config.update("jax_platforms", "cpu")  # Compile for the slice; run nothing.
    try:
        train_and_evaluate(config, _WORKDIR.value, dry_run=_DRY_RUN.value,
                           topology=_TOPOLOGY.value)
    except (ConfigError, checkpoint.RunMismatchError, checkpoint.CheckpointSaveError,
            checkpoint.CheckpointRestoreError, FloatingPointError,
            input_pipeline.CorruptRecordError, distributed.StartupError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # E.g. a full disk or an unwritable workdir for metrics.
        print(f"error: {error}. The last complete checkpoint is intact; fix the cause and "
              "rerun the same command to resume.", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
