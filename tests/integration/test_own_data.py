"""Training on one's own data: image folders, npz files and TFDS ArrayRecord datasets."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags
from PIL import Image

import input_pipeline as ip
import train
from configs import quickstart
from imagedata import augment, data_sources
from imagedata.data_config import default_data_config

REPO = Path(__file__).resolve().parents[2]

# README's "Train on your own data" commands, verbatim: DIR is the dataset folder (the TFDS data
# directory for the last one) and W the workdir.
SHORT_RUN = (
    "--config.data.eval_split=test --config.total_steps=2 --config.global_batch_size=16 "
    "--config.eval_batch_size=16 --config.log_every_steps=1 --config.eval_every_steps=2 "
    "--config.checkpoint_every_steps=2"
)
COMMANDS = [
    "python train.py --config=configs/quickstart.py --workdir=W --config.data.name=image_folder "
    f"--config.data.data_dir=DIR --config.data.num_classes=0 {SHORT_RUN}",
    "python train.py --config=configs/quickstart.py --workdir=W --config.data.name=npz "
    f"--config.data.data_dir=DIR --config.data.num_classes=10 {SHORT_RUN}",
    "python train.py --config=configs/quickstart.py --workdir=W --config.data.name=my_dataset "
    f"--config.data.data_dir=DIR --config.data.num_classes=0 {SHORT_RUN}",
]
STATS_COMMAND = (
    "python -m input_pipeline stats --config=configs/quickstart.py "
    "--config.data.name=image_folder --config.data.data_dir=DIR"
)
NUM_CLASSES = 10


def gray(seed, h=8, w=8):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def image_folder(root, *, classes=NUM_CLASSES, per_class=2, splits=("train", "test")):
    """Grayscale PNG digits-like images of mixed sizes in root/split/class/i.png."""
    for split in splits:
        for c in range(classes):
            os.makedirs(root / split / str(c))
            for i in range(per_class):
                path = root / split / str(c) / f"{i}.png"
                Image.fromarray(gray(100 * c + i, 8 + i, 9)).save(path)
    return root


def data_config(name="image_folder", **changes):
    config = default_data_config("digits")
    config.update(dict(name=name, eval_split="test", num_parallel_calls=2), **changes)
    return config


def run(command, **env):
    args = shlex.split(command)
    args[0] = sys.executable
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=os.environ | env)


# ---------------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------------


def encoded(mode, fmt, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (7 + seed, 9, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return image, buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "RGB"])
def test_png_modes_decode_to_rgb_with_alpha_dropped(mode):
    image, data = encoded(mode, "PNG", seed=len(mode))
    got = augment.decode(tf.constant(data)).numpy()
    np.testing.assert_array_equal(got, np.asarray(image.convert("RGB")))


def test_mixed_modes_formats_and_sizes_flow_through_both_pipelines(tmp_path):
    cases = [("L", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("L", "JPEG"),
             ("RGB", "JPEG"), ("P", "GIF"), ("RGBA", "BMP")]
    for i, (mode, fmt) in enumerate(cases):
        folder = tmp_path / "train" / f"{i}_{mode}"
        os.makedirs(folder)
        (folder / f"x.{fmt.lower()}").write_bytes(encoded(mode, fmt, seed=i)[1])
    config = data_config(data_dir=str(tmp_path), eval_split="train", num_classes=0,
                         train_resolution=8, eval_resolution=8)
    batch = next(ip.create_train_iterator(
        config, global_batch_size=8, seed=0, process_index=0, process_count=1))
    assert batch["image"].shape == (8, 8, 8, 3) and sorted(batch["label"]) == list(range(8))
    (batch,) = ip.create_eval_iterator(
        config, global_batch_size=8, process_index=0, process_count=1)
    assert batch["image"].shape == (8, 8, 8, 3) and batch["mask"].all()


# ---------------------------------------------------------------------------------------------
# Class count.
# ---------------------------------------------------------------------------------------------


def test_class_count_comes_from_the_class_folders(tmp_path):
    config = quickstart.get_config()
    config.data.update(name="image_folder", data_dir=str(image_folder(tmp_path, classes=3)),
                       eval_split="test", num_classes=0)
    train_source, eval_source, num_train = train.open_data(config)
    assert config.data.num_classes == 3 and num_train == 6 and len(eval_source) == 6
    assert train.create_model(config) is not None


def test_class_count_that_disagrees_with_the_folders_is_one_error(tmp_path):
    config = quickstart.get_config()
    config.data.update(name="image_folder", data_dir=str(image_folder(tmp_path, classes=3)),
                       num_classes=4)
    with pytest.raises(train.ConfigError,
                       match=r"'train' has 3 classes but config.data.num_classes is 4; set "
                             r"config.data.num_classes=3"):
        train.open_data(config)


def test_eval_class_folders_with_other_names_are_one_error(tmp_path):
    root = image_folder(tmp_path, classes=3)
    os.rename(root / "test" / "2", root / "test" / "two")
    config = quickstart.get_config()
    config.data.update(name="image_folder", data_dir=str(root), eval_split="test", num_classes=0)
    with pytest.raises(train.ConfigError, match=r"only in 'train': \['2'\]; only in 'test': "
                                                r"\['two'\]"):
        train.open_data(config)


def test_npz_class_count_must_be_given(tmp_path):
    np.savez(tmp_path / "train.npz", image=np.zeros((2, 4, 4, 1), np.uint8), label=[0, 1])
    config = quickstart.get_config()
    config.data.update(name="npz", data_dir=str(tmp_path), num_classes=0)
    with pytest.raises(train.ConfigError, match="does not record its class count; set "
                                                "config.data.num_classes"):
        train.open_data(config, dry_run=True)


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    for name in ("image_folder", "npz"):
        with pytest.raises(FileNotFoundError,
                           match=f"No folder {missing} .*set config.data.data_dir"):
            data_sources.open_source(data_config(name, data_dir=str(missing)), "train")


def test_split_folder_without_class_folders(tmp_path):
    os.makedirs(tmp_path / "train")
    Image.fromarray(gray(0)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(FileNotFoundError,
                       match=f"Split folder {tmp_path / 'train'} has no class folders; put"):
        data_sources.open_source(data_config(data_dir=str(tmp_path)), "train")


def test_class_folder_without_images(tmp_path):
    image_folder(tmp_path, classes=2, splits=("train",))
    os.makedirs(tmp_path / "train" / "empty")
    (tmp_path / "train" / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError,
                       match=f"Class folder {tmp_path / 'train' / 'empty'} holds no images"):
        data_sources.open_source(data_config(data_dir=str(tmp_path)), "train")


def test_corrupt_image_is_named(tmp_path):
    image_folder(tmp_path, classes=2, splits=("train",))
    bad = tmp_path / "train" / "1" / "0.png"
    bad.write_bytes(b"not a png")
    config = data_config(data_dir=str(tmp_path), num_classes=2, eval_split="train")
    with pytest.raises(ip.CorruptRecordError,
                       match=f"image file {bad} .*could not be preprocessed.*'replace'"):
        list(ip.create_eval_iterator(config, global_batch_size=4, process_index=0,
                                     process_count=1))


# ---------------------------------------------------------------------------------------------
# Mean and std.
# ---------------------------------------------------------------------------------------------


def test_stats_command_prints_flags_that_the_flag_parser_takes(tmp_path, monkeypatch):
    root = image_folder(tmp_path, classes=3)
    result = run(STATS_COMMAND.replace("DIR", str(root)))
    assert result.returncode == 0, result.stderr
    pixels = np.concatenate([
        np.asarray(Image.open(p)).ravel() / 255.0 for p in sorted(root.glob("train/*/*.png"))])
    flag_line = result.stdout.strip().splitlines()[-1]
    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", flag_values=values)
    argv = ["train.py", "--config=configs/quickstart.py", *shlex.split(flag_line)]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv.
    values(argv)
    np.testing.assert_allclose(config.value.data.mean, [pixels.mean()] * 3, atol=1e-4)
    np.testing.assert_allclose(config.value.data.std, [pixels.std()] * 3, atol=1e-4)
    assert re.search(r"Split 'train' of 'image_folder': 6 of 6 images", result.stdout)


def test_stats_name_an_undecodable_image(tmp_path):
    image_folder(tmp_path, classes=2, splits=("train",))
    bad = tmp_path / "train" / "1" / "1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"image file {bad} .*cannot be decoded"):
        ip.stats_report(data_config(data_dir=str(tmp_path), num_classes=2))


def test_stats_subsample_is_deterministic_and_even():
    np.testing.assert_array_equal(ip.stats_records(10, 4), [0, 2, 5, 7])
    np.testing.assert_array_equal(ip.stats_records(3, 10), [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# End to end: README's commands.
# ---------------------------------------------------------------------------------------------


class MyDataset(tfds.core.GeneratorBasedBuilder):
    """Ten classes of grayscale PNGs, prepared locally as ArrayRecord."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(0), "test": self._generate_examples(1)}

    def _generate_examples(self, offset):
        for i in range(2 * NUM_CLASSES):
            yield i, {"image": gray(1000 * offset + i)[..., None], "label": i % NUM_CLASSES}


