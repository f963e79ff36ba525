"""Initialisation of a run from pre-trained weights (fine-tuning).

`train.py` calls `load_pretrained` once, when it creates a fresh train state and
`config.init.path` is set; a resumed run restores its own checkpoint and never reloads.
`config.init.path` is one of:
- a workdir of this codebase (config.json + checkpoints/): the params, or the EMA params when
  it has them and `config.init.use_ema`, and the BatchNorm statistics of its latest checkpoint
  (or of `config.init.step`);
- a timm `.safetensors` file (read with safetensors' numpy API), converted by the family's
  `from_timm` (ConvNeXt and ResNet-50: `variables_from_timm`, with BatchNorm statistics);
- a `.npz` file: a big_vision ViT (`vit.from_big_vision`) or a DeepMind NFNet with flattened
  Haiku names (`nfnets.haiku_import`).
A file's model is `config.init.model`, by default `config.model.name`: the same family and
variant as the model trained, which a workdir's config.json must also name.

Every parameter whose path and shape match the new model's is loaded. A head ('head/...') of
another shape (another class count) keeps the new model's initialisation: zero for ViT,
N(0, 0.01) for NFNet, trunc-normal(0.02) x head_init_scale for ConvNeXt. A ViT's learned
position embedding is resampled to the new token grid (`vit.posemb.resample`). Params matching a
`config.init.reinit` regex are re-initialised whatever their shape. Any other difference is an
error listing the parameters; checkpoint params the model has no place for are ignored. The
optimizer state starts afresh, and the EMA (if any) starts at the loaded params. Process 0
prints a summary and writes WORKDIR/init_report.json (loaded, resampled, re-initialised and
ignored param names).
"""

import dataclasses
import json
import math
import re

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from safetensors.numpy import load as load_safetensors

import convnext
import nfnets
import vit
from modeling import block_stack, registry
from modeling.weight_import import CheckpointMismatchError
from nfnets.haiku_import import from_haiku
from vit.posemb import resample

HEAD = r"^head/"
# Where checkpoint.Checkpointer saves the train state: <workdir>/checkpoints/<step>/state.
CHECKPOINTS, STATE_ITEM = "checkpoints", "state"


class PretrainedError(ValueError):
    """A pre-trained checkpoint that cannot initialise the model; the message says why."""


@dataclasses.dataclass
class Pretrained:
    """Weights read from a checkpoint, as flat {'/'-joined path: float32 array} dicts."""

    model_name: str  # Canonical '<family>_<variant>' of the checkpoint's model.
    params: dict[str, np.ndarray]
    batch_stats: dict[str, np.ndarray]
    source: dict  # What was read: path, format, step, weights.


# ----------------------------------------------------------------------------------------------
# Model names.
# ----------------------------------------------------------------------------------------------


def canonical_model_name(name: str) -> str:
    """'nfnet_f7plus' -> 'nfnet_F7+', 'vit_b16' -> 'vit_B/16'."""
    family, variant = registry.split_name(name)
    return f"{family}_{registry.family_package(family).canonical_name(variant)}"


def check_same_model(checkpoint_model: str, model: str, where: str) -> None:
    """Fine-tuning keeps the family and variant; a different one is an error naming both."""
    try:
        same = canonical_model_name(checkpoint_model) == canonical_model_name(model)
    except ValueError as error:  # An unknown family or variant.
        raise PretrainedError(f"{where}: {error}") from None
    if not same:
        raise PretrainedError(
            f"{where} holds a {canonical_model_name(checkpoint_model)} checkpoint, but the "
            f"config trains {canonical_model_name(model)}; fine-tuning needs the same family and "
            f"variant: set config.model.name to {checkpoint_model!r} or choose another checkpoint."
        )


def _timm_family(keys) -> str | None:
    """The model family of a timm state dict, from its names."""
    keys = set(keys)
    if "patch_embed.proj.weight" in keys:
        return "vit"
    if "stem.conv1.weight" in keys:
        return "nfnet"
    if "stem.0.weight" in keys or "conv1.weight" in keys:  # ConvNeXt, ResNet-50 (roadmap)
        return "convnext"
    return None


# ----------------------------------------------------------------------------------------------
# Reading checkpoints.
# ----------------------------------------------------------------------------------------------


