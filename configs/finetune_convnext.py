"""Fine-tuning a pre-trained ConvNeXt on ImageNet-1k (Liu et al. 2022, Appendix A; the commands
of facebookresearch/ConvNeXt TRAINING.md, "ImageNet-1K Fine-tuning"):

    python train.py --config=configs/finetune_convnext.py:model=base,init=PRETRAIN_DIR,from=22k \
        --workdir=DIR

AdamW with lr 5e-5 at batch 512 (scaled linearly for another `batch=`), weight decay 1e-8, 30
epochs, no warm-up, cosine decay, layer-wise lr decay (`optim.convnext_layer_ids`) 0.8 from
ImageNet-22k pre-training and 0.7 from ImageNet-1k, head init scale 0.001 (the new head is
trunc-normal(0.02) x 0.001), no MixUp or CutMix, label smoothing 0.1, random erasing 0.25,
RandAugment, EMA only for XL (0.9999), 384 px (or `res=224`, 22k pre-training only).
Stochastic depth (drop path) from TRAINING.md: from 22k B 0.2, L 0.3, XL 0.4; from 1k at 384 px
B 0.8, L 0.95. Other variants have no published value: pass `drop_path=`.

RandAugment is timm's "rand-m9-mstd0.5-inc1" (main.py's `--aa` default, as in pre-training;
imagedata/randaugment.py). Deviations, as configs/convnext.py: the cosine ends at 0, not 1e-6; our
EMA has the (1 + t) / (10 + t) warm-up. At 384 px ConvNeXt evaluates the whole image resized to
384 x 384 ("warping"); we resize the shorter side to 384 and crop the centre (eval crop ratio
1); at 224 px the crop ratio is 224 / 256 as in pre-training.

Arguments: `model=` (tiny ... xlarge, the checkpoint's variant), `from=` (22k or 1k: the
pre-training data), `drop_path=`, `epochs=`, `layer_decay=`, and those of
configs/finetune_common.py.
"""

import ml_collections

import convnext
from configs.finetune_common import finetune_base, parse_finetune_arg

# TRAINING.md drop path rates: {pre-training data: {variant: rate}}.
DROP_PATH = {"22k": {"base": 0.2, "large": 0.3, "xlarge": 0.4}, "1k": {"base": 0.8, "large": 0.95}}
LAYER_DECAY = {"22k": 0.8, "1k": 0.7}


def get_config(arg=None) -> ml_collections.ConfigDict:
    # `from` is a Python keyword, hence the argument dict.
    a = parse_finetune_arg(
        arg, **{"model": "base", "from": "22k", "epochs": 30.0, "batch": 512, "lr": 5e-5,
                "res": 384, "eval_res": -1, "drop_path": -1.0, "layer_decay": -1.0}
    )
    variant = convnext.canonical_name(a.model)
    pretraining = a["from"]
    if pretraining not in LAYER_DECAY:
        raise ValueError(f"from={pretraining!r}: choose '22k' or '1k' (the pre-training data).")
    drop_path = a.drop_path if a.drop_path >= 0 else DROP_PATH[pretraining].get(variant)
    if drop_path is None:
        raise ValueError(
            f"ConvNeXt's fine-tuning recipe gives no drop path rate for {variant} from "
            f"{pretraining}; pass drop_path=<rate>."
        )
    if a.eval_res < 0:
        a.eval_res = a.res
    c = finetune_base(a, f"convnext_{variant}", recipe_batch=512)
    c.total_epochs = a.epochs
    c.optimizer.name = "adamw"
    c.optimizer.warmup_steps = 0
    c.optimizer.weight_decay = 1e-8
    c.optimizer.agc_clip = None
    c.optimizer.layer_decay = a.layer_decay if a.layer_decay > 0 else LAYER_DECAY[pretraining]
    c.optimizer.layer_decay_rule = "convnext"
    c.model.overrides = ml_collections.ConfigDict(
        dict(drop_path_rate=drop_path, head_init_scale=0.001)
    )
    c.label_smoothing = 0.1
    c.ema_decay = 0.9999 if variant == "xlarge" else None
    c.data.eval_crop_ratio = 1.0 if a.res >= 384 else 224 / 256
    c.data.randaugment = None  # the NFNet op set's (layers, magnitude): not this recipe's
    c.data.auto_augment = "rand-m9-mstd0.5-inc1"
    c.data.random_erasing = 0.25
    return c
