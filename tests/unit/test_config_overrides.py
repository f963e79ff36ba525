"""Every leaf field of every config in configs/ can be overridden from the command line
(`--config.a.b=VALUE`) with a value of its type, placeholders ("unset" defaults) included."""

import importlib
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).parents[2]
CONFIGS = sorted(
    p.name for p in (REPO / "configs").glob("*.py")
    if hasattr(importlib.import_module(f"configs.{p.stem}"), "get_config")
)
# Config arguments worth covering besides the defaults (they set other fields or None).
# config_flags loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
VARIANTS = ["nfnet_f0.py:imagenet", "finetune_convnext.py:model=xlarge,from=22k",
            "finetune_vit.py:layer_decay=0.65", "quickstart.py:data=image_folder,data_dir=d"]


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted path, type, value) of every non-ConfigDict field."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config.get_type(key), value


def new_value(field_type: type, value):
    """A value of `field_type` that differs from `value`, and how to spell it on the CLI."""
    if field_type is bool:
        return not value, str(not value).lower()
    if field_type in (int, float):
        new = field_type((value or 0) + 3)
        return new, repr(new)
    if field_type is str:
        return f"{value or ''}x", f"{value or ''}x"
    if field_type is tuple:
        new = tuple(value or ()) + (7,)
        return new, repr(new)
    raise AssertionError(f"type {field_type.__name__}: use a value or a typed placeholder")


@pytest.mark.parametrize("name", CONFIGS + VARIANTS)
def test_every_field_overrides_from_the_command_line(name):
    path = str(REPO / "configs" / name)
    module, _, arg = name.removesuffix(".py").partition(".py:")
    config = importlib.import_module(f"configs.{module}").get_config(arg or None)
    expected, argv = {}, ["prog", f"--config={path}"]
    for key, field_type, value in leaves(config):
        try:
            expected[key], text = new_value(field_type, value)
        except AssertionError as e:
            raise AssertionError(f"{name}: config.{key} = {value!r}: {e}") from None
        argv.append(f"--config.{key}={text}")
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    parsed = {key: value for key, _, value in leaves(flag_values.config)}
    assert parsed == expected
