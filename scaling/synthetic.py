"""Runs drawn from a known law, to check that the fits recover it (and to plan sweeps).

A synthetic run of model size S (MACs per example) trained on D examples at learning rate lr
has held-out loss

    L = [E + A / S^alpha + B / D^beta + kappa (log2(lr / lr*))^2] x exp(noise x eps),

eps ~ N(0, 1), with lr* from a `learning_rate.LrModel` (the parabola in log2 lr is the shape
`learning_rate` assumes near the optimum). Top-1 is a made-up decreasing function of the loss,
clip(1.2 - 0.3 L, 0, 1), only so that the figures have something to draw.
"""

import numpy as np

from scaling import compute
from scaling.fit_chinchilla import ChinchillaLaw
from scaling.learning_rate import LrModel


def noisy_losses(law: ChinchillaLaw, n, d, noise: float, seed: int) -> np.ndarray:
    """law.loss(n, d) with multiplicative log-normal noise of log-std `noise`."""
    rng = np.random.default_rng(seed)
    clean = law.loss(n, d)
    return clean * np.exp(noise * rng.standard_normal(np.shape(clean)))


def sweep_rows(
    law: ChinchillaLaw,
    models: dict[str, tuple[int, int]],
    epochs,
    lrs,
    lr_model: LrModel,
    *,
    curvature: float = 0.02,
    num_train_examples: int = 1_000_000,
    noise: float = 0.0,
    seed: int = 0,
    dataset: str = "synthetic",
) -> list[dict]:
    """Rows of the runs table for models {name: (MACs per example, params)} x epochs x lrs."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (macs, params) in models.items():
        for ep in epochs:
            examples = int(round(ep * num_train_examples))
            best = float(lr_model.predict(macs, ep))
            for lr in lrs:
                loss = law.loss(macs, examples) + curvature * np.log2(lr / best) ** 2
                loss *= np.exp(noise * rng.standard_normal())
                rows.append(
                    dict(
                        run=f"{name}_ep{ep:g}_lr{lr:g}",
                        model=name,
                        dataset=dataset,
                        params=params,
                        macs_per_example=macs,
                        train_resolution=224,
                        num_classes=1000,
                        num_train_examples=num_train_examples,
                        global_batch_size=256,
                        seed=0,
                        total_epochs=float(ep),
                        examples_seen=examples,
                        epochs=examples / num_train_examples,
                        compute_flops=compute.training_flops(macs, examples),
                        lr=float(lr),
                        heldout_loss=float(loss),
                        top1=float(np.clip(1.2 - 0.3 * loss, 0.0, 1.0)),
                    )
                )
    return rows
