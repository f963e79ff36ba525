"""Fine-tuning a pre-trained NFNet on ImageNet: the recipe of Smith et al. 2023 ("ConvNets
Match Vision Transformers at Scale"), which uses Brock et al. 2021a's fine-tuning values:

    python train.py --config=configs/finetune_nfnet.py:model=f7plus,init=PRETRAIN_DIR \
        --workdir=DIR

50 epochs at batch 2048, SGD + Nesterov momentum 0.9 + AGC (clip 0.01, not on the head's
kernel), peak lr 0.1 at batch 2048 (scaled linearly for another `batch=`), 5k linear warm-up
steps then cosine decay to 0, weight decay 1e-5, SAM with rho 0.05 and the ascent step on 20% of
each replica's examples, dropout 0.25, stochastic depth 0.1, an EMA of the weights, 384 px
training and 480 px evaluation. A new head (N(0, 0.01)) replaces the pre-training one when the
class count differs; `repeat=N` turns on repeated augmentation (Smith et al.: F7+ 90.3% top-1,
90.4% with it).

Choices where the papers give no value: SAM's perturbation is per replica in Brock et al., who
do not state the replica count; the default `sam_groups=32` (groups of 64 examples) is
per-replica SAM on 32 data-parallel devices: set it to your data-parallel device count to
reproduce per-replica SAM exactly (the result depends only on the config, not on the mesh). The
EMA decay is Brock et al.'s ImageNet 0.99999 (with its (1 + t) / (10 + t) warm-up, the average
spans roughly the last tenth of the run). No label smoothing, MixUp, CutMix or RandAugment (none
is listed for fine-tuning); Inception crop and flip.

Arguments: `model=` (f0 ... f7plus, the checkpoint's variant), `epochs=`, and those of
configs/finetune_common.py.
"""

import ml_collections

import nfnets
from configs.finetune_common import finetune_base, parse_finetune_arg


def get_config(arg=None) -> ml_collections.ConfigDict:
    a = parse_finetune_arg(
        arg, model="f7plus", epochs=50.0, batch=2048, lr=0.1, res=384, eval_res=480,
        sam_rho=0.05, sam_groups=32,
    )
    c = finetune_base(a, f"nfnet_{nfnets.canonical_name(a.model)}", recipe_batch=2048)
    c.total_epochs = a.epochs
    c.optimizer.name = "sgd_agc"
    c.optimizer.warmup_steps = 5000
    c.optimizer.weight_decay = 1e-5
    c.optimizer.agc_clip = 0.01
    c.sam.ascent_fraction = 0.2
    c.ema_decay = 0.99999
    c.model.overrides = ml_collections.ConfigDict(dict(dropout=0.25, stochastic_depth=0.1))
    return c
