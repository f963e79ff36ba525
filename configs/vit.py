"""ViT recipes of Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"),
shared by configs/vit_p_*.py (patchify stem) and configs/vit_c_*.py (convolutional stem).

Every value comes from Xiao et al.'s pycls configs (pycls branch `vitconfigs`,
configs/vitconv_baselines/vit/ViT-{P,C}-*GF_adamw_*gpus.yaml, ImageNet-1k, with pycls's
defaults in pycls/core/config.py) unless a comment says "our choice": AdamW (betas 0.9 /
0.999, torch's eps 1e-8) at batch 2048, lr 1e-3 (7e-4 for the 36GF models), weight decay 0.24
on every param but norms and biases (pycls's `construct_optimizer` with LN, BN and BIAS custom
decay 0: kernels, the class token and the position embedding), pycls's cosine schedule set
once per epoch (optim.learning_rate_schedule 'pycls': 5 warm-up epochs from 0.1 x lr, ending at
0.005 x lr), 400 epochs, MixUp 0.8 or CutMix 1.0 (one of the two per batch), label smoothing
0.1, EMA, pycls's AutoAugment ("pycls-autoaugment", imagedata/autoaugment.py) followed by
AlexNet-style PCA lighting noise of std 0.1 (TRAIN.PCA_STD, imagedata/lighting.py), bilinear
resizing, 224 px train, shorter side 256 then a 224 centre crop for evaluation. The paper's central
finding: ViT_C trains nearly as well with SGD as with AdamW, ViT_P does not; the `sgd` flag switches
to SGD + Nesterov momentum 0.9 (no AGC) so the pair can be rerun; its lr and weight decay (0.1 x
batch / 256, 5e-5) are our choice, to be swept as the paper sweeps lr and weight decay.

Deviations from pycls (not supported here): pycls pairs mixed examples by a random
permutation, here each with its neighbour (training/mixing.py). pycls copies the weights into the
EMA during warm-up; here the EMA warms up as optim.ema_decay does.

Arguments: `epochs=`, `lr=`, `wd=`, `sgd`, `data=`, `data_dir=`, `classes=` (configs/common.py).
"""

import ml_collections

from configs.common import DATA_ARGS, base_config, data_config, parse_arg

# pycls decays every param whose name holds none of 'bn', 'ln', 'bias' (its LN, BN and BIAS
# custom weight decay are 0 in Xiao et al.'s configs): here, kernels, class token, position
# embedding.
DECAYED = (r"(^|/)kernel$", r"^cls$", r"^pos_embedding$")

# BASE_LR of the ImageNet-1k AdamW configs (at batch 2048): 1e-3, but 7e-4 for the 36GF models.
ADAMW_LR = {"P-36GF": 7e-4, "C-36GF": 7e-4}


def pycls_ema_decay(batch_size: int, epochs: float) -> float:
    """The per-step decay equivalent to pycls's EMA (net.py `update_model_ema`): every 32 steps
    (EMA_UPDATE_PERIOD) ema += alpha (params - ema), alpha = min(1, EMA_ALPHA 1e-5 x batch /
    epochs x 32); 0.99994878 at batch 2048 and 400 epochs."""
    period = 32
    alpha = min(1.0, 1e-5 * batch_size / epochs * period)
    return (1.0 - alpha) ** (1.0 / period)


def vit_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, epochs=400.0, lr=-1.0, wd=-1.0, sgd=False, **DATA_ARGS)
    c = base_config()
    c.model.name = f"vit_{variant}"
    c.model.overrides.attention_implementation = "xla"  # 'cudnn': NVIDIA's fused attention
    # The blocks' layout (vit/model.py's defaults), here so that the command line can change it:
    # --config.model.overrides.scan=True --config.model.overrides.remat=True (ViT-G/14 & co.).
    c.model.overrides.scan = False
    c.model.overrides.remat = False
    c.model.overrides.remat_policy = "nothing_saveable"
    c.data = data_config(a)
    c.total_epochs = a.epochs  # MAX_EPOCH 400
    c.optimizer.schedule = "pycls"  # LR_POLICY cos, the lr set once per epoch (trainer.py)
    c.optimizer.warmup_epochs = 5.0  # WARMUP_EPOCHS 5
    c.optimizer.warmup_factor = 0.1  # WARMUP_FACTOR 0.1 (pycls's default)
    c.optimizer.min_lr_fraction = 0.005  # MIN_LR 0.005 (relative to BASE_LR)
    c.optimizer.agc_clip = None
    c.optimizer.weight_decay_include = DECAYED
    if a.sgd:
        c.optimizer.name = "sgd_agc"  # momentum 0.9, Nesterov (base config): our choice
        c.optimizer.learning_rate, c.optimizer.reference_batch_size = 0.1, 256  # our choice
        c.optimizer.weight_decay = 5e-5  # our choice
    else:
        c.optimizer.name = "adamw"  # OPTIMIZER adamw; BETA1 0.9, BETA2 0.999 (base config)
        c.optimizer.reference_batch_size = 2048
        c.optimizer.learning_rate = ADAMW_LR.get(variant, 1e-3)  # BASE_LR
        c.optimizer.weight_decay = 0.24  # WEIGHT_DECAY
    if a.lr > 0:
        c.optimizer.learning_rate = a.lr
    if a.wd >= 0:
        c.optimizer.weight_decay = a.wd
    c.global_batch_size = 2048  # TRAIN.BATCH_SIZE
    c.label_smoothing = 0.1  # TRAIN.LABEL_SMOOTHING
    c.mixup_alpha, c.cutmix_alpha = 0.8, 1.0  # TRAIN.MIXUP_ALPHA, CUTMIX_ALPHA; 'switch' mode
    c.ema_decay = pycls_ema_decay(c.global_batch_size, c.total_epochs)  # EMA_ALPHA, _PERIOD
    # TRAIN.IM_SIZE 224; TEST.IM_SIZE 256 is the resize before the 224 crop (ratio 0.875).
    c.data.train_resolution, c.data.eval_resolution = 224, 224
    c.data.eval_crop_ratio = 224 / 256
    c.data.interpolation = "bilinear"  # pycls transforms.py: cv2.INTER_LINEAR
    c.data.randaugment = None
    c.data.auto_augment = "pycls-autoaugment"  # TRAIN.AUGMENT AutoAugment
    c.data.pca_lighting_std = 0.1  # TRAIN.PCA_STD 0.1 (pycls's default), after AutoAugment
    return c
