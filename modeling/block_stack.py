"""A network's repeated residual blocks, unrolled or as one `nn.scan`, optionally rematerialised.

Unrolled, every block is its own submodule and XLA compiles each one: compile time grows with
depth (NFNet-F7+ has 96 blocks). Scanned, the blocks of a run share one compiled body and their
variables are stacked along a new leading (depth) axis, as in big_vision and MaxText; the two
layouts compute the same function and convert into each other losslessly.

Layout conventions, which the optimizer's masks (`optim`) and the checkpoint loaders rely on:
  - a ConvNet stage <s> keeps its first block, which changes stride or width, as
    'stage<s>_block0' and stacks blocks 1.. under 'stage<s>_blocks' (unrolled:
    'stage<s>_block1', 'stage<s>_block2', ...);
  - ViT stacks all its blocks under 'blocks' (unrolled: 'block_0', 'block_1', ...).
A top-level variable name ending in 'blocks' therefore always holds stacked blocks.

Rematerialisation (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") recomputes
a block's activations in the backward pass instead of keeping them; the policy says which
intermediate results are kept anyway.
"""

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# The `jax.checkpoint_policies` usable by name (the others need arguments): 'nothing_saveable'
# recomputes the whole block; 'dots_saveable' keeps every matmul and convolution output.
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
)

_STACKED = re.compile(r"(.+_)?blocks")
_STAGE_BLOCK = re.compile(r"(stage\d+)_block(\d+)")
_STAGE_STACK = re.compile(r"(stage\d+)_blocks")


def variant_layout(scanned: bool) -> dict:
    """The model fields a variant table sets: scanned stages whose blocks are rematerialised
    keeping conv and matmul outputs (no conv is computed twice), or (no fields) the module's
    defaults, unrolled blocks."""
    return dict(scan=True, remat=True, remat_policy="dots_saveable") if scanned else {}


def check_remat_policy(policy: str) -> None:
    if policy not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat_policy {policy!r}; choose one of {list(REMAT_POLICIES)}.")


def is_stacked(path: str) -> bool:
    """Whether the variable at '/'-joined `path` holds stacked blocks (leading depth axis)."""
    return bool(_STACKED.fullmatch(path.split("/", 1)[0]))


def block_type(block: type[nn.Module], *, remat_policy: str | None, in_scan: bool,
               num_inputs: int):
    """`block`, rematerialised in the backward pass under `remat_policy` (None: not at all).

    The block is called as `block(x, *inputs, train)` with `num_inputs` per-block inputs and
    returns `(x, None)`, the carry/output pair `nn.scan` expects; `train` is static.
    """
    if remat_policy is None:
        return block
    check_remat_policy(remat_policy)
    return nn.remat(
        block,
        # Outside a scan, XLA would merge the recomputation back into the forward pass.
        prevent_cse=not in_scan,
        static_argnums=(num_inputs + 2,),  # (self, x, *inputs, train)
        policy=getattr(jax.checkpoint_policies, remat_policy),
    )


def repeat(
    block,
    fields: dict,
    x: jax.Array,
    inputs: Sequence[Sequence[float]],
    train: bool,
    *,
    scan: bool,
    names: Sequence[str],
    scanned_name: str,
) -> jax.Array:
    """Applies `len(names)` blocks `block(**fields)` in turn, block i called as
    `block(x, *(column[i] for column in inputs), train)`.

    Unrolled, block i is the submodule `names[i]` and receives Python floats (traced scalars
    when rematerialised). Scanned, one
    submodule `scanned_name` holds every block's variables stacked, and the inputs arrive as
    traced float32 scalars (so blocks must not branch on them); each block draws its own
    'dropout' randomness. Must be called from a compact method.
    """
    if not names:
        return x
    if not scan:
        for i, name in enumerate(names):
            x, _ = block(name=name, **fields)(x, *(column[i] for column in inputs), train)
        return x
    stacked = nn.scan(
        block,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0,) * len(inputs) + (nn.broadcast,),
        length=len(names),
    )
    columns = [jnp.asarray(column, jnp.float32) for column in inputs]
    x, _ = stacked(name=scanned_name, **fields)(x, *columns, train)
    return x


