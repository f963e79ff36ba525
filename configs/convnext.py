"""ConvNeXt recipes (shared by configs/convnext_*.py): Liu et al. 2022, Appendix A.1 and
facebookresearch/ConvNeXt TRAINING.md, ImageNet-1k from scratch.

AdamW lr 4e-3 at batch 4096 (linear scaling), weight decay 0.05 (none on 1-D params), 300
epochs with 20 warm-up, cosine, MixUp 0.8 / CutMix 1.0, label smoothing 0.1, random erasing
0.25, EMA 0.9999, stochastic depth from the variant table (T 0.1, S 0.4, B/L 0.5), 224 px with
a 224 / 256 centre crop for evaluation, timm's RandAugment "rand-m9-mstd0.5-inc1" (2 layers,
magnitude ~ N(9, 0.5) clipped to [0, 10] per op, each op applied with probability 0.5, the
"increasing" op set; imagedata/randaugment.py). Deviation: the cosine ends at 0, not 1e-6.

Each value below cites its source: "Table 5" is the paper's ImageNet-1K training settings
(Appendix A.1), "main.py" / "datasets.py" the reference code's defaults; no value is our
choice. AdamW's betas (0.9, 0.999) and eps 1e-8 are the base config's, as Table 5 and main.py.

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
    c.total_epochs = a.epochs  # Table 5: 300 epochs
    c.optimizer.name = "adamw"  # Table 5: AdamW, cosine decay, linear warm-up
    c.optimizer.learning_rate = a.lr  # Table 5: base lr 4e-3 ...
    c.optimizer.reference_batch_size = 4096  # ... at batch 4096 (Table 5)
    c.optimizer.warmup_epochs = 20.0  # Table 5
    c.optimizer.weight_decay = 0.05  # Table 5; kernels only (timm skips 1-D params)
    c.optimizer.agc_clip = None  # Table 5: no gradient clipping
    c.label_smoothing = 0.1  # Table 5
    c.mixup_alpha, c.cutmix_alpha = 0.8, 1.0  # Table 5; timm's Mixup switches per batch
    c.ema_decay = 0.9999  # Table 5
    c.global_batch_size = 4096  # Table 5
    c.data.train_resolution, c.data.eval_resolution = 224, 224  # the paper's 224^2 results
    c.data.eval_crop_ratio = 224 / 256  # datasets.py: crop_pct 224 / 256 below 384 px
    # bicubic resizing (data_config default): main.py --train_interpolation bicubic, and
    # datasets.py's eval Resize is bicubic.
    c.data.randaugment = None  # the NFNet op set's (layers, magnitude): not this recipe's
    # Table 5: RandAugment (9, 0.5), i.e. timm's policy string (main.py / TRAINING.md: --aa)
    c.data.auto_augment = "rand-m9-mstd0.5-inc1"
    c.data.random_erasing = 0.25  # Table 5; timm's 'pixel' mode, one box (main.py)
    return c
