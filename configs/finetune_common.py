"""Pieces shared by the fine-tuning configs (configs/finetune_nfnet.py, finetune_convnext.py,
finetune_vit.py): the common arguments and the config they build on.

Common arguments: `init=` the pre-trained checkpoint (a workdir of this codebase, a timm
.safetensors or a big_vision / DeepMind .npz; see training/finetune.py), `model=` the variant (the
checkpoint's), `data=`, `data_dir=`, `classes=` (configs/common.py), `res=` / `eval_res=`
train and eval resolutions, `repeat=` repeated augmentation (copies of each example per batch,
Hoffer et al. 2020), `batch=`, `lr=` (peak lr at the recipe's batch size, scaled linearly with
`batch`), `sam_rho=` (0: no SAM) and `sam_groups=`.
"""

import ml_collections

from configs.common import DATA_ARGS, base_config, data_config, parse_arg


def parse_finetune_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    common = dict(init="", repeat=1, sam_rho=0.0, sam_groups=1, **DATA_ARGS)
    return parse_arg(arg, **{**common, **defaults})


def finetune_base(
    a: ml_collections.ConfigDict, model_name: str, recipe_batch: int
) -> ml_collections.ConfigDict:
    """The base config with the common arguments applied; `a.lr` is the peak lr at the recipe's
    batch size `recipe_batch`, scaled linearly with `a.batch` (optim.scaled_learning_rate)."""
    c = base_config()
    c.model.name = model_name
    c.init.path = a.init
    c.data = data_config(a)
    c.data.train_resolution, c.data.eval_resolution = a.res, a.eval_res
    c.data.repeated_augmentation = a.repeat
    c.global_batch_size = a.batch
    c.optimizer.learning_rate, c.optimizer.reference_batch_size = a.lr, recipe_batch
    c.sam.rho, c.sam.num_groups = a.sam_rho, a.sam_groups
    return c
