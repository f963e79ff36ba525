"""Fine-tuning a pre-trained ViT (Dosovitskiy et al. 2021, Appendix B.1.1 and Table 4):

    python train.py --config=configs/finetune_vit.py:model=B/16,init=big_vision.npz \
        --workdir=DIR

SGD with momentum 0.9 (no Nesterov, no weight decay), gradient clipping at global norm 1,
batch 512, cosine decay after 500 linear warm-up steps, 20,000 steps for ImageNet (Table 4), at
384 px: the learned position embedding is resampled to the larger token grid when the
checkpoint is loaded (Section 3.2), and the new head is zero-initialised. Table 4 sweeps the
lr over {0.003, 0.01, 0.03, 0.06}; the default is 0.03 (pass `lr=` to sweep). No label
smoothing, MixUp, RandAugment or EMA; Inception crop and flip.

Options beyond the paper: `layer_decay=` (BEiT-style layer-wise lr decay, `optim.vit_layer_ids`),
`sam_rho=` / `sam_groups=` (SAM; Chen et al. 2022 use it for ViTs trained from scratch).

Arguments: `model=` (any ViT variant, the checkpoint's), `steps=`, `layer_decay=`, and those of
configs/finetune_common.py.
"""

import ml_collections

import vit
from configs.finetune_common import finetune_base, parse_finetune_arg


def get_config(arg=None) -> ml_collections.ConfigDict:
    a = parse_finetune_arg(
        arg, model="B/16", steps=20_000, batch=512, lr=0.03, res=384, eval_res=384,
        layer_decay=-1.0,
    )
    c = finetune_base(a, f"vit_{vit.canonical_name(a.model)}", recipe_batch=512)
    c.total_steps = a.steps
    c.optimizer.name = "sgd_agc"
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 0.0
    c.optimizer.agc_clip = None
    c.optimizer.clip_global_norm = 1.0
    c.optimizer.warmup_steps = 500
    if a.layer_decay > 0:
        c.optimizer.layer_decay, c.optimizer.layer_decay_rule = a.layer_decay, "vit"
    c.data.eval_crop_ratio = 1.0  # Resize and centre crop without a margin at 384 px.
    return c
