"""A CPU-scale rerun of Xiao et al. 2021's central experiment: does a convolutional stem make a
ViT trainable with SGD? Small ViTs on the bundled digits (16 px, 4 x 4 patches), patchify stem
(P) against convolutional stem (C, one block fewer, as the paper trades a block for the stem),
each with AdamW and with SGD + Nesterov momentum.

    python train.py --config=configs/vit_stem_comparison.py:stem=C,opt=sgd --workdir=DIR

Arguments: `stem=` P or C, `opt=` adamw or sgd, `lr=` (at batch 128), `epochs=`, and `data=`
(default digits), `data_dir=`, `classes=` (configs/common.py).
The learning rates (AdamW 1e-3, SGD 0.1 at batch 128) and sizes are CPU-scale choices, not the
paper's; the recipe otherwise follows configs/vit.py (cosine, 5 % warm-up, label smoothing).
"""

from configs.common import DATA_ARGS, base_config, data_config, parse_arg
from configs.vit import DECAYED

_SIZE = dict(width=64, mlp_dim=192, num_heads=4, patch_size=4)


def get_config(arg=None):
    a = parse_arg(arg, stem="P", opt="adamw", lr=-1.0, epochs=30.0, **DATA_ARGS)
    if a.stem not in ("P", "C") or a.opt not in ("adamw", "sgd"):
        raise ValueError(f"stem must be P or C and opt adamw or sgd, got {a.stem}, {a.opt}.")
    c = base_config()
    c.model.name = f"vit_{a.stem}-tiny"
    c.model.overrides = dict(_SIZE, depth=4 if a.stem == "P" else 3)
    if a.stem == "C":
        c.model.overrides.conv_stem_widths = (16, 32)
    c.compute_dtype = "float32"
    c.data = data_config(a, default="digits")
    c.data.train_resolution = c.data.eval_resolution = 16
    c.global_batch_size, c.eval_batch_size = 128, 128
    c.total_epochs = a.epochs
    c.optimizer.reference_batch_size = 128
    c.optimizer.agc_clip = None
    c.optimizer.weight_decay_include = DECAYED
    c.optimizer.warmup_epochs = 0.05 * a.epochs
    if a.opt == "sgd":
        c.optimizer.name = "sgd_agc"
        c.optimizer.learning_rate = 0.1
        c.optimizer.weight_decay = 5e-5
    else:
        c.optimizer.name = "adamw"
        c.optimizer.learning_rate = 1e-3
        c.optimizer.weight_decay = 0.24
    if a.lr > 0:
        c.optimizer.learning_rate = a.lr
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 1000
    return c