def _flat(tree) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(dict(tree or {}), sep="/")
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def read_workdir(path: epath.Path, init: ml_collections.ConfigDict) -> Pretrained:
    """Params (or EMA params) and BatchNorm statistics of a workdir's checkpoint, on the host."""
    saved = json.loads((path / "config.json").read_text())
    directory = path / CHECKPOINTS
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    available = sorted(manager.all_steps())
    manager.close()
    if not available:
        raise PretrainedError(f"The workdir {path} has no complete checkpoint in {directory}.")
    step = available[-1] if init.step < 0 else init.step
    if step not in available:
        raise PretrainedError(
            f"The workdir {path} has no checkpoint of step {step}; it has {available} "
            "(config.init.step=-1 takes the latest)."
        )
    item = directory / str(step) / STATE_ITEM
    tree = ocp.PyTreeCheckpointHandler().metadata(item).tree
    weights = "ema_params" if init.use_ema and tree.get("ema_params") else "params"
    wanted = {weights: tree[weights]}
    if tree.get("batch_stats"):
        wanted["batch_stats"] = tree["batch_stats"]
    restored = ocp.PyTreeCheckpointer().restore(
        item,
        args=ocp.args.PyTreeRestore(
            item=jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted),
            restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted),
            partial_restore=True,
        ),
    )
    return Pretrained(
        model_name=saved["model"]["name"],
        params=_flat(restored[weights]),
        batch_stats=_flat(restored.get("batch_stats")),
        source=dict(path=str(path), format="workdir", step=step, weights=weights),
    )


def read_file(path: epath.Path, model_name: str, overrides: dict) -> Pretrained:
    """A timm `.safetensors` or big_vision / DeepMind `.npz` file, converted for `model_name`
    (its structural `overrides`, e.g. a ViT's pool, are those of the model trained)."""
    family, variant = registry.split_name(model_name)
    where = f"The file {path}"
    try:
        if path.suffix == ".safetensors":
            state_dict = load_safetensors(path.read_bytes())
            found = _timm_family(state_dict)
            if found and found != family:
                raise PretrainedError(
                    f"{where} holds a timm {found} checkpoint, but the model is {model_name} "
                    f"(family {family}); set config.model.name (and config.init.model) to a "
                    f"{found} variant or choose another checkpoint."
                )
            variables = _from_timm(state_dict, family, variant, overrides)
            fmt = "timm"
        elif path.suffix == ".npz":
            variables, fmt = _from_npz(path, family, variant, overrides)
        else:
            raise PretrainedError(
                f"config.init.path {path} is neither a workdir of this codebase (with "
                "config.json) nor a .safetensors or .npz file."
            )
    except PretrainedError:
        raise
    except CheckpointMismatchError as error:
        raise PretrainedError(
            f"{where} does not fit {model_name} (another variant? config.init.model names the "
            f"checkpoint's model): {error}"
        ) from None
    except ValueError as error:  # The converter refuses the model, e.g. a conv-stem ViT.
        raise PretrainedError(f"{where} cannot initialise {model_name}: {error}") from None
    return Pretrained(
        model_name=model_name,
        params=_flat(variables["params"]),
        batch_stats=_flat(variables.get("batch_stats")),
        source=dict(path=str(path), format=fmt, step=None, weights="params"),
    )


def _from_timm(state_dict, family: str, variant: str, overrides: dict) -> dict:
    if family == "nfnet":
        return {"params": nfnets.from_timm(state_dict, variant, **overrides)}
    if family == "convnext":
        return convnext.variables_from_timm(state_dict, variant, **overrides)
    return {"params": vit.from_timm(state_dict, variant, **overrides)}


