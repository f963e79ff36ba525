"""Fine-tuning: pre-trained initialisation from a workdir and from foreign formats, the
init report, bad inputs, layer-wise lr decay, evaluation at another resolution, the configs."""

import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

import convnext
import nfnets
import train
import vit
from configs import finetune_convnext, finetune_nfnet, finetune_vit
from configs.common import base_config
from modeling import block_stack, macs
from nfnets.haiku_import import from_haiku, to_haiku
from tests.integration.test_train import metrics, small_config
from tests.parity.test_vit_parity import big_vision_tree
from training import finetune, optim, sharding, steps
from vit.posemb import resample

FIXTURES = Path(__file__).parents[1] / "fixtures"


def flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def shapes(tree) -> dict:
    return {k: tuple(v.shape) for k, v in flat(tree).items()}


# ----------------------------------------------------------------------------------------------
# End to end: pre-train a tiny NFNet, fine-tune it on another class count and resolution.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny NFNet trained 4 steps on the digits (10 classes, 32 px), with an EMA."""
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    config = small_config(total_steps=4, log_every_steps=4, eval_every_steps=4,
                          checkpoint_every_steps=4)
    return workdir, train.train_and_evaluate(config, workdir)


def finetune_config(init: str, **changes):
    """configs/finetune_nfnet.py on the tiny NFNet and synthetic data: 12 classes, 40 px train,
    48 px eval, SAM in 2 groups, dropout, stochastic depth, repeated augmentation; two steps."""
    c = finetune_nfnet.get_config(
        f"model=tiny,init={init},data=synthetic,classes=12,res=40,eval_res=48,batch=32,"
        "sam_groups=2,repeat=2"
    )
    c.data.synthetic.update(train_examples=256, eval_examples=64, image_size=48)
    c.compute_dtype = "float32"
    c.eval_batch_size = 64
    c.total_steps = 2
    c.optimizer.warmup_steps = 1
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
    for key, value in changes.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finetune"))
    state = train.train_and_evaluate(finetune_config(pretrained[0]), workdir)
    return workdir, state


def test_finetune_runs_and_reports(pretrained, finetuned, capsys):
    workdir, state = finetuned
    report = json.loads((Path(workdir) / "init_report.json").read_text())
    names = set(flat(pretrained[1].params))
    assert report["source"]["format"] == "workdir"
    assert report["source"]["step"] == 4 and report["source"]["weights"] == "ema_params"
    assert report["model"] == report["source_model"] == "nfnet_tiny"
    assert report["reinitialized"] == ["head/bias ((10,) in the checkpoint, (12,) now)",
                                       "head/kernel ((256, 10) in the checkpoint, (256, 12) now)"]
    assert set(report["loaded"]) == names - {"head/kernel", "head/bias"}
    assert report["counts"] == {"loaded": len(names) - 2, "resampled": 0, "reinitialized": 2,
                                "ignored": 0}
    assert state.params["head"]["kernel"].shape == (256, 12)
    records = metrics(workdir)
    assert int(state.step) == 2 and np.isfinite(records[-1]["eval_loss"])
    assert np.isfinite(records[-1]["ema_eval_loss"])


def test_loaded_params_equal_the_pretrained_ones_at_step_0(pretrained, tmp_path):
    config = finetune_config(pretrained[0])
    model = train.create_model(config)
    optimizer = optim.create_optimizer(config.optimizer, lambda step: 0.1)
    mesh = sharding.create_mesh(dict(config.mesh))
    init = lambda key: steps.create_state(model, optimizer, key, (40, 40, 3), ema=True)
    shardings = sharding.tree_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
    with jax.set_mesh(mesh):
        fresh = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
        state = finetune.load_pretrained(fresh, config, model, optimizer, shardings,
                                         str(tmp_path))
    source, fresh_params = flat(pretrained[1].ema_params), flat(fresh.params)
    for tree in (state.params, state.ema_params):
        for name, value in flat(tree).items():
            expected = fresh_params[name] if name.startswith("head/") else source[name]
            np.testing.assert_array_equal(value, expected, err_msg=name)
    assert (tmp_path / "init_report.json").exists()


