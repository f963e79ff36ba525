"""One name space for every model family: 'nfnet_f7plus', 'nfnet_F0', 'convnext_tiny', ...

A model name is `<family>_<variant>`; the family package resolves the variant spelling.
"""

import dataclasses
import importlib

from flax import linen as nn

# Family name -> package exporting VARIANTS, create(), from_timm() (README, "Architecture").
FAMILIES = {"nfnet": "nfnets", "convnext": "convnext", "vit": "vit"}


def family_package(family: str):
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family {family!r}; choose one of {sorted(FAMILIES)}.")
    return importlib.import_module(FAMILIES[family])


def split_name(name: str) -> tuple[str, str]:
    """'nfnet_f7plus' -> ('nfnet', 'f7plus')."""
    family, sep, variant = name.partition("_")
    if not sep or not variant:
        raise ValueError(
            f"Model name {name!r} is not '<family>_<variant>', e.g. 'nfnet_f0'; families: "
            f"{sorted(FAMILIES)}."
        )
    family_package(family)
    return family, variant


def create(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
    family, variant = split_name(name)
    return family_package(family).create(variant, num_classes=num_classes, **overrides)


def variant_info(name: str) -> dict:
    """The variant table entry (hyper-parameters and recipe figures) of a model name."""
    family, variant = split_name(name)
    package = family_package(family)
    return dict(package.VARIANTS[package.canonical_name(variant)])


def build(module: type[nn.Module], table_entry: dict, recipe_fields, num_classes: int,
          overrides: dict, family: str) -> nn.Module:
    """A family's `create()`: the variant's hyper-parameters (recipe entries dropped) updated by
    `overrides`, which must be fields of `module`; unknown ones are an error naming the valid."""
    fields = {f.name for f in dataclasses.fields(module)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"Unknown {family} override(s) {unknown}; valid fields are {sorted(fields)}."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    hparams = {k: v for k, v in table_entry.items() if k not in recipe_fields}
    return module(num_classes=num_classes, **{**hparams, **overrides})
