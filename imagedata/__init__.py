"""Images in: sources, stateless augmentations and config.data (input_pipeline.py orders them).

data_config     config.data's defaults and per-dataset presets, normalisation (no TensorFlow)
data_sources    random-access sources: TFDS ArrayRecord, image folders, npz, synthetic, digits
augment         training and evaluation preprocessing, seeded by (seed, example index)
randaugment     RandAugment: the NFNet op set and timm's variants, as TensorFlow ops
autoaugment     pycls's AutoAugment policy (Xiao et al.'s ViT recipe)
"""