def _from_npz(path: epath.Path, family: str, variant: str, overrides: dict):
    with path.open("rb") as f:
        try:
            arrays = dict(np.load(f, allow_pickle=False))
        except (ValueError, OSError) as error:
            raise PretrainedError(
                f"The file {path} is not a plain .npz ({error}); DeepMind's released "
                "*_haiku.npz files are pickles: convert them as nfnets/haiku_import.py shows."
            ) from None
    if any(k.startswith("NFNet/~/") for k in arrays):
        found, fmt = "nfnet", "deepmind_haiku"
    elif any(k.endswith("embedding/kernel") for k in arrays):
        found, fmt = "vit", "big_vision"
    else:
        raise PretrainedError(
            f"The file {path} is neither a big_vision ViT nor a DeepMind NFNet checkpoint "
            f"(first names: {sorted(arrays)[:5]})."
        )
    if found != family:
        raise PretrainedError(
            f"The file {path} holds a {fmt} {found} checkpoint, but the model is "
            f"{family}_{variant} (family {family}); set config.model.name to a {found} variant "
            "or choose another checkpoint."
        )
    if family == "nfnet":
        return {"params": from_haiku(arrays, variant)}, fmt
    return {"params": vit.from_big_vision(arrays, variant, **overrides)}, fmt


def read_pretrained(config: ml_collections.ConfigDict) -> Pretrained:
    """The checkpoint named by config.init.path, checked to hold the trained model's variant."""
    path = epath.Path(config.init.path)
    if not path.exists():
        raise PretrainedError(f"config.init.path {path} does not exist.")
    if (path / "config.json").exists():
        pretrained = read_workdir(path, config.init)
        where = f"The workdir {path}"
    else:
        name = config.init.model or config.model.name
        check_same_model(name, config.model.name, "config.init.model")
        pretrained = read_file(path, name, dict(config.model.overrides))
        where = f"The file {path}"
    check_same_model(pretrained.model_name, config.model.name, where)
    return pretrained


# ----------------------------------------------------------------------------------------------
# Matching checkpoint params to the model's.
# ----------------------------------------------------------------------------------------------


def _match_block_layout(params: dict[str, np.ndarray], target: dict) -> dict[str, np.ndarray]:
    """A checkpoint's blocks stacked (nn.scan) or unrolled as the model's are: ViT's 'blocks/...'
    or 'block_<i>/...', a ConvNet's 'stage<s>_blocks/...' or 'stage<s>_block<b>/...'."""
    top = lambda tree: {k.split("/", 1)[0] for k in tree}
    nested = traverse_util.unflatten_dict(params, sep="/")
    if "blocks" in top(target) and "block_0" in top(params):
        nested = vit.stack_blocks(nested)
    elif "block_0" in top(target) and "blocks" in top(params):
        nested = vit.unstack_blocks(nested)
    else:
        scanned = block_stack.has_stacked_stages(top(target))
        nested = block_stack.stage_layout({"tree": nested}, scanned)["tree"]
    return _flat(nested)


def _resample_pos_embedding(value, shape, model, method) -> np.ndarray:
    prefix = model.pos_embedding_prefix
    side = math.isqrt(shape[1] - prefix)
    if side * side != shape[1] - prefix or value.shape[2] != shape[2]:
        raise ValueError("the grids or widths do not match")
    return resample(value, (side, side), num_prefix_tokens=prefix, method=method)


def match(
    target: dict[str, tuple[int, ...]],
    source: dict[str, np.ndarray],
    *,
    model=None,
    reinit=(),
    interpolation: str = "bilinear",
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], list[str]]:
    """Values for the model's params {path: shape} from the checkpoint's {path: array}.

    Returns (values of the params to load, report {'loaded', 'resampled', 'reinitialized',
    'ignored': [descriptions]}, problems: params that can be neither loaded nor
    re-initialised). Params absent from `values` keep their fresh initialisation.
    """
    values, problems = {}, []
    report = {"loaded": [], "resampled": [], "reinitialized": [], "ignored": []}
    for path, shape in target.items():
        value = source.get(path)
        if any(re.search(pattern, path) for pattern in reinit):
            report["reinitialized"].append(f"{path} (config.init.reinit)")
        elif value is None:
            problems.append(f"{path} {shape}: not in the checkpoint")
        elif value.shape == shape:
            values[path] = value
            report["loaded"].append(path)
        elif re.search(HEAD, path):
            report["reinitialized"].append(f"{path} ({value.shape} in the checkpoint, {shape} now)")
        elif path == "pos_embedding" and hasattr(model, "pos_embedding_prefix"):
            try:
                values[path] = _resample_pos_embedding(value, shape, model, interpolation)
            except ValueError as error:
                problems.append(f"{path}: {value.shape} cannot be resampled to {shape} ({error})")
                continue
            report["resampled"].append(f"{path} ({value.shape} -> {shape}, {interpolation})")
        else:
            problems.append(f"{path}: {value.shape} in the checkpoint, {shape} in the model")
    report["ignored"] = [f"{p} {source[p].shape}" for p in sorted(set(source) - set(target))]
    return values, report, problems