def datasets(root):
    """The dataset folders of the three COMMANDS."""
    folder = image_folder(root / "folder")
    os.makedirs(root / "npz")
    for split, offset in (("train", 0), ("test", 1)):
        images = np.stack([gray(1000 * offset + i) for i in range(2 * NUM_CLASSES)])[..., None]
        labels = np.arange(2 * NUM_CLASSES) % NUM_CLASSES
        np.savez(root / "npz" / f"{split}.npz", image=images, label=labels)
    tfds_dir = root / "tfds"
    MyDataset(data_dir=str(tfds_dir), file_format="array_record").download_and_prepare()
    return [folder, root / "npz", tfds_dir]


def test_readme_commands_train_on_each_kind_of_data(tmp_path):
    for command, data_dir in zip(COMMANDS, datasets(tmp_path), strict=True):
        workdir = tmp_path / f"run_{len(list(tmp_path.glob('run_*')))}"
        result = run(command.replace("DIR", str(data_dir)).replace("=W ", f"={workdir} "))
        assert result.returncode == 0, command + "\n" + result.stderr[-3000:]
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
        assert [r["step"] for r in records] == [1, 2] and "eval_top1" in records[-1]
        saved = json.loads((workdir / "config.json").read_text())
        assert saved["data"]["num_classes"] == NUM_CLASSES


def test_readme_shows_the_commands_verbatim():
    readme = (REPO / "README.md").read_text()
    for command in [*COMMANDS, STATS_COMMAND]:
        assert f"\n    {command}\n" in readme, command
