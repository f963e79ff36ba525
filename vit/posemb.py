"""Position embeddings: the fixed 2-D sin-cos table and resampling for a change of resolution."""

import math

import jax
import jax.numpy as jnp
import numpy as np

# Interpolation for resampling a learned grid: our name -> jax.image.resize method.
#   bilinear: big_vision's `resample_posemb` (scipy zoom, order 1) and timm's npz loader.
#   bicubic:  Keys cubic with a = -0.5 (PIL, PyTorch with antialias=True, timm's
#             `resample_abs_pos_embed` default); PyTorch's antialias=False bicubic uses -0.75.
# Half-pixel centres (PyTorch's align_corners=False). Downsampling is antialiased.
RESAMPLE_METHODS = {"bilinear": "linear", "bicubic": "cubic"}


def sincos_2d(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of MoCo v3 (Chen et al. 2021, Section 4.1), as in
    big_vision's `posemb_sincos_2d`, shape (1, rows * cols, width), tokens in row-major order:

        omega_k = temperature ** (-k / (width / 4 - 1)),  k = 0 .. width / 4 - 1
        pe(y, x) = [sin(x omega), cos(x omega), sin(y omega), cos(y omega)]
    """
    if width % 4 or width < 8:
        raise ValueError(
            f"The sin-cos position embedding needs a width divisible by 4 and at least 8, got "
            f"{width}; use posemb='learn'."
        )
    y, x = np.mgrid[:rows, :cols]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    x = np.einsum("m,d->md", x.reshape(-1), omega)
    y = np.einsum("m,d->md", y.reshape(-1), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


def resample(
    pos_embedding,
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 0,
    old_grid: tuple[int, int] | None = None,
    method: str = "bilinear",
) -> np.ndarray:
    """Resamples a learned (1, prefix + rows * cols, width) embedding to `new_grid` (rows, cols).

    The first `num_prefix_tokens` entries (a class token's own position) are kept as they are.
    `old_grid` defaults to the square grid the entries fill. Used to fine-tune at a resolution
    other than the checkpoint's (Dosovitskiy et al. 2021, Section 3.2).
    """
    if method not in RESAMPLE_METHODS:
        raise ValueError(
            f"Unknown interpolation {method!r}; choose one of {sorted(RESAMPLE_METHODS)}."
        )
    pos_embedding = np.asarray(pos_embedding, np.float32)
    prefix, grid = np.split(pos_embedding, [num_prefix_tokens], axis=1)
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ValueError(
                f"A position embedding of {grid.shape[1]} grid entries is not square; pass "
                f"old_grid=(rows, cols)."
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != grid.shape[1]:
        raise ValueError(
            f"old_grid {old_grid} does not hold the embedding's {grid.shape[1]} grid entries."
        )
    new_grid = tuple(new_grid)
    if new_grid != tuple(old_grid):
        grid = np.asarray(resize_grid(jnp.asarray(grid), tuple(old_grid), new_grid, method))
    return np.concatenate([prefix, grid], axis=1)


def resize_grid(grid: jax.Array, old_grid: tuple[int, int], new_grid: tuple[int, int],
                method: str = "bilinear") -> jax.Array:
    """(1, rows * cols, width) grid entries resized from `old_grid` to `new_grid` (half-pixel
    centres, antialiased when shrinking); traceable, so also usable inside a jitted step."""
    width = grid.shape[-1]
    resized = jax.image.resize(
        grid.reshape(*old_grid, width), (*new_grid, width), method=RESAMPLE_METHODS[method]
    )
    return resized.reshape(1, new_grid[0] * new_grid[1], width)


def fit_pos_embedding(
    pos_embedding, model, resolution=None, method: str = "bilinear"
) -> tuple[np.ndarray, tuple[int, int]]:
    """A checkpoint's learned position embedding fitted to `model` at `resolution` (px, an int
    or (height, width)), and the token grid (rows, cols) it then covers.

    Without `resolution` the checkpoint's grid is kept; it must then be square. An embedding
    that already has as many grid entries as the target grid is kept as it is; otherwise it is
    resampled from its square grid with `method`.
    """
    prefix = model.pos_embedding_prefix
    entries = np.shape(pos_embedding)[1] - prefix
    if resolution is None:
        side = math.isqrt(max(entries, 0))
        if side * side != entries:
            raise ValueError(
                f"The checkpoint's position embedding has {entries} grid entries, not a square "
                f"grid; pass resolution=(height, width)."
            )
        return np.asarray(pos_embedding, np.float32), (side, side)
    height, width = (resolution, resolution) if np.ndim(resolution) == 0 else resolution
    grid = (height // model.patch_size, width // model.patch_size)
    if grid[0] * grid[1] == entries:
        return np.asarray(pos_embedding, np.float32), grid
    return resample(pos_embedding, grid, num_prefix_tokens=prefix, method=method), grid


def fit_checkpoint_grid(
    weights: dict, pos_key: str, class_key: str, model, resolution, method: str
) -> tuple[int, int]:
    """Fits the position embedding `weights[pos_key]` of an imported checkpoint to `model` in
    place (`fit_pos_embedding`) and returns the token grid the model is then built for. With a
    class token (`class_key`) on one side only, or no embedding, nothing is fitted and the grid
    is (1, 1): the importer then reports the checkpoint as a mismatch."""
    if pos_key not in weights or (class_key in weights) != (model.pool == "token"):
        return (1, 1)
    weights[pos_key], grid = fit_pos_embedding(weights[pos_key], model, resolution, method)
    return grid


def adapt_to_resolution(params: dict, model, resolution, method: str = "bilinear") -> dict:
    """Returns `params` (of `model`, trained at any resolution with a square token grid) with
    the learned position embedding resampled to `model`'s grid at `resolution` (px, an int or
    (height, width)); see `resample` for `method`. Nothing else depends on the resolution.
    """
    if "pos_embedding" not in params:  # sin-cos embeddings are computed for any grid.
        return params
    pos_embedding, _ = fit_pos_embedding(params["pos_embedding"], model, resolution, method)
    return {**params, "pos_embedding": pos_embedding}
