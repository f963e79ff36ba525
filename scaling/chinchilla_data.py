"""Loads Hoffmann et al. 2022's runs as digitized by Epoch AI (see scaling/data/README.md)."""

import csv
import pathlib

import numpy as np

DATA_PATH = pathlib.Path(__file__).parent / "data" / "chinchilla_svg_extracted_data.csv"
# Besiroglu et al. 2024: the five runs with the highest loss are left out.
DROPPED_HIGHEST_LOSS = 5
# Their published estimates and bootstrap standard errors, for comparison (never used in fits).
PUBLISHED = dict(E=1.817, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658)
PUBLISHED_SE = dict(alpha=0.0154, beta=0.0206)


def load(
    path: str | pathlib.Path = DATA_PATH, drop_highest_loss: int = DROPPED_HIGHEST_LOSS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L): parameters, training tokens D = FLOP / (6 N) and loss, in file order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"Model Size", "Training FLOP", "loss"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; use Epoch AI's CSV.")
    n = np.array([float(r["Model Size"]) for r in rows])
    flops = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    if not 0 <= drop_highest_loss < len(loss):
        raise ValueError(f"drop_highest_loss must be in [0, {len(loss)}), got {drop_highest_loss}.")
    # Keep the order of the file; a stable sort decides ties at the threshold.
    keep = np.sort(np.argsort(-loss, kind="stable")[drop_highest_loss:])
    n, flops, loss = n[keep], flops[keep], loss[keep]
    return n, flops / (6.0 * n), loss
