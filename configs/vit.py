"""ViT recipes of Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"),
shared by configs/vit_p_*.py (patchify stem) and configs/vit_c_*.py (convolutional stem).

AdamW lr 1e-3 at batch 2048, weight decay 0.24 on every param but norms and biases (pycls's
`construct_optimizer` with its configs' LN, BN and BIAS custom decay 0: kernels, the class
token and the position embedding), cosine with 5 warm-up epochs, 400 epochs (ImageNet-1k
results), MixUp 0.8, CutMix 1.0, label smoothing 0.1, EMA, 224 px. The paper's central
finding: ViT_C trains nearly as well with SGD as with AdamW, ViT_P does not; the `sgd` flag
switches to SGD + Nesterov momentum 0.9 (no AGC) so the pair can be rerun. Deviations:
RandAugment (2, 9) with the NFNet op set in place of AutoAugment; the EMA decay (0.9999) and
the SGD lr / weight decay (0.1 x batch / 256, 5e-5) are our choices, to be swept as the paper
sweeps lr and weight decay.

Arguments: `epochs=`, `lr=`, `wd=`, `sgd`, `data=`, `data_dir=`, `classes=` (configs/common.py).
"""

import ml_collections

from configs.common import DATA_ARGS, base_config, data_config, parse_arg

# pycls decays every param whose name holds none of 'bn', 'ln', 'bias' (its LN, BN and BIAS
# custom weight decay are 0 in Xiao et al.'s configs): here, kernels, class token, position
# embedding.
DECAYED = (r"(^|/)kernel$", r"^cls$", r"^pos_embedding$")


def vit_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, epochs=400.0, lr=-1.0, wd=-1.0, sgd=False, **DATA_ARGS)
    c = base_config()
    c.model.name = f"vit_{variant}"
    c.model.overrides.attention_implementation = "xla"  # 'cudnn': NVIDIA's fused attention
    c.data = data_config(a)
    c.total_epochs = a.epochs
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.agc_clip = None
    c.optimizer.weight_decay_include = DECAYED
    if a.sgd:
        c.optimizer.name = "sgd_agc"
        c.optimizer.learning_rate, c.optimizer.reference_batch_size = 0.1, 256
        c.optimizer.weight_decay = 5e-5
    else:
        c.optimizer.name = "adamw"
        c.optimizer.learning_rate, c.optimizer.reference_batch_size = 1e-3, 2048
        c.optimizer.weight_decay = 0.24
    if a.lr > 0:
        c.optimizer.learning_rate = a.lr
    if a.wd >= 0:
        c.optimizer.weight_decay = a.wd
    c.global_batch_size = 2048
    c.label_smoothing = 0.1
    c.mixup_alpha, c.cutmix_alpha = 0.8, 1.0
    c.ema_decay = 0.9999
    c.data.train_resolution, c.data.eval_resolution = 224, 224
    c.data.randaugment = (2, 9)
    return c
