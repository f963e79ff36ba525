"""Which params each recipe decays, by name, in unrolled and scanned layouts: the exact lists."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from configs import convnext_tiny, nfnet_f0, vit_c_1gf, vit_p_1gf
from modeling import registry
from training import optim

KERNEL = "kernel"


def decayed(name: str, include, scan: bool, resolution: int = 32) -> set[str]:
    """Paths of the decayed params of `name`, a stacked param counted once per block under the
    name its block has when unrolled ('stage2_blocks/...' -> 'stage2_block1/...', ...)."""
    model = registry.create(name, scan=scan)
    images = jnp.zeros((1, resolution, resolution, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))["params"]
    mask = traverse_util.flatten_dict(optim.weight_decay_mask(include)(params), sep="/")
    shapes = traverse_util.flatten_dict(params, sep="/")
    names = set()
    for path, decay in mask.items():
        if not decay:
            continue
        top, _, rest = path.partition("/")
        if match := re.fullmatch(r"(stage\d+)_blocks", top):  # blocks 1.. of a ConvNet stage
            names |= {f"{match[1]}_block{b + 1}/{rest}" for b in range(shapes[path].shape[0])}
        elif top == "blocks":  # every ViT block
            names |= {f"block_{b}/{rest}" for b in range(shapes[path].shape[0])}
        else:
            names.add(path)
    return names


def nfnet_expected(depths) -> set[str]:
    """Every conv and linear weight: stem, block convs, squeeze-excite, shortcut projections of
    each stage's first block, final conv, classifier (deepmind-research/nfnets: no decay on
    gains and biases)."""
    names = {f"stem_conv{i}/{KERNEL}" for i in range(4)} | {f"final_conv/{KERNEL}", "head/kernel"}
    for stage, depth in enumerate(depths):
        for b in range(depth):
            layers = ["conv0", "conv1", "conv1b", "conv2", "se/fc0", "se/fc1"]
            layers += ["conv_shortcut"] if b == 0 else []
            names |= {f"stage{stage}_block{b}/{layer}/{KERNEL}" for layer in layers}
    return names


@pytest.mark.parametrize("scan", [False, True])
def test_nfnet_decays_the_82_kernels_of_the_reference(scan):
    include = tuple(nfnet_f0.get_config().optimizer.weight_decay_include)
    names = decayed("nfnet_f0", include, scan)
    assert names == nfnet_expected((1, 2, 6, 3))
    assert len(names) == 82  # deepmind-research/nfnets' F0: every weight but gains and biases


@pytest.mark.parametrize("scan", [False, True])
def test_convnext_decays_kernels_not_norms_biases_or_layer_scales(scan):
    include = tuple(convnext_tiny.get_config().optimizer.weight_decay_include)
    expected = {"stem_conv/kernel", "head/kernel"}
    expected |= {f"stage{s}_downsample_conv/kernel" for s in (1, 2, 3)}
    for stage, depth in enumerate((3, 3, 9, 3)):
        expected |= {f"stage{stage}_block{b}/conv{i}/kernel" for b in range(depth)
                     for i in (1, 2, 3)}
    assert decayed("convnext_tiny", include, scan) == expected


def vit_blocks(depth: int) -> set[str]:
    layers = ["attention/query", "attention/key", "attention/value", "attention/out",
              "mlp/fc1", "mlp/fc2"]
    return {f"block_{i}/{layer}/kernel" for i in range(depth) for layer in layers}


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_vit_decays_kernels_only(scan):
    """big_vision's `wd_mults`: '.*/kernel'. Not the q/k/v biases of shape (heads, head_dim),
    the class token, the position embedding or stacked norm scales."""
    names = decayed("vit_Ti/16", optim.KERNELS, scan)
    assert names == {"embedding/kernel", "head/kernel"} | vit_blocks(12)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("config, stem", [(vit_p_1gf, ["embedding"]),
                                          (vit_c_1gf, [f"stem/conv{i}" for i in range(4)]
                                           + ["stem/embedding"])])
def test_xiao_vit_decays_what_pycls_decays(config, stem, scan):
    """pycls: every param but BatchNorm, LayerNorm and biases, so the class token and the
    position embedding too."""
    c = config.get_config()
    model = registry.create(c.model.name)
    names = decayed(c.model.name, tuple(c.optimizer.weight_decay_include), scan, resolution=224)
    expected = {f"{layer}/kernel" for layer in stem} | {"head/kernel", "cls", "pos_embedding"}
    assert names == expected | vit_blocks(model.depth)


def test_include_and_exclude_patterns():
    params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(())},
              "pos_embedding": jnp.ones((1, 4, 2)), "head": {"kernel": jnp.ones((2, 3))}}
    mask = optim.weight_decay_mask(exclude=(r"^head/",))(params)
    assert mask == {"a": {"kernel": True, "bias": False, "scale": False},
                    "pos_embedding": False, "head": {"kernel": False}}
    mask = optim.weight_decay_mask(include=(r"kernel$", r"^pos_embedding$"))(params)
    assert mask["pos_embedding"] and mask["head"]["kernel"] and not mask["a"]["bias"]