def stage(
    block,
    fields: dict,
    x: jax.Array,
    inputs: Sequence[Sequence[float]],
    train: bool,
    *,
    index: int,
    first_stride: int,
    scan: bool,
    remat_policy: str | None,
) -> jax.Array:
    """ConvNet stage `index`, one block per entry of each column of `inputs`: the first block,
    which changes stride (`first_stride`) or width, on its own as 'stage<index>_block0', then
    the others (stride 1) through `repeat`, unrolled ('stage<index>_block<b>') or scanned
    ('stage<index>_blocks'); every block rematerialised under `remat_policy` (None: not)."""
    num_inputs = len(inputs)
    first = block_type(block, remat_policy=remat_policy, in_scan=False, num_inputs=num_inputs)
    x, _ = first(stride=first_stride, name=f"stage{index}_block0", **fields)(
        x, *(column[0] for column in inputs), train
    )
    return repeat(
        block_type(block, remat_policy=remat_policy, in_scan=scan, num_inputs=num_inputs),
        dict(fields, stride=1), x, [column[1:] for column in inputs], train, scan=scan,
        names=[f"stage{index}_block{b}" for b in range(1, len(inputs[0]))],
        scanned_name=f"stage{index}_blocks",
    )


# ----------------------------------------------------------------------------------------------
# Converting ConvNet variables between the two layouts.
# ----------------------------------------------------------------------------------------------


def stack(blocks: Sequence) -> dict:
    """Variable trees of blocks with one structure -> one tree, each leaf stacked along a new
    leading (depth) axis, as `nn.scan` keeps them."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)


def unstack(stacked) -> list:
    """Inverse of `stack`: one tree per slice of the leading axis."""
    depth = len(jax.tree.leaves(stacked)[0])
    return [jax.tree.map(lambda v, b=b: v[b], stacked) for b in range(depth)]


def has_stacked_stages(tree) -> bool:
    return any(_STAGE_STACK.fullmatch(k) for k in tree)


def stack_stages(tree: dict) -> dict:
    """Unrolled ConvNet variables ({'stage<s>_block<b>': ...} plus others, one collection) ->
    scanned ones: blocks 1.. of each stage stacked along a new leading axis under
    'stage<s>_blocks'; 'stage<s>_block0' and everything else unchanged."""
    if has_stacked_stages(tree):
        raise ValueError("These variables already hold stacked 'stage<s>_blocks'.")
    out, stages = {}, {}
    for key, value in tree.items():
        match = _STAGE_BLOCK.fullmatch(key)
        if match and int(match[2]) > 0:
            stages.setdefault(match[1], {})[int(match[2])] = value
        else:
            out[key] = value
    for stage, blocks in stages.items():
        if sorted(blocks) != list(range(1, len(blocks) + 1)):
            raise ValueError(f"{stage} has blocks {sorted(blocks)}, not 1..{len(blocks)}.")
        out[f"{stage}_blocks"] = stack([blocks[b] for b in range(1, len(blocks) + 1)])
    return out


def unstack_stages(tree: dict) -> dict:
    """Inverse of `stack_stages`."""
    out = {}
    for key, value in tree.items():
        match = _STAGE_STACK.fullmatch(key)
        if not match:
            out[key] = value
            continue
        for b, block in enumerate(unstack(value)):
            out[f"{match[1]}_block{b + 1}"] = block
    return out


def stage_layout(variables: dict, scan: bool) -> dict:
    """Every collection of ConvNet `variables` ({'params': ..., 'batch_stats': ...}) in the
    scanned (`scan`) or unrolled layout, whichever it is in now."""
    convert = {
        (True, False): stack_stages,
        (False, True): unstack_stages,
    }.get((scan, any(has_stacked_stages(tree) for tree in variables.values())))
    if convert is None:
        return variables
    return {name: convert(tree) for name, tree in variables.items()}
