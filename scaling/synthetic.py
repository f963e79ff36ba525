"""Runs drawn from a known law, to check that the fits recover it (and to plan sweeps).

A synthetic run of model size S (MACs per example) trained on D examples at learning rate lr
has held-out loss

    L = [E + A / S^alpha + B / D^beta + kappa (log2(lr / lr*))^2] x exp(noise x eps),

eps ~ N(0, 1), with lr* from a `learning_rate.LrModel` (the parabola in log2 lr is the shape
`learning_rate` assumes near the optimum). Top-1 is a made-up decreasing function of the loss,
clip(1.2 - 0.3 L, 0, 1), only so that the figures have something to draw.
"""

import numpy as np

from modeling import hardware
from scaling import compute, paper_models
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
    num_classes: int = 1000,
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
                        num_classes=num_classes,
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


# A sweep shaped like Smith et al. 2023's (Sec. 2): the six NFNets of `paper_models` (MACs per
# example at 224 px with the 30k-class head) x epoch budgets 0.25-8 of JFT-4B x a 2x lr grid
# around 1.6, the lr optimum falling with the budget. Smith et al. 2023 (Sec. 2) find the
# compute-optimal epoch budget passes 1 near 5k TPU-v4 core hours: 8.8e20 FLOPs at the 35.6%
# MFU that 110k hours for F7+ imply, i.e. about F3 for one epoch.
PAPER_ONE_EPOCH_CORE_HOURS = 5e3
PAPER_LIKE_LR = LrModel(np.log2(1.6), -0.15, -0.05, 9.6e9, 0.25, 0.0, 0)
PAPER_LIKE_LRS = tuple(1.6 * 2.0**k for k in range(-3, 2))
PAPER_LIKE_NOISE = 0.002


def paper_one_epoch_flops() -> float:
    """FLOPs of 5k TPU-v4 core hours at the paper's implied MFU."""
    acc = hardware.accelerator("tpu_v4")
    mfu = compute.paper_f7plus_mfu("tpu_v4")
    return PAPER_ONE_EPOCH_CORE_HOURS * compute.SECONDS_PER_HOUR * acc.peak_flops_per_core * mfu


def paper_like_law(alpha: float, beta: float, E: float = 1.5) -> ChinchillaLaw:
    """A law whose optimal epoch budget is 1 at `paper_one_epoch_flops()` (N_opt ~ C^(b/(a+b))).

    B makes the data term 0.5 at one epoch of JFT-4B; A then follows from Hoffmann et al.'s
    G = (alpha A / (beta B))^(1 / (alpha + beta)) with D_opt = (C / 6)^(alpha / (alpha + beta)) / G.
    """
    epoch = paper_models.JFT_NUM_EXAMPLES
    B = 0.5 * epoch**beta
    budget = paper_one_epoch_flops() / compute.TRAIN_FLOPS_PER_MAC
    g = budget ** (alpha / (alpha + beta)) / epoch
    return ChinchillaLaw(E=E, A=g ** (alpha + beta) * beta * B / alpha, B=B, alpha=alpha, beta=beta)


# alpha = beta: equal proportion holds (N_opt ~ C^0.5).
PAPER_LIKE_LAW = paper_like_law(0.3, 0.3)


def paper_like_models() -> dict[str, tuple[int, int]]:
    """{name: (MACs per example, params)} of the paper's models as pre-trained on JFT-4B."""
    out = {}
    for name in paper_models.MODELS:
        cost = compute.model_cost(
            name, paper_models.PRETRAIN_RESOLUTION, paper_models.JFT_NUM_CLASSES
        )
        out[name] = (cost.macs_per_example, cost.params)
    return out


def paper_like_rows(
    law: ChinchillaLaw = PAPER_LIKE_LAW, *, noise: float = PAPER_LIKE_NOISE, seed: int = 0
) -> list[dict]:
    """The paper-like sweep (180 runs) drawn from `law` with log-std `noise`."""
    return sweep_rows(
        law,
        paper_like_models(),
        paper_models.EPOCH_BUDGETS,
        PAPER_LIKE_LRS,
        PAPER_LIKE_LR,
        num_train_examples=paper_models.JFT_NUM_EXAMPLES,
        noise=noise,
        seed=seed,
        dataset="synthetic_jft",
        num_classes=paper_models.JFT_NUM_CLASSES,
    )
