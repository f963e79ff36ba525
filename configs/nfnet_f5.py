"""NFNet-F5; arguments as in configs/nfnet.py, e.g. --config=configs/nfnet_f5.py:epochs=2,lr=0.8"""

from configs.nfnet import nfnet_config


def get_config(arg=None):
    return nfnet_config("F5", arg)
