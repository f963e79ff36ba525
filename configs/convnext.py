"""ConvNeXt recipes (shared by configs/convnext_*.py): Liu et al. 2022, Appendix A.1 and
facebookresearch/ConvNeXt TRAINING.md, ImageNet-1k from scratch.

AdamW lr 4e-3 at batch 4096 (linear scaling), weight decay 0.05 (none on 1-D params), 300
epochs with 20 warm-up, cosine, MixUp 0.8 / CutMix 1.0, label smoothing 0.1, random erasing
0.25, EMA 0.9999, stochastic depth from the variant table (T 0.1, S 0.4, B/L 0.5), 224 px with
a 224 / 256 centre crop for evaluation. Deviations: RandAugment uses the NFNet op set at
(2, 9) in place of timm's "rand-m9-mstd0.5-inc1"; the cosine ends at 0, not 1e-6.

Arguments: `epochs=`, `lr=` (peak at batch 4096), `data=`, `data_dir=`, `classes=`
(configs/common.py).
"""

import ml_collections

from configs.common import DATA_ARGS, base_config, data_config, parse_arg


def convnext_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, epochs=300.0, lr=4e-3, **DATA_ARGS)
    c = base_config()
    c.model.name = f"convnext_{variant}"
    c.data = data_config(a)
    c.total_epochs = a.epochs
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = a.lr
    c.optimizer.reference_batch_size = 4096
    c.optimizer.warmup_epochs = 20.0
    c.optimizer.weight_decay = 0.05
    c.optimizer.agc_clip = None
    c.label_smoothing = 0.1
    c.mixup_alpha, c.cutmix_alpha = 0.8, 1.0
    c.ema_decay = 0.9999
    c.data.train_resolution, c.data.eval_resolution = 224, 224
    c.data.eval_crop_ratio = 224 / 256
    c.data.randaugment = (2, 9)
    c.data.random_erasing = 0.25
    return c
