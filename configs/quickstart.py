"""The built-in default: a tiny NFNet on scikit-learn's bundled handwritten digits.

Trains through exactly the code path of a TPU pod run (mesh, sharded jitted step, SGD + AGC,
orbax checkpoints, resumable data order) and needs no download. On 2 CPU cores it takes a
few minutes and reaches well above chance (10%) held-out accuracy; see README for figures.

    python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

Arguments: `epochs=`, `batch=`, `lr=` (at batch 128), and `data=` (default digits), `data_dir=`,
`classes=` (configs/common.py), e.g. `data=image_folder,data_dir=DIR,classes=10`.
"""

from configs.common import DATA_ARGS, base_config, data_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, epochs=30.0, batch=128, lr=0.4, **DATA_ARGS)
    c = base_config()
    c.model.name = "nfnet_tiny"
    c.model.overrides.stochastic_depth = 0.0
    c.model.overrides.dropout = 0.0
    c.compute_dtype = "float32"  # bfloat16 is slow on CPUs.
    c.data = data_config(a, default="digits")  # 8 x 8 digits upsampled to 32 px.
    c.data.train_resolution = c.data.eval_resolution = 32  # A tiny model, on any data.
    c.global_batch_size = a.batch
    c.eval_batch_size = 128
    c.total_epochs = a.epochs
    c.optimizer.learning_rate = a.lr
    c.optimizer.reference_batch_size = 128
    c.optimizer.warmup_epochs = 1.0
    c.optimizer.weight_decay = 5e-5
    c.label_smoothing = 0.1
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    return c
