"""Pieces shared by every config: the base config, the `get_config(arg)` argument parser and the
data arguments.

A config file's `get_config(arg)` takes an optional string such as "epochs=8,lr=1.6,imagenet":
comma-separated `key=value` pairs and bare flags, parsed against the defaults it declares.

Fields whose default is "unset" are typed placeholders (`FieldReference(None, field_type=...)`),
never a bare None: config_flags can only override a field of a known type. Assigning None to a
placeholder keeps its type.
"""

import ast

import ml_collections

from imagedata.data_config import DATASET_PRESETS, default_data_config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses "a=1,b=x,flag" against `defaults` (values keep the defaults' types; a bare word
    sets a bool default to True). Unknown keys are an error naming the valid ones."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(defaults)}.")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"Config argument {key!r} needs a value: {key}=...")
            parsed[key] = True
        elif isinstance(default, bool):
            parsed[key] = value.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, int | float):
            parsed[key] = type(default)(ast.literal_eval(value.strip()))
        else:
            parsed[key] = value.strip()
    return parsed


# The data arguments of every model config, for `parse_arg(arg, **DATA_ARGS, ...)`: a dataset
# name (`data_config.default_data_config`, its preset applied), its directory and class count.
DATA_ARGS = dict(data="", data_dir="", classes=0)


def data_config(
    a: ml_collections.ConfigDict, default: str = "imagenet2012"
) -> ml_collections.ConfigDict:
    """`config.data` for the parsed DATA_ARGS `a` (`a.data` '' means `default`). Without
    `classes=`, num_classes is the preset's, or 0 (from the source) for a dataset without one."""
    name = a.data or default
    data = default_data_config(name)
    if a.data_dir:
        data.data_dir = a.data_dir
    if a.classes > 0:
        data.num_classes = a.classes
    elif "num_classes" not in DATASET_PRESETS.get(name, {}):
        data.num_classes = 0
    return data


def base_config() -> ml_collections.ConfigDict:
    """Defaults every model config starts from; see the comments for each field."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(
            name="nfnet_f0",  # '<family>_<variant>', see modeling/registry.py.
            # Module field overrides passed to the family's create(), e.g. stochastic_depth.
            overrides=ml_collections.ConfigDict(),
        )
    )
    c.compute_dtype = "bfloat16"  # Activations; params and optimizer state stay float32.
    c.data = default_data_config()
    # Training length: total_epochs over num_train_examples (-1: the train split's size).
    c.num_train_examples = -1
    c.total_epochs = 1.0
    c.total_steps = -1  # If > 0, overrides total_epochs.
    c.global_batch_size = 4096
    c.grad_accum_steps = 1  # Micro-batches per step (same update, less memory).
    c.eval_batch_size = 1024
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd_agc",  # 'sgd_agc' or 'adamw'.
            learning_rate=1.6,  # Peak lr at reference_batch_size, scaled linearly with batch.
            reference_batch_size=4096,
            # 'cosine', 'constant', 'pycls' (pycls's rule, set once per epoch) or
            # 'pycls_per_step' (optim.learning_rate_schedule).
            schedule="cosine",
            warmup_epochs=5.0,
            warmup_steps=-1,  # If >= 0, overrides warmup_epochs.
            warmup_factor=0.0,  # The warm-up starts at this fraction of the peak lr.
            min_lr_fraction=0.0,  # The cosine ends at this fraction of the peak lr.
            momentum=0.9,
            nesterov=True,
            weight_decay=2e-5,
            # Regexes over '/'-joined param paths: decayed = matches an include, no exclude.
            weight_decay_include=(r"(^|/)kernel$",),  # conv and dense kernels (optim.KERNELS)
            weight_decay_exclude=(),
            agc_clip=ml_collections.FieldReference(0.01, field_type=float),  # None: no AGC.
            agc_eps=1e-3,
            agc_exclude=(r"^head/kernel$",),
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            clip_global_norm=ml_collections.FieldReference(None, field_type=float),
            # Layer-wise lr decay (fine-tuning): None, or the decay per layer with the rule that
            # assigns layers, 'convnext' or 'vit' (optim.layer_decay_factors).
            layer_decay=ml_collections.FieldReference(None, field_type=float),
            layer_decay_rule="convnext",
        )
    )
    # Sharpness-aware minimization (training/sam.py): rho = 0 is off. The ascent step uses the first
    # ascent_fraction of each of num_groups groups of the batch (1: global SAM; the number of
    # data-parallel replicas: Brock et al. 2021a's per-replica SAM). Groups stay on their
    # devices: num_groups is a multiple of the device count, or 1 with ascent_fraction 1.
    c.sam = ml_collections.ConfigDict(dict(rho=0.0, ascent_fraction=1.0, num_groups=1))
    # Initialisation from pre-trained weights (training/finetune.py); path '' trains from scratch.
    c.init = ml_collections.ConfigDict(
        dict(
            # A workdir of this codebase, a timm .safetensors file, a big_vision ViT .npz or a
            # DeepMind NFNet .npz (flattened haiku names).
            path="",
            model="",  # The checkpoint's model name if a file; '' = config.model.name.
            step=-1,  # Checkpoint step of a workdir; -1 = its latest.
            use_ema=True,  # Load a workdir's EMA params when it has them.
            reinit=(),  # Regexes of params re-initialised although they fit, e.g. '^head/'.
            posemb_interpolation="bilinear",  # ViT position embeddings: or 'bicubic'.
        )
    )
    c.label_smoothing = 0.0
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    # How MixUp and CutMix combine (training/mixing.py): 'switch' (timm: one of the two per batch,
    # coin flip) or 'halves' (the NFNet reference: MixUp on half the pairs, CutMix on the other
    # half; each trained example mixes two examples read, so a step trains on half the batch).
    c.mix_mode = "switch"
    c.ema_decay = ml_collections.FieldReference(None, field_type=float)  # None: no EMA.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices.
    c.fsdp_min_shard_size = 2**18  # Smaller tensors are replicated.
    # FSDP gathers each layer's parameters as it runs (training/fsdp.py), in gather_dtype: None
    # (the parameters' float32) or 'bfloat16' (half the traffic; gradients still reduced in f32).
    c.fsdp = ml_collections.ConfigDict(
        dict(gather_dtype=ml_collections.FieldReference(None, field_type=str))
    )
    c.nonfinite_policy = "halt"  # NaN/Inf loss or gradient: 'halt' or 'skip' the update.
    c.log_every_steps = 100
    c.eval_every_steps = 5000  # Also evaluated at the end. <= 0: only at the end.
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    # JAX's persistent compilation cache, so that a restarted run does not compile again:
    # '' is WORKDIR/compilation_cache, 'none' turns it off; JAX_COMPILATION_CACHE_DIR wins.
    c.compilation_cache_dir = ""
    # Write DIR/example_indices.jsonl (every batch's source indices) to audit data order.
    c.log_example_indices = False
    # Peak FLOP/s per device for MFU; None looks the device up in modeling/hardware.py.
    c.peak_flops_per_device = ml_collections.FieldReference(None, field_type=float)
    return c
