"""Shared machinery for importing foreign checkpoints (timm, big_vision, ...) as Flax params.

A family's converter lists, for every leaf of its Flax tree, the source key it comes from and
how to reshape it; `import_tree` applies the list and reports every missing, unexpected and
mis-shaped key in one error, so a user sees the whole mismatch at once.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flax import traverse_util

Transform = Callable[[np.ndarray], np.ndarray]


# PyTorch layouts -> Flax layouts.
def conv_kernel(w: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO."""
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out); 1x1 convs used as linear layers are squeezed first."""
    if w.ndim == 4:
        w = w[:, :, 0, 0]
    return w.T


def flatten(w: np.ndarray) -> np.ndarray:
    """Per-channel vectors stored with singleton axes, e.g. timm's gain (O, 1, 1, 1)."""
    return w.reshape(-1)


def identity(w: np.ndarray) -> np.ndarray:
    return w


@dataclass(frozen=True)
class Rule:
    """One Flax leaf: its path, the source key it is read from, and the layout transform."""

    path: tuple[str, ...]
    source: str
    transform: Transform = identity


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def import_tree(
    state_dict: Mapping[str, np.ndarray],
    rules: list[Rule],
    expected,
    *,
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> dict:
    """Builds a nested dict of float32 numpy arrays shaped like `expected`.

    `expected` is a pytree of arrays or ShapeDtypeStructs (e.g. from `jax.eval_shape`); every
    leaf must be covered by exactly one rule. Source keys for which `ignore(key)` holds (e.g.
    BatchNorm's `num_batches_tracked`) are neither used nor reported as unexpected.
    """
    expected_flat = traverse_util.flatten_dict(expected)
    ruled = {rule.path for rule in rules}
    if ruled != set(expected_flat):
        raise AssertionError(  # A bug in the converter, not in the user's checkpoint.
            f"Converter for {what} does not cover the model: leaves without a rule "
            f"{sorted(set(expected_flat) - ruled)}, rules without a leaf "
            f"{sorted(ruled - set(expected_flat))}."
        )
    missing, mis_shaped, out = [], [], {}
    for rule in rules:
        if rule.source not in state_dict:
            missing.append(rule.source)
            continue
        value = rule.transform(np.asarray(state_dict[rule.source], dtype=np.float32))
        want = tuple(expected_flat[rule.path].shape)
        if value.shape != want:
            mis_shaped.append(
                f"{rule.source} {tuple(np.shape(state_dict[rule.source]))} -> "
                f"{'/'.join(rule.path)} needs {want} (got {value.shape} after conversion)"
            )
            continue
        out[rule.path] = value
    used = {rule.source for rule in rules}
    unexpected = sorted(k for k in state_dict if k not in used and not ignore(k))
    if missing or unexpected or mis_shaped:
        parts = [f"The checkpoint does not match {what}."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {', '.join(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected)}.")
        if mis_shaped:
            parts.append(f"Mis-shaped keys ({len(mis_shaped)}): {'; '.join(mis_shaped)}.")
        raise CheckpointMismatchError(" ".join(parts))
    return traverse_util.unflatten_dict(out)
