"""ConvNeXt-S (small); arguments as in configs/convnext.py, e.g. :epochs=100"""

from configs.convnext import convnext_config


def get_config(arg=None):
    return convnext_config("small", arg)