# ----------------------------------------------------------------------------------------------
# The train state.
# ----------------------------------------------------------------------------------------------


def _replace_leaves(fresh, values: dict[str, np.ndarray], shardings):
    """`fresh` with the leaves named in `values` replaced by them, placed with `shardings`."""
    flat_fresh = traverse_util.flatten_dict(dict(fresh), sep="/")
    flat_shardings = traverse_util.flatten_dict(dict(shardings), sep="/")

    def place(path, leaf):
        if path not in values:
            return leaf
        value = np.asarray(values[path], leaf.dtype)
        return jax.make_array_from_callback(value.shape, flat_shardings[path], lambda i: value[i])

    placed = {path: place(path, leaf) for path, leaf in flat_fresh.items()}
    return traverse_util.unflatten_dict(placed, sep="/")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def plan(config, model, param_shapes: dict, stats_shapes: dict):
    """What config.init gives a model of these {path: shape} params and BatchNorm statistics:
    (param values, statistics values, report, the Pretrained read). Raises PretrainedError
    listing every parameter that can be neither loaded nor interpolated."""
    pretrained = read_pretrained(config)
    values, report, problems = match(
        param_shapes, _match_block_layout(pretrained.params, param_shapes), model=model,
        reinit=tuple(config.init.reinit), interpolation=config.init.posemb_interpolation,
    )
    stats, stats_report, stats_problems = match(
        stats_shapes, _match_block_layout(pretrained.batch_stats, stats_shapes)
    )
    problems += [f"batch_stats/{p}" for p in stats_problems]
    if problems:
        raise PretrainedError(
            f"The checkpoint {config.init.path} cannot initialise {config.model.name}; these "
            f"{len(problems)} parameters can be neither loaded nor interpolated: "
            + "; ".join(problems) + "."
        )
    for key in report:
        report[key] += [f"batch_stats/{p}" for p in stats_report[key]]
    return values, stats, report, pretrained


def load_pretrained(state, config, model, optimizer, shardings, workdir: str):
    """`state` (fresh, placed with `shardings`) with the pre-trained weights of config.init
    loaded into its params, EMA params and BatchNorm statistics, and its optimizer state
    re-initialised for them. Writes WORKDIR/init_report.json; raises PretrainedError."""
    values, stats, report, pretrained = plan(
        config, model, _shapes(state.params), _shapes(state.batch_stats)
    )
    params = _replace_leaves(state.params, values, shardings.params)
    ema = state.ema_params
    if ema is not None:  # Separate buffers: the train step donates the state.
        ema = _replace_leaves(ema, values, shardings.ema_params)
    state = state.replace(
        params=params,
        ema_params=ema,
        batch_stats=_replace_leaves(state.batch_stats, stats, shardings.batch_stats),
        opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params),
    )
    write_report(workdir, pretrained, config.model.name, report)
    return state


def write_report(workdir: str, pretrained: Pretrained, model_name: str, report: dict) -> None:
    if jax.process_index() != 0:
        return
    record = {
        "source": pretrained.source,
        "source_model": canonical_model_name(pretrained.model_name),
        "model": canonical_model_name(model_name),
        "counts": {key: len(names) for key, names in report.items()},
        **report,
    }
    path = epath.Path(workdir) / "init_report.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    src = pretrained.source
    print(
        f"init: {src['format']} {src['path']}"
        + (f" step {src['step']} ({src['weights']})" if src["step"] is not None else "")
        + f"; loaded {len(report['loaded'])}, resampled {len(report['resampled'])}, "
        f"re-initialised {len(report['reinitialized'])}, ignored {len(report['ignored'])}",
        flush=True,
    )
    for key in ("resampled", "reinitialized", "ignored"):
        for name in report[key]:
            print(f"  {key}: {name}", flush=True)
    print(f"  full list: {path}", flush=True)
