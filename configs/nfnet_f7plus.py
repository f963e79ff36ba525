"""NFNet-F7+ (Smith et al. 2023); arguments as in configs/nfnet.py, e.g. :epochs=8,lr=1.6"""

from configs.nfnet import nfnet_config


def get_config(arg=None):
    return nfnet_config("F7+", arg)
