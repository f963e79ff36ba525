"""NFNet recipes (shared by configs/nfnet_f*.py).

Default: JFT-style pre-training as in Smith et al. 2023 ("ConvNets Match Vision Transformers
at Scale"): SGD + Nesterov + AGC, batch 4096, cosine decay, 224 px train / 256 px eval, random
crop and flip only, weight decay 1e-6 and no EMA (Brock et al. 2021a's JFT setting). JFT is
not public: point `data.name` / `data.num_classes` at any TFDS-style dataset you have.

Arguments: `epochs=` (the epoch budget, 0.25-8 in the paper), `lr=` (peak lr at batch 4096;
the optimum is about 1.6 at small budgets), `data=`, `data_dir=` and `classes=`
(configs/common.py), and the flag `imagenet` for Brock et al. 2021a's ImageNet recipe (360
epochs, lr 0.1 x batch / 256, RandAugment, MixUp + CutMix, label smoothing 0.1, EMA 0.99999,
stochastic depth 0.25, the variant's resolutions and dropout).
"""

import ml_collections

import models
from configs.common import DATA_ARGS, base_config, data_config, parse_arg


def nfnet_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, epochs=-1.0, lr=-1.0, imagenet=False, **DATA_ARGS)
    info = models.variant_info(f"nfnet_{variant}")
    c = base_config()
    c.model.name = f"nfnet_{variant}"
    c.data = data_config(a)
    if a.imagenet:
        # Brock et al. 2021a, Section 5 and deepmind-research/nfnets experiment_nfnets.py.
        c.total_epochs = 360.0
        c.optimizer.learning_rate = 0.1  # x batch / 256
        c.optimizer.reference_batch_size = 256
        c.optimizer.warmup_epochs = 5.0
        c.optimizer.weight_decay = 2e-5
        c.label_smoothing = 0.1
        c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0
        c.ema_decay = 0.99999
        c.data.train_resolution = info["train_resolution"]
        c.data.eval_resolution = info["test_resolution"]
        c.data.randaugment = info["randaugment"]
        c.model.overrides = ml_collections.ConfigDict(
            dict(stochastic_depth=0.25, dropout=info["dropout"])
        )
    else:
        # Smith et al. 2023, Section 2: JFT-4B, 224 / 256 px, budgets 0.25-8 epochs.
        c.total_epochs = 1.0
        c.optimizer.learning_rate = 1.6
        c.optimizer.reference_batch_size = 4096
        # Warm-up length is not given by Smith et al.; 10k steps is 4% of the shortest
        # (0.25-epoch) run at batch 4096.
        c.optimizer.warmup_steps = 10_000
        c.optimizer.weight_decay = 1e-6
        c.data.train_resolution, c.data.eval_resolution = 224, 256
        c.model.overrides = ml_collections.ConfigDict(dict(stochastic_depth=0.0, dropout=0.0))
    if a.epochs > 0:
        c.total_epochs = a.epochs
    if a.lr > 0:
        c.optimizer.learning_rate = a.lr
    return c