def test_resumed_finetune_does_not_reload(pretrained, finetuned, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a resumed run must not load the pre-trained weights again")

    monkeypatch.setattr(finetune, "load_pretrained", fail)
    state = train.train_and_evaluate(finetune_config(pretrained[0], total_steps=4),
                                     finetuned[0])
    assert int(state.step) == 4


def test_raw_params_without_ema(pretrained):
    config = finetune_config(pretrained[0], **{"init.use_ema": False, "init.reinit": ("^stem",)})
    values, _, report, source = plan(config)
    assert source.source["weights"] == "params"
    np.testing.assert_array_equal(values["final_conv/kernel"],
                                  flat(pretrained[1].params)["final_conv/kernel"])
    assert "stem_conv0/kernel (config.init.reinit)" in report["reinitialized"]


# ----------------------------------------------------------------------------------------------
# Bad inputs.
# ----------------------------------------------------------------------------------------------


def plan(config):
    """finetune.plan for the config's model, from shapes only (nothing is compiled)."""
    model = train.create_model(config)
    variables = macs.abstract_variables(model, config.data.train_resolution)
    return finetune.plan(config, model, shapes(variables["params"]),
                         shapes(variables.get("batch_stats", {})))


def test_an_unrolled_checkpoint_loads_into_scanned_blocks(pretrained):
    source = jax.device_get(pretrained[1].ema_params)
    assert "stage1_block1" in source  # the tiny NFNet unrolls its blocks by default
    values, _, report, _ = plan(finetune_config(pretrained[0], **{"model.overrides.scan": True}))
    stacked = flat(block_stack.stack_stages(source))
    assert "stage1_blocks/conv0/kernel" in values and len(report["reinitialized"]) == 2
    assert set(values) == set(stacked) - {"head/kernel", "head/bias"}
    for name, value in values.items():
        np.testing.assert_array_equal(value, stacked[name], err_msg=name)


def test_checkpoint_of_another_family_or_variant_names_both(pretrained):
    config = finetune_convnext.get_config(f"init={pretrained[0]}")
    with pytest.raises(finetune.PretrainedError, match=r"nfnet_tiny.*convnext_base"):
        finetune.read_pretrained(config)
    config = finetune_nfnet.get_config(f"model=f0,init={pretrained[0]}")
    with pytest.raises(finetune.PretrainedError, match=r"nfnet_tiny checkpoint.*trains nfnet_F0"):
        finetune.read_pretrained(config)


def test_shapes_that_cannot_be_loaded_are_listed(pretrained):
    config = finetune_config(pretrained[0])
    config.model.overrides.widths = (64, 96, 128, 160)  # the last stage wider
    with pytest.raises(finetune.PretrainedError, match="neither loaded nor interpolated") as info:
        plan(config)
    message = str(info.value)
    assert "stage3_block0/conv0/kernel: (1, 1, 128, 64) in the checkpoint, (1, 1, 128, 80) in " \
        "the model" in message
    assert "final_conv/kernel: (1, 1, 128, 256) in the checkpoint, (1, 1, 160, 320)" in message
    assert "22 parameters" in message


def test_missing_or_unknown_paths_are_clear_errors(pretrained, tmp_path):
    with pytest.raises(finetune.PretrainedError, match="does not exist"):
        finetune.read_pretrained(finetune_config(str(tmp_path / "nowhere")))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(finetune.PretrainedError, match="neither a workdir"):
        finetune.read_pretrained(finetune_config(str(tmp_path / "weights.bin")))
    timm_convnext = str(FIXTURES / "convnext_test.safetensors")
    with pytest.raises(finetune.PretrainedError, match="timm convnext checkpoint.*nfnet_tiny"):
        finetune.read_pretrained(finetune_config(timm_convnext))


def test_a_bad_checkpoint_stops_train_with_a_config_error(workdir):
    config = finetune_config(str(FIXTURES / "convnext_test.safetensors"))
    with pytest.raises(train.ConfigError, match="timm convnext checkpoint"):
        train.train_and_evaluate(config, workdir)
    assert not (Path(workdir) / "checkpoints").exists() or not any(
        (Path(workdir) / "checkpoints").iterdir())


def test_bad_sam_and_layer_decay_values_are_config_errors(workdir):
    for changes, message in [
        ({"sam.rho": -0.1}, "sam.rho"),
        ({"sam.num_groups": 5}, "divide global_batch_size"),
        ({"sam.ascent_fraction": 0.0}, "ascent_fraction"),
        ({"grad_accum_steps": 2}, "gradient accumulation"),
        ({"optimizer.layer_decay": 1.5}, "layer_decay"),
    ]:
        with pytest.raises(train.ConfigError, match=message):
            train.train_and_evaluate(finetune_config("", **changes), workdir)


# ----------------------------------------------------------------------------------------------
# Foreign formats (timm, big_vision, DeepMind), position embeddings, BatchNorm statistics.
# ----------------------------------------------------------------------------------------------


def test_timm_nfnet_with_a_new_head():
    config = finetune_config(str(FIXTURES / "nfnet_tiny.safetensors"), **{"data.num_classes": 7})
    values, _, report, source = plan(config)
    expected = flat(nfnets.from_timm(load_file(FIXTURES / "nfnet_tiny.safetensors"), "tiny"))
    assert source.source["format"] == "timm"
    assert len(report["reinitialized"]) == 2 and not report["ignored"]
    assert set(values) == set(expected) - {"head/kernel", "head/bias"}
    for name, value in values.items():
        np.testing.assert_array_equal(value, expected[name])


def test_deepmind_haiku_npz_round_trip(tmp_path):
    params = nfnets.from_timm(load_file(FIXTURES / "nfnet_tiny.safetensors"), "tiny")
    haiku = to_haiku(params, "tiny")
    assert haiku["NFNet/~/nf_block_1/~/squeeze_excite/~/linear_1/w"].shape == \
        params["stage1_block0"]["se"]["fc1"]["kernel"].shape
    assert "NFNet/~/linear/w" in haiku and "NFNet/~/nf_block/skip_gain" in haiku
    np.savez(tmp_path / "nfnet.npz", **haiku)
    values, _, report, source = plan(finetune_config(str(tmp_path / "nfnet.npz"),
                                                     **{"data.num_classes": 10}))
    assert source.source["format"] == "deepmind_haiku" and not report["reinitialized"]
    for name, value in flat(params).items():
        np.testing.assert_array_equal(values[name], value)
    nested = {}
    for key, value in haiku.items():
        module, name = key.rsplit("/", 1)
        nested.setdefault(module, {})[name] = value
    jax.tree.map(np.testing.assert_array_equal, from_haiku(nested, "tiny"), params)


def vit_config(init: str, resolution: int, **overrides):
    c = base_config()
    c.model.name = "vit_P-tiny"
    c.model.overrides.update(overrides)
    c.init.path = init
    c.data.num_classes = 5
    c.data.train_resolution = resolution
    return c


def test_timm_vit_position_embedding_is_resampled():
    path = FIXTURES / "vit_tiny_token.safetensors"
    values, _, report, _ = plan(vit_config(str(path), 24))  # 4 x 4 -> 6 x 6 patches
    source = load_file(path)["pos_embed"]
    np.testing.assert_allclose(values["pos_embedding"],
                               resample(source, (6, 6), num_prefix_tokens=1), rtol=1e-6)
    assert report["resampled"] == ["pos_embedding ((1, 17, 32) -> (1, 37, 32), bilinear)"]
    assert sorted(report["reinitialized"])[0].startswith("head/bias")


def test_big_vision_npz_into_a_scanned_vit(tmp_path):
    params = vit.from_timm(load_file(FIXTURES / "vit_tiny_token.safetensors"), "P-tiny")
    np.savez(tmp_path / "bv.npz", **big_vision_tree(params, depth=2))
    values, _, report, source = plan(vit_config(str(tmp_path / "bv.npz"), 16, scan=True))
    assert source.source["format"] == "big_vision"
    stacked = flat(vit.stack_blocks(params))
    np.testing.assert_array_equal(values["blocks/mlp/fc1/kernel"], stacked["blocks/mlp/fc1/kernel"])
    assert not report["resampled"] and not report["ignored"]


def test_resnet_batchnorm_statistics_are_loaded():
    path = FIXTURES / "resnet50_test.safetensors"
    size = dict(depths=(1, 2, 1, 1), widths=(32, 64, 96, 128))
    config = base_config()
    config.model.name = "convnext_roadmap_resnet50"
    config.model.overrides.update(size)
    config.init.path = str(path)
    config.data.train_resolution = 64
    values, stats, report, _ = plan(config)
    expected = flat(convnext.variables_from_timm(load_file(path), "resnet50", **size))
    assert stats and all(
        np.array_equal(v, expected[f"batch_stats/{k}"]) for k, v in stats.items()
    )
    assert sum(name.startswith("batch_stats/") for name in report["loaded"]) == len(stats)


# ----------------------------------------------------------------------------------------------
# Evaluation at another resolution; layer-wise lr decay; the configs.
# ----------------------------------------------------------------------------------------------


def test_vit_evaluates_at_another_resolution_than_it_trained_at():
    model = vit.create("P-tiny", num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)["params"]
    fitted = steps.fit_position_embedding(model, params, (2, 24, 24, 3))
    np.testing.assert_allclose(fitted["pos_embedding"],
                               resample(params["pos_embedding"], (6, 6), num_prefix_tokens=1),
                               rtol=1e-5, atol=1e-6)
    assert steps.fit_position_embedding(model, params, (2, 16, 16, 3)) is params
    eval_step = jax.jit(steps.make_eval_step(model, lambda x: x.astype(jnp.float32) / 255))
    batch = {"image": np.zeros((2, 24, 24, 3), np.uint8), "label": np.zeros(2, np.int32),
             "mask": np.ones(2, bool)}
    assert float(eval_step(params, {}, batch)["count"]) == 2


@pytest.mark.parametrize("scan", [False, True])
def test_convnext_layer_decay_factors(scan):
    """ConvNeXt-B: 12 layers + head (facebookresearch/ConvNeXt `get_num_layer_for_convnext`),
    in either layout: a stacked block gets the factor of the block it stands for."""
    model = convnext.create("base", scan=scan)
    params = macs.abstract_variables(model, 32)["params"]
    d = 0.8
    factors = optim.layer_decay_factors(params, d, "convnext")
    if scan:
        full = jax.tree.map(lambda f, p: np.broadcast_to(f, p.shape), factors, params)
        factors = block_stack.unstack_stages(full)
    factors = flat(factors)
    expected = {
        "stem_conv/kernel": d**13, "stem_norm/scale": d**13,
        "stage0_block2/conv1/kernel": d**12,
        "stage1_downsample_conv/kernel": d**11, "stage1_block2/layer_scale": d**11,
        "stage2_downsample_norm/bias": d**10, "stage2_block0/conv2/kernel": d**10,
        "stage2_block2/norm1/scale": d**10, "stage2_block3/conv1/kernel": d**9,
        "stage2_block26/conv3/bias": d**2,
        "stage3_downsample_conv/kernel": d, "stage3_block2/conv3/kernel": d,
        "head_norm/scale": 1.0, "head/kernel": 1.0,
    }
    for name, factor in expected.items():
        assert np.ravel(factors[name])[0] == pytest.approx(factor), name
    assert len({np.ravel(f)[0] for f in factors.values()}) == 14  # layers 0 ... 12 and the head


def test_layer_decay_scales_the_optimizer_updates():
    config = base_config().optimizer
    config.name, config.agc_clip, config.weight_decay = "sgd_agc", None, 0.0
    config.momentum, config.layer_decay, config.layer_decay_rule = 0.0, 0.5, "vit"
    params = {"embedding": {"kernel": jnp.ones((2, 2))}, "block_0": {"w": jnp.ones(2)},
              "block_1": {"w": jnp.ones(2)}, "head": {"kernel": jnp.ones((2, 3))}}
    opt = optim.create_optimizer(config, optax.constant_schedule(1.0))
    updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    assert {k: float(v.flat[0]) for k, v in flat(updates).items()} == {
        "embedding/kernel": -0.125, "block_0/w": -0.25, "block_1/w": -0.5, "head/kernel": -1.0}
    scanned = optim.layer_decay_factors(vit.stack_blocks(params), 0.5, "vit")
    np.testing.assert_allclose(scanned["blocks"]["w"][:, 0], [0.25, 0.5])


@pytest.mark.parametrize("module, arg, model", [
    (finetune_nfnet, "init=DIR", "nfnet_F7+"),
    (finetune_convnext, "model=L,init=DIR,from=1k", "convnext_large"),
    (finetune_vit, "init=x.npz,layer_decay=0.65", "vit_B/16"),
])
def test_finetune_configs_parse(module, arg, model):
    c = module.get_config(arg)
    assert c.model.name == model and c.init.path in ("DIR", "x.npz")
    if module is finetune_nfnet:  # Brock et al. 2021a's values (docs/reference-numbers.md)
        assert (c.global_batch_size, c.optimizer.learning_rate, c.optimizer.warmup_steps,
                c.total_epochs) == (2048, 0.1, 5000, 50.0)
        assert (c.sam.rho, c.sam.ascent_fraction, c.optimizer.weight_decay) == (0.05, 0.2, 1e-5)
        assert dict(c.model.overrides) == {"dropout": 0.25, "stochastic_depth": 0.1}
        assert (c.data.train_resolution, c.data.eval_resolution) == (384, 480)
        assert c.ema_decay and module.get_config("repeat=3").data.repeated_augmentation == 3
    if module is finetune_convnext:  # TRAINING.md, from ImageNet-1k at 384 px
        assert (c.optimizer.layer_decay, c.model.overrides.drop_path_rate) == (0.7, 0.95)
        assert c.model.overrides.head_init_scale == 0.001
    if module is finetune_vit:
        assert (c.optimizer.clip_global_norm, c.optimizer.layer_decay_rule) == (1.0, "vit")
    with pytest.raises(ValueError, match="drop_path"):
        finetune_convnext.get_config("model=tiny")


@pytest.mark.parametrize("module, arg", [
    (finetune_nfnet, "model=f0,init=/not/there"),
    (finetune_convnext, "model=tiny,drop_path=0.1,init=/not/there"),
    (finetune_vit, "model=Ti/16,init=/not/there,sam_rho=0.05,sam_groups=8"),
])
def test_finetune_configs_dry_run_without_the_checkpoint(module, arg, capsys):
    config = module.get_config(arg)
    config.num_train_examples = 1_281_167
    train.train_and_evaluate(config, None, dry_run=True)
    out = capsys.readouterr().out
    assert "init             from /not/there (not read by --dry_run)" in out


def test_every_finetune_config_is_importable():
    for path in sorted((Path(__file__).parents[2] / "configs").glob("finetune_*.py")):
        importlib.import_module(f"configs.{path.stem}")
