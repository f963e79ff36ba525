"""What `config.data` holds: the defaults, the per-dataset presets, and the normalisation of the
uint8 images it describes.

Nothing here imports TensorFlow, so configs, models and the jitted step load without it (the
input pipeline with its sources and augmentations is what uses TensorFlow).
"""

import jax
import jax.numpy as jnp
import ml_collections

# Per-dataset values that differ from the defaults of `default_data_config`.
DATASET_PRESETS = {
    "imagenet2012": dict(num_classes=1000, train_split="train", eval_split="validation"),
    # Quickstart demo: scikit-learn's bundled 8x8 digits, upsampled to 32 px. No flips (digits
    # are not mirror-symmetric) and mild crops; mean and std of the training pixels / 255.
    "digits": dict(
        num_classes=10,
        train_split="train",
        eval_split="test",
        train_resolution=32,
        eval_resolution=32,
        eval_crop_ratio=1.0,
        crop_area_range=(0.64, 1.0),
        random_flip=False,
        mean=(0.305, 0.305, 0.305),
        std=(0.376, 0.376, 0.376),
    ),
    "synthetic": dict(num_classes=1000, train_split="train", eval_split="validation"),
}

# Published sizes of train splits, for a dry run without the data (train.py --dry_run).
PUBLISHED_TRAIN_EXAMPLES = {"imagenet2012": 1_281_167}  # TFDS imagenet2012's 'train'


def default_data_config(name: str = "imagenet2012") -> ml_collections.ConfigDict:
    """`config.data` with documented defaults (ImageNet-style), updated by `DATASET_PRESETS`."""
    config = ml_collections.ConfigDict(
        dict(
            # A TFDS name (prepared as ArrayRecord), 'image_folder' (data_dir/split/class/*.jpg),
            # 'npz' (data_dir/split.npz with `image`, `label`), 'digits' or 'synthetic'.
            name=name,
            data_dir=ml_collections.config_dict.placeholder(str),  # None: TFDS's default
            train_split="train",
            eval_split="validation",
            image_key="image",  # TFDS feature names.
            label_key="label",
            num_classes=1000,  # 0: from the data (class folders, or TFDS's label feature).
            train_resolution=224,
            eval_resolution=256,  # Smith et al. 2023: 224 px train, 256 px eval.
            eval_crop_ratio=0.875,  # Eval: shorter side to resolution / ratio, centre crop.
            interpolation="bicubic",  # As the reference NFNet pipeline.
            # Mean and std of ImageNet pixels / 255 (per RGB channel); `normalize` uses them.
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            # Inception crop (Szegedy et al. 2015): area fraction and aspect-ratio ranges.
            crop_area_range=(0.08, 1.0),
            crop_aspect_ratio_range=(3 / 4, 4 / 3),
            random_flip=True,
            # (layers, magnitude), e.g. (4, 15) for NFNet-F3+ (Table 1); None: off.
            randaugment=ml_collections.config_dict.placeholder(tuple),
            # Or a named policy (not with `randaugment`): timm's RandAugment string, e.g.
            # 'rand-m9-mstd0.5-inc1' (ConvNeXt), or 'pycls-autoaugment' (Xiao et al.); '': off.
            auto_augment="",
            random_erasing=0.0,  # Probability; ConvNeXt uses 0.25.
            # Std of AlexNet-style PCA lighting noise (imagedata/lighting.py; pycls's TRAIN.PCA_STD,
            # 0.1 in Xiao et al.'s ViT recipe); 0: off.
            pca_lighting_std=0.0,
            repeated_augmentation=1,  # Augmented copies of each example per batch.
            corrupt_records="error",  # 'error' or 'replace'.
            num_parallel_calls=-1,  # Preprocessing threads; -1 lets tf.data tune it.
            prefetch=2,  # Batches prepared ahead (-1: tuned by tf.data).
            synthetic=dict(train_examples=1_281_167, eval_examples=50_000, image_size=256),
        )
    )
    if name in DATASET_PRESETS:
        config.update(DATASET_PRESETS[name])
    return config


def normalize(images_uint8, data_config, dtype=jnp.float32, lighting=None) -> jax.Array:
    """`(x / 255 - mean) / std` per RGB channel, computed in float32, returned as `dtype`. With
    `lighting` ((batch, 3) offsets on the [0, 1] scale, imagedata/lighting.py),
    `(x / 255 + lighting - mean) / std`: pycls adds the PCA noise unclipped just before
    normalising."""
    mean = 255.0 * jnp.asarray(data_config.mean, jnp.float32)
    std = 255.0 * jnp.asarray(data_config.std, jnp.float32)
    x = jnp.asarray(images_uint8, jnp.float32)
    if lighting is not None:
        x = x + 255.0 * jnp.asarray(lighting, jnp.float32)[:, None, None, :]
    return ((x - mean) / std).astype(dtype)
