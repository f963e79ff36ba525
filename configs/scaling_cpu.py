"""The CPU scaling sweep's models: tiny NFNets and ViTs of a given width and depth on the bundled
digits at 16 px (no download), with the recipes of configs/quickstart.py (NFNet: SGD + Nesterov
+ AGC) and configs/vit_stem_comparison.py (ViT: AdamW).

    python train.py --config=configs/scaling_cpu.py:family=nfnet,width=16,depth=1 --workdir=DIR

Arguments: `family=` nfnet or vit, `width=` and `depth=` (below), `epochs=`, `lr=` (at batch
128; -1: the family's default), and `data=` (default digits), `data_dir=`, `classes=`
(configs/common.py).

- NFNet, width w and depth d: the stage widths (4w, 6w, 8w, 8w), blocks per stage
  (d, 2d, 2d, d), group width w and stem widths (w/4, w/2, w); w = 16, d = 1 is `nfnet_tiny`.
- ViT: width w, d blocks, MLP 3w, heads of 16 channels, 4 x 4 patches (16 tokens at 16 px).
The digits are 8 x 8, so 16 px loses nothing and costs a quarter of the quickstart's 32 px.
"""

from configs.common import DATA_ARGS, base_config, data_config, parse_arg
from configs.vit import DECAYED

FAMILIES = ("nfnet", "vit")
RESOLUTION = 16
BATCH = 128
# Peak lr at batch 128: each family's best of a 2x grid at its reference shape (NFNet width 16,
# depth 1 = nfnet_tiny; ViT width 32, depth 2) and 4 epochs, in pilot runs on the digits: SGD
# 0.8 (0.4 and 1.6 lose, 3.2 ends near chance) and AdamW 8e-3 (4e-3 and 1.6e-2 lose), 2x and 8x the
# recipes' 0.4 and 1e-3, whose budgets are far longer. scaling/sweep.py's `cpu` preset centres
# its lr grids here.
DEFAULT_LR = {"nfnet": 0.8, "vit": 8e-3}


def nfnet_overrides(width: int, depth: int) -> dict:
    """nfnet_tiny's shape scaled: width 16 and depth 1 give its exact table entry."""
    if width % 4:
        raise ValueError(f"An NFNet width must be a multiple of 4 (stem width / 4), got {width}.")
    return dict(
        widths=(4 * width, 6 * width, 8 * width, 8 * width),
        depths=(depth, 2 * depth, 2 * depth, depth),
        group_width=width,
        stem_widths=(width // 4, width // 2, width),
        dropout=0.0,
        stochastic_depth=0.0,
    )


def vit_overrides(width: int, depth: int) -> dict:
    if width % 16:
        raise ValueError(f"A ViT width must be a multiple of 16 (the head width), got {width}.")
    return dict(width=width, depth=depth, mlp_dim=3 * width, num_heads=width // 16, patch_size=4)


def _optimizer(c, family: str, lr: float) -> None:
    c.optimizer.reference_batch_size = BATCH
    c.optimizer.learning_rate = DEFAULT_LR[family] if lr <= 0 else lr
    # A fixed warm-up of 2 steps, 2-18% of the sweep's budgets, whatever `--config.total_epochs`
    # a sweep sets (a warm-up in epochs would have to follow the budget).
    c.optimizer.warmup_steps = 2
    if family == "nfnet":  # configs/quickstart.py
        c.optimizer.weight_decay = 5e-5
        return
    c.optimizer.name = "adamw"  # configs/vit_stem_comparison.py
    c.optimizer.agc_clip = None
    c.optimizer.weight_decay_include = DECAYED
    c.optimizer.weight_decay = 0.24


def get_config(arg=None):
    a = parse_arg(arg, family="nfnet", width=16, depth=1, epochs=8.0, lr=-1.0, **DATA_ARGS)
    if a.family not in FAMILIES or a.width < 1 or a.depth < 1 or not a.epochs > 0:
        raise ValueError(
            f"scaling_cpu needs family in {FAMILIES}, width >= 1, depth >= 1 and epochs > 0, "
            f"got family={a.family}, width={a.width}, depth={a.depth}, epochs={a.epochs}."
        )
    c = base_config()
    if a.family == "nfnet":
        c.model.name = "nfnet_tiny"
        c.model.overrides = nfnet_overrides(a.width, a.depth)
    else:
        c.model.name = "vit_P-tiny"
        c.model.overrides = vit_overrides(a.width, a.depth)
    c.compute_dtype = "float32"  # bfloat16 is slow on CPUs.
    c.data = data_config(a, default="digits")
    c.data.train_resolution = c.data.eval_resolution = RESOLUTION
    # The digits' training split (data_sources.DIGITS_SPLITS), set rather than -1 (the split's
    # size, found at run time) so that `python -m scaling collect` reads it from config.json.
    c.num_train_examples = 1500 if c.data.name == "digits" else -1
    c.global_batch_size = BATCH
    c.eval_batch_size = 297  # the whole digits test split in one batch
    c.total_epochs = a.epochs
    _optimizer(c, a.family, a.lr)
    c.label_smoothing = 0.0  # held-out loss is the plain cross-entropy the laws describe
    c.log_every_steps = 50
    c.eval_every_steps = 0  # only at the end
    c.checkpoint_every_steps = 100_000  # only at the end
    return c
