"""Fine-tuning runs made up from a synthetic sweep, so that Figure 1 has something to draw.

One fine-tuning run per (model, epoch budget) of the sweep, started from its best-lr run. Its
ImageNet top-1 error is a made-up increasing function of the pre-training held-out loss,
    error = 9.7% x L / L_min x exp(noise x eps),  eps ~ N(0, 1),
scaled so that the sweep's best run (NFNet-F7+ at 8 epochs on the paper-like sweep) lands on
the 90.3% that Smith et al. 2023 (Sec. 3) report for it. It carries no information beyond that.
"""

import numpy as np

from scaling import learning_rate, runs

REFERENCE_ERROR = 1 - 0.903  # Smith et al. 2023, Sec. 3: F7+ (8 epochs) fine-tuned, 90.3%
NOISE = 0.01


def finetune_rows(rows: list[dict], *, noise: float = NOISE, seed: int = 0) -> list[dict]:
    """Rows of the fine-tuning table (`runs.FINETUNE_COLUMNS`) for the best-lr runs of `rows`."""
    tuned = sorted(learning_rate.best_runs(rows), key=lambda r: r["compute_flops"])
    best_loss = min(r["heldout_loss"] for r in tuned)
    eps = np.random.default_rng(seed).standard_normal(len(tuned))
    out = []
    for pre, e in zip(tuned, eps, strict=True):
        error = REFERENCE_ERROR * pre["heldout_loss"] / best_loss * np.exp(noise * e)
        row = dict(
            run=f"{pre['run']}_imagenet",
            model=pre["model"],
            dataset="synthetic_imagenet",
            train_resolution=384,
            total_epochs=50.0,
            lr=0.1,
            heldout_loss=None,
            top1=float(1 - error),
        )
        for column in runs.FINETUNE_COLUMNS[len(row) :]:
            row[column] = pre[column.removeprefix("pretrain_")]
        out.append(row)
    return out
