"""Import of DeepMind's NFNet checkpoints (deepmind-research/nfnets, Haiku) as Flax params.

Haiku names of the reference `nfnet.NFNet` (module name 'NFNet'), derived from its code:
  NFNet/~/stem_conv{0..3}/{w, gain, bias}
  NFNet/~/nf_block[_k]/skip_gain                        block k overall ('nf_block' is block 0)
  NFNet/~/nf_block[_k]/~/{conv0, conv1, conv1b, conv2, conv_shortcut}/{w, gain, bias}
  NFNet/~/nf_block[_k]/~/squeeze_excite/~/linear[_1]/{w, b}   fc0 and fc1 of squeeze-excite
  NFNet/~/final_conv/{w, gain, bias}
  NFNet/~/linear/{w, b}                                  the classifier
Kernels are HWIO and linear weights (in, out), as ours, so the import only renames.

The released weights (`F0_haiku.npz` ...) are, despite their suffix, dill pickles of
{module: {name: array}}. This code does not unpickle files; convert one once, trusting it:
    python -c "import dill, numpy as np; t = dill.load(open('F0_haiku.npz', 'rb')); \
np.savez('F0_flat.npz', **{f'{m}/{k}': np.asarray(v) for m, d in t.items() for k, v in d.items()})"
and pass the flat `.npz`. The names follow the reference code; no released file was available
to check them against, so `to_haiku` / `from_haiku` are tested as a round trip only.
"""

from collections.abc import Mapping

import numpy as np

from modeling import block_stack
from modeling.macs import abstract_variables
from modeling.weight_import import Rule, flatten, import_tree
from nfnets.model import NFNet
from nfnets.variants import canonical_name, create

ROOT = "NFNet/~/"
CLASSIFIER = f"{ROOT}linear"


def _ws_conv(path: tuple[str, ...], module: str) -> list[Rule]:
    return [
        Rule((*path, "kernel"), f"{module}/w"),
        Rule((*path, "gain"), f"{module}/gain", flatten),
        Rule((*path, "bias"), f"{module}/bias"),
    ]


def _block_module(index: int) -> str:
    return f"{ROOT}nf_block" + (f"_{index}" if index else "")


def _rules(model: NFNet, has_projection: dict[str, bool]) -> list[Rule]:
    rules = []
    for i in range(len(model.stem_widths) + 1):
        rules += _ws_conv((f"stem_conv{i}",), f"{ROOT}stem_conv{i}")
    index = 0
    for stage, depth in enumerate(model.depths):
        for b in range(depth):
            ours, theirs = f"stage{stage}_block{b}", _block_module(index)
            for conv in ("conv0", "conv1", "conv1b", "conv2"):
                rules += _ws_conv((ours, conv), f"{theirs}/~/{conv}")
            if has_projection[ours]:
                rules += _ws_conv((ours, "conv_shortcut"), f"{theirs}/~/conv_shortcut")
            for fc, linear in (("fc0", "linear"), ("fc1", "linear_1")):
                se = f"{theirs}/~/squeeze_excite/~/{linear}"
                rules += [Rule((ours, "se", fc, "kernel"), f"{se}/w"),
                          Rule((ours, "se", fc, "bias"), f"{se}/b")]
            rules.append(Rule((ours, "skip_gain"), f"{theirs}/skip_gain", np.squeeze))
            index += 1
    rules += _ws_conv(("final_conv",), f"{ROOT}final_conv")
    return rules + [Rule(("head", "kernel"), f"{CLASSIFIER}/w"),
                    Rule(("head", "bias"), f"{CLASSIFIER}/b")]


def _flat(haiku_params: Mapping) -> dict[str, np.ndarray]:
    """{module: {name: array}} or {'module/name': array} -> {'module/name': array}."""
    flat = {}
    for key, value in haiku_params.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}/{name}": np.asarray(v) for name, v in value.items()})
        else:
            flat[key] = np.asarray(value)
    return flat


def _model_and_rules(variant: str, num_classes: int):
    model = create(canonical_name(variant), num_classes=num_classes, scan=False)
    expected = abstract_variables(model, resolution=32)["params"]
    has_projection = {k: "conv_shortcut" in v for k, v in expected.items() if "_block" in k}
    return model, expected, _rules(model, has_projection)


def from_haiku(haiku_params: Mapping, variant: str, scan: bool | None = None) -> dict:
    """Converts DeepMind NFNet params (nested {module: {name: array}} or flat
    {'module/name': array}, e.g. `np.load('F0_flat.npz')`) into params of `variant`, with
    scanned or unrolled blocks as `scan` says (None: the variant's default). The number of
    classes is read from the classifier. Raises `weight_import.CheckpointMismatchError`
    listing every missing, unexpected or mis-shaped key."""
    flat = _flat(haiku_params)
    num_classes = np.shape(flat.get(f"{CLASSIFIER}/w", np.zeros((0, 1000))))[-1]
    _, expected, rules = _model_and_rules(variant, num_classes)
    params = import_tree(flat, rules, expected, what=f"NFNet-{canonical_name(variant)}")
    scan = create(canonical_name(variant)).scan if scan is None else scan
    return block_stack.stage_layout({"params": params}, scan)["params"]


def to_haiku(params: Mapping, variant: str) -> dict[str, np.ndarray]:
    """Our params of `variant`, in either layout, under the reference's flat Haiku names
    (inverse of `from_haiku`)."""
    params = block_stack.stage_layout({"params": dict(params)}, False)["params"]
    num_classes = np.shape(params["head"]["kernel"])[-1]
    _, _, rules = _model_and_rules(variant, num_classes)
    out = {}
    for rule in rules:
        value = params
        for part in rule.path:
            value = value[part]
        out[rule.source] = np.asarray(value)
    return out
