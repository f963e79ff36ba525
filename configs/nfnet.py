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

ImageNet mixing is the reference's (deepmind-research/nfnets dataset.py `my_mixup_cutmix`,
config.mix_mode 'halves'): each trained example mixes two examples read, MixUp (alpha 0.2,
per-pair ratio) on half the pairs and CutMix (uniform share, per-pair box) on the other half.
Its batch of 4096, 360 epochs and 5 warm-up epochs count trained examples, so here, where
global_batch_size and epochs count examples read, they are 8192, 720 and 10 (the same 112,602
steps), with lr 0.1 x (trained batch) / 256 = 0.1 x global_batch_size / 512; `epochs=` is in
the reference's epochs. Deviation: the reference applies RandAugment after mixing
(experiment_nfnets.py `augment_before_mix=False`); here RandAugment runs on the host, before.

Comments below cite each value: "ref" is deepmind-research/nfnets experiment_nfnets.py /
dataset.py, "Table 1" Brock et al.'s variant table (registry.variant_info). Both recipes keep the
base config's SGD with Nesterov momentum 0.9 and AGC (clip 0.01, not on the final linear layer;
ref) and the cosine schedule.
"""

import ml_collections

from configs.common import DATA_ARGS, base_config, data_config, parse_arg
from modeling import registry
from training import mixing


def nfnet_config(variant: str, arg: str | None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, epochs=-1.0, lr=-1.0, imagenet=False, **DATA_ARGS)
    info = registry.variant_info(f"nfnet_{variant}")
    c = base_config()
    c.model.name = f"nfnet_{variant}"
    c.data = data_config(a)
    reads = 1  # examples read per trained example
    if a.imagenet:
        # Brock et al. 2021a, Section 5 and deepmind-research/nfnets experiment_nfnets.py.
        c.mixup_alpha, c.cutmix_alpha = 0.2, 1.0  # dataset.py: mixup_alpha 0.2, CutMix U(0, 1)
        c.mix_mode = "halves"
        reads = mixing.inputs_per_trained_example(c.mix_mode, c.mixup_alpha, c.cutmix_alpha)
        c.global_batch_size = 4096 * reads  # 4096 trained
        c.total_epochs = 360.0 * reads
        c.optimizer.learning_rate = 0.1  # x trained batch / 256
        c.optimizer.reference_batch_size = 256 * reads
        c.optimizer.warmup_epochs = 5.0 * reads
        c.optimizer.weight_decay = 2e-5  # ref
        c.label_smoothing = 0.1  # ref
        c.ema_decay = 0.99999  # ref
        c.data.train_resolution = info["train_resolution"]  # Table 1
        c.data.eval_resolution = info["test_resolution"]  # Table 1
        c.data.randaugment = info["randaugment"]  # Table 1: (layers, magnitude) per variant
        c.model.overrides = ml_collections.ConfigDict(
            dict(stochastic_depth=0.25, dropout=info["dropout"])  # ref; Table 1
        )
    else:
        # Smith et al. 2023, Section 2: JFT-4B, 224 / 256 px, budgets 0.25-8 epochs.
        c.total_epochs = 1.0  # one of the budgets (0.25-8 epochs); pass epochs=
        c.optimizer.learning_rate = 1.6  # Smith et al. tune it per budget; pass lr=
        c.optimizer.reference_batch_size = 4096  # batch 4096 (base config's global batch)
        # Warm-up length is not given by Smith et al.; 10k steps is 4% of the shortest
        # (0.25-epoch) run at batch 4096.
        c.optimizer.warmup_steps = 10_000
        c.optimizer.weight_decay = 1e-6  # Brock et al. 2021a's JFT setting, as above
        c.data.train_resolution, c.data.eval_resolution = 224, 256  # Section 2
        # No stochastic depth or dropout: our choice.
        c.model.overrides = ml_collections.ConfigDict(dict(stochastic_depth=0.0, dropout=0.0))
    if a.epochs > 0:
        c.total_epochs = a.epochs * reads
    if a.lr > 0:
        c.optimizer.learning_rate = a.lr
    return c
