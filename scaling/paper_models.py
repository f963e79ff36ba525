"""The models of Smith et al. 2023 ("ConvNets Match Vision Transformers at Scale") as data.

MACs per example and parameter counts were precomputed with the project's counter
(`macs.model_macs`, `macs.count_params`) because tracing the largest models takes up to a
minute; tests/unit/test_scaling_compute.py recounts entries of the smallest models.
"""

# Smith et al. 2023, Sec. 2: pre-training on JFT-4B (about 4B images, 30k classes) at 224 px.
JFT_NUM_EXAMPLES = 4_000_000_000
JFT_NUM_CLASSES = 30_000
PRETRAIN_RESOLUTION = 224
# Smith et al. 2023, Sec. 2: epoch budgets from 0.25 to 8 (here spaced by 2x), base learning
# rate tuned per budget on a grid spaced by factors of 2.
EPOCH_BUDGETS = (0.25, 0.5, 1, 2, 4, 8)

# Smith et al. 2023, Sec. 2 and Fig. 2: F0, F1, F3, F7 double the depth step by step; F3+ and
# F7+ are the wider variants.
MODELS = (
    "nfnet_f0",
    "nfnet_f1",
    "nfnet_f3",
    "nfnet_f3plus",
    "nfnet_f7",
    "nfnet_f7plus",
)

# Smith et al. 2023, abstract and Sec. 3: F7+ pre-trained for 8 epochs took about 110k TPU-v4
# core hours.
F7PLUS_CORE_HOURS = dict(model="nfnet_f7plus", epochs=8, accelerator="tpu_v4", core_hours=110e3)

# (registry spelling of the model, resolution, num_classes) -> (MACs per example, parameters).
PRECOMPUTED = {
    ("nfnet_F0", 224, 1000): (9_487_486_976, 71_489_284),
    ("nfnet_F0", 224, 30000): (9_576_574_976, 160_606_284),
    ("nfnet_F1", 224, 1000): (17_437_921_280, 132_634_256),
    ("nfnet_F1", 224, 30000): (17_527_009_280, 221_751_256),
    ("nfnet_F2", 224, 1000): (25_388_355_584, 193_779_228),
    ("nfnet_F2", 224, 30000): (25_477_443_584, 282_896_228),
    ("nfnet_F3", 224, 1000): (33_338_789_888, 254_924_200),
    ("nfnet_F3", 224, 30000): (33_427_877_888, 344_041_200),
    ("nfnet_F4", 224, 1000): (41_289_224_192, 316_069_172),
    ("nfnet_F4", 224, 30000): (41_378_312_192, 405_186_172),
    ("nfnet_F5", 224, 1000): (49_239_658_496, 377_214_144),
    ("nfnet_F5", 224, 30000): (49_328_746_496, 466_331_144),
    ("nfnet_F6", 224, 1000): (57_190_092_800, 438_359_116),
    ("nfnet_F6", 224, 30000): (57_279_180_800, 527_476_116),
    ("nfnet_F7", 224, 1000): (65_140_527_104, 499_504_088),
    ("nfnet_F7", 224, 30000): (65_229_615_104, 588_621_088),
    ("nfnet_F3+", 224, 1000): (51_719_450_624, 423_421_992),
    ("nfnet_F3+", 224, 30000): (51_838_234_624, 542_234_992),
    ("nfnet_F7+", 224, 1000): (100_738_347_008, 829_551_960),
    ("nfnet_F7+", 224, 30000): (100_857_131_008, 948_364_960),
}
