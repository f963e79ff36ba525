"""ViT_C-36GF (Xiao et al. 2021, Table 1); arguments as in configs/vit.py, e.g. :sgd,epochs=100"""

from configs.vit import vit_config


def get_config(arg=None):
    return vit_config("C-36GF", arg)
