"""The step cost audit itself (benchmarks/step_cost.py): that it measures correctly.

FLOPs against XLA's cost analysis, loop trip counts, collective parsing and classification,
the ideal collectives, roofline arithmetic, bad input, and the command line on 8 CPU devices.
Nothing here asserts that today's train step is within its ideal.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from benchmarks import step_cost
from configs.quickstart import get_config
from modeling import hardware
from training import hlo_cost

REPO = Path(__file__).resolve().parents[2]
S = jax.ShapeDtypeStruct


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


# ----------------------------------------------------------------------------------------------
# FLOPs.
# ----------------------------------------------------------------------------------------------


def _conv(x, k, stride=1, padding="SAME", dilation=1, groups=1):
    return lax.conv_general_dilated(
        x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, size",
    [(1, "SAME", 1, 1, 8), (1, "SAME", 1, 2, 8), (2, "SAME", 1, 4, 9),
     (2, ((1, 2), (0, 1)), 2, 1, 10), (1, "VALID", 1, 8, 7)],
)
def test_convolution_flops_equal_xla_forward_and_backward(stride, padding, dilation, groups, size):
    conv = lambda x, k: _conv(x, k, stride, padding, dilation, groups)
    x, k = S((4, size, size, 8), jnp.float32), S((3, 3, 8 // groups, 16), jnp.float32)
    cotangent = jax.eval_shape(conv, x, k)
    for fn, args in ((conv, (x, k)), (lambda x, k, ct: jax.vjp(conv, x, k)[1](ct),
                                      (x, k, cotangent))):
        c = compiled(fn, *args)  # Padding taps are skipped, as XLA does.
        assert hlo_cost.hlo_flops(c.as_text()) == c.cost_analysis()["flops"]


def test_convolution_flops_with_batch_groups_and_dot_flops():
    # A kernel gradient as GPU and TPU compilers write it: batch_group_count = feature groups.
    shapes = ((8, 6, 6, 32), (4, 6, 6, 16), (3, 3, 8, 16))
    lhs, rhs, out = (hlo_cost.Array("f32", dims) for dims in shapes)
    attrs = {"dim_labels": "f01b_i01o->01bf", "window": "{size=6x6 pad=1_1x1_1}",
             "batch_group_count": "2"}
    # 2 x input features (8) x output features (16) x batch (32 / 2) x 3 x 3 output positions
    # x 6 x 6 kernel taps, less the taps on padding: 16 valid (tap, position) pairs of 18 per dim.
    assert hlo_cost.convolution_flops(lhs, rhs, out, attrs) == 2 * 8 * 16 * 16 * 16 * 16
    dot = hlo_cost.dot_flops(hlo_cost.Array("bf16", (3, 64, 128)),
                              hlo_cost.Array("f32", (3, 64, 32)), [2])
    assert dot == 2 * 3 * 64 * 32 * 128


def _train_step(params, images, labels):
    """A small conv net's SGD step: convolutions and dots dominate its FLOPs."""

    def loss_fn(params):
        h = jax.nn.relu(_conv(images, params["conv0"]))
        h = jax.nn.relu(_conv(h, params["conv1"], stride=2, groups=2))
        logits = h.reshape(h.shape[0], -1) @ params["dense"]
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, -1))

    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


PARAMS = {"conv0": S((3, 3, 3, 64), jnp.float32), "conv1": S((3, 3, 32, 64), jnp.float32),
          "dense": S((8 * 8 * 64, 10), jnp.float32)}


def test_counter_agrees_with_cost_analysis_on_a_loop_free_step():
    c = compiled(_train_step, PARAMS, S((8, 16, 16, 3), jnp.float32), S((8, 10), jnp.float32))
    text = c.as_text()
    assert not hlo_cost.while_loops(text)
    flops, xla = hlo_cost.hlo_flops(text), c.cost_analysis()["flops"]
    assert 0.95 * xla <= flops <= xla  # XLA also counts the elementwise ops.


def test_loop_bodies_count_once_per_iteration_where_xla_counts_them_once():
    micro, steps = 8, 4

    def accumulated(params, images, labels):  # lax.scan over micro-batches
        def body(total, batch):
            new = _train_step(params, *batch)
            return jax.tree.map(jnp.add, total, new), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        split = lambda x: x.reshape(steps, micro, *x.shape[1:])
        return lax.scan(body, zeros, (split(images), split(labels)))[0]

    single = compiled(_train_step, PARAMS, S((micro, 16, 16, 3), jnp.float32),
                      S((micro, 10), jnp.float32))
    looped = compiled(accumulated, PARAMS, S((steps * micro, 16, 16, 3), jnp.float32),
                      S((steps * micro, 10), jnp.float32))
    (loop,) = hlo_cost.while_loops(looped.as_text())
    assert loop["trip_count"] == steps and loop["runs"] == 1
    ours = hlo_cost.hlo_flops(looped.as_text()) / hlo_cost.hlo_flops(single.as_text())
    xla = looped.cost_analysis()["flops"] / single.cost_analysis()["flops"]
    assert ours == pytest.approx(steps, rel=1e-3)
    assert xla < 1.5  # cost_analysis counts the body once


def test_nested_loops_multiply():
    def fn(x, w):
        inner = lambda c, _: (jnp.tanh(c @ w), None)
        outer = lambda c, _: (lax.scan(inner, c, None, length=3)[0], None)
        return lax.scan(outer, x, None, length=5)[0]

    c = compiled(fn, S((16, 64), jnp.float32), S((64, 64), jnp.float32))
    assert hlo_cost.hlo_flops(c.as_text()) == 15 * 2 * 16 * 64 * 64


# ----------------------------------------------------------------------------------------------
# Collectives, parsed from HLO text in the formats XLA prints.
# ----------------------------------------------------------------------------------------------

# A module in the formats XLA prints: a while loop with a known trip count, async -start/-done
# pairs, a combined all-reduce, an async-wrapped reduce-scatter, each replica-group notation.
HLO = (REPO / "tests" / "fixtures" / "step_cost_module.hlo.txt").read_text()


def test_collectives_parsed_from_hlo_text():
    found = {(c.kind, c.shape): c for c in hlo_cost.hlo_collectives(HLO, num_devices=8)}
    assert set(found) == {
        ("all-reduce", (8, 16)), ("all-gather", (16, 16)), ("all-reduce", (2, 16)),
        ("reduce-scatter", (16, 16)), ("collective-permute", (2, 16)), ("all-to-all", (8, 16)),
    }
    # The loop's all-reduce (3 runs, groups of 4) and the first array of the combined async one
    # (a mesh axis of 4) are both an f32[8,16] in groups of 4: one row.
    assert found["all-reduce", (8, 16)].count == 4 and found["all-reduce", (8, 16)].group_size == 4
    assert found["all-reduce", (2, 16)].count == 1  # the tuple split into its arrays
    assert found["all-gather", (16, 16)].group_size == 8  # iota replica groups
    assert found["all-to-all", (8, 16)].group_size == 8  # {}: every device
    assert found["collective-permute", (2, 16)].bytes == 2 * 16 * 4
    assert found["reduce-scatter", (16, 16)].count == 1  # async-start/-done counted once


def test_flops_of_loops_fusions_and_branches_in_hlo_text():
    # The loop's fused dot runs 3 times, each conditional branch is counted once.
    assert hlo_cost.hlo_flops(HLO) == (3 + 1) * 2 * 8 * 4 * 16


def test_ring_bytes_sent():
    assert hlo_cost.ring_bytes_sent("all-reduce", 800, 8) == 2 * 700
    assert hlo_cost.ring_bytes_sent("all-gather", 800, 8) == 700
    assert hlo_cost.ring_bytes_sent("reduce-scatter", 800, 4) == 600
    assert hlo_cost.ring_bytes_sent("collective-permute", 800, 8) == 800
    assert hlo_cost.ring_bytes_sent("all-reduce", 800, 1) == 0


class _Sharding:  # The one method of NamedSharding that parameter_shapes uses.
    def __init__(self, shard):
        self.shard = shard

    def shard_shape(self, shape):
        return self.shard


def test_classification_by_parameter_shapes():
    params = {"kernel": S((3, 3, 64, 128), jnp.float32), "bias": S((1, 1, 128), jnp.float32),
              "gain": S((), jnp.float32)}
    shardings = {"kernel": _Sharding((3, 3, 64, 32)), "bias": _Sharding((1, 1, 128)),
                 "gain": _Sharding(())}
    shapes = hlo_cost.parameter_shapes(params, shardings)
    classify = lambda dims, kind="all-reduce", group=None: hlo_cost.classify(dims, shapes, kind,
                                                                             group)
    assert classify((3, 3, 64, 128)) == classify((3, 3, 64, 32)) == hlo_cost.PARAMETER
    assert classify((3, 3, 32, 64), "reduce-scatter") == hlo_cost.PARAMETER  # any dim order
    assert classify((128,)) == hlo_cost.PARAMETER  # size-1 dimensions ignored
    assert classify((3, 3, 64, 128), "all-gather", 4) == hlo_cost.PARAMETER  # 4 shards
    # An all-gather never makes a replicated parameter whole, nor a sharded one over more
    # devices than it has shards: those are activations of the same shape.
    assert classify((128, 1, 1, 3 * 3 * 64), "all-gather") == hlo_cost.ACTIVATION
    assert classify((3, 3, 64, 128), "all-gather", 8) == hlo_cost.ACTIVATION
    assert classify(()) == classify((4096,)) == hlo_cost.SMALL  # scalars are small
    assert classify((16, 8, 8, 32)) == classify((4097,)) == hlo_cost.ACTIVATION


# ----------------------------------------------------------------------------------------------
# Roofline.
# ----------------------------------------------------------------------------------------------


def test_roofline_arithmetic():
    acc = hardware.accelerator("tpu_v4")  # one device per chip
    assert acc.hbm_bandwidth_per_device == 1.2e12
    assert acc.interconnect_egress_per_device == pytest.approx(2.7e11)
    r = step_cost.roofline(acc, flops=275e9, bytes_accessed=2.4e9, bytes_sent=2.7e8,
                           model_flops=137.5e9, ideal_flops=275e9 / 4, ideal_bytes_sent=0.0)
    assert (r.compute_s, r.memory_s, r.collective_s) == pytest.approx((1e-3, 2e-3, 1e-3))
    assert r.step_s == pytest.approx(3e-3)  # max(compute, memory) + collectives
    assert r.mfu == pytest.approx(137.5e9 / (3e-3 * 275e12))
    assert r.ideal_step_s == pytest.approx(2e-3) and r.ideal_mfu == pytest.approx(0.25)
    v3 = hardware.accelerator("tpu_v3")  # two devices (TensorCores) per chip
    assert v3.hbm_bandwidth_per_device == 450e9 and v3.interconnect_egress_per_device == 2e11


def test_every_accelerator_has_bandwidths():
    for acc in hardware.ACCELERATORS.values():
        assert acc.hbm_bandwidth_per_chip > 1e11 and acc.interconnect_bandwidth_per_chip > 1e11


# ----------------------------------------------------------------------------------------------
# Bad input: one sentence naming the fix, raised before anything is compiled.
# ----------------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_the_fix():
    config, more = get_config(), jax.device_count() + 1
    with pytest.raises(ValueError, match=r"Unknown accelerator 'tpu_v9'; choose one of .*tpu_v4"):
        step_cost.audit(config, accelerator="tpu_v9")
    with pytest.raises(ValueError, match=rf"needs {more} devices but the cpu platform offers "
                       rf"{more - 1}; start a fresh process with --devices {more}"):
        step_cost.audit(config, {"data": more})
    with pytest.raises(ValueError, match=r"do not multiply to the 1 devices; give --mesh sizes "
                       r"whose product is 1"):
        step_cost.audit(config, {"data": 2, "fsdp": 2}, devices=jax.devices()[:1])
    config.global_batch_size, config.grad_accum_steps = 30, 4
    with pytest.raises(ValueError, match=r"Global batch 30 must be divisible by devices \(\d+\) x "
                       r"grad_accum_steps \(4\); set global_batch_size \(--batch\) to a multiple"):
        step_cost.audit(config)


def test_cli_prints_the_error_without_a_traceback(capsys):
    more = jax.device_count() + 1  # Also starts jax's devices: --devices cannot add any now.
    with pytest.raises(SystemExit) as exit_info:
        step_cost.main(["--config=configs/quickstart.py", "--devices", str(more)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"error: The mesh data={more} needs {more} devices" in err
    assert f"start a fresh process with --devices {more}" in err
    with pytest.raises(SystemExit):
        step_cost.main(["--config=configs/quickstart.py", "--config.no_such_field=1"])
    err = capsys.readouterr().err
    assert err.startswith("error: --config: ") and "no_such_field'" in err


# ----------------------------------------------------------------------------------------------
# On 8 CPU devices, in fresh processes.
# ----------------------------------------------------------------------------------------------

SHARDED_STEP = textwrap.dedent("""\
    import json, sys
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from benchmarks import step_cost
    from training import hlo_cost

    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    named = lambda *spec: NamedSharding(mesh, P(*spec))
    shardings = {"w1": named("fsdp"), "w2": named(), "b": named()}
    shapes = {"w1": (64, 128), "w2": (128, 10), "b": (128,)}
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=shardings[k])
              for k, s in shapes.items()}
    x = jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=named(("data", "fsdp")))

    def step(params, x):
        def loss(params):
            h = jnp.tanh(x @ params["w1"] + params["b"])
            return jnp.mean((h @ params["w2"]) ** 2), h
        grads, h = jax.grad(loss, has_aux=True)(params)
        return jax.tree.map(lambda p, g: p - g, params, grads), h

    # h is returned replicated: an activation (or its input x) is gathered.
    jitted = jax.jit(step, out_shardings=(shardings, named()))
    text = jitted.lower(params, x).compile().as_text()
    known = hlo_cost.parameter_shapes(params, shardings)
    rows = [dict(kind=c.kind, shape=c.shape, group=c.group_size, count=c.count,
                 cls=hlo_cost.classify(c.shape, known, c.kind, c.group_size))
            for c in hlo_cost.hlo_collectives(text, 8)]
    ideal = [(c.kind, c.bytes, c.group_size)
             for c in step_cost.ideal_collectives(params, shardings, dict(data=4, fsdp=2))]
    print(json.dumps(dict(rows=rows, ideal=ideal)))
    """)


def _run(args, devices=None, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices:
        env["JAX_NUM_CPU_DEVICES"] = str(devices)
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_collectives_of_a_sharded_step_on_eight_devices():
    out = _run(["-c", SHARDED_STEP], devices=8, timeout=300).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    rows = {(r["kind"], tuple(sorted(r["shape"]))): (r["cls"], r["group"]) for r in result["rows"]}
    # The FSDP-sharded w1 is all-gathered over 'fsdp' (2 devices); the replicated parameters'
    # gradients (w2 perhaps transposed, b) are all-reduced over all 8; w1's gradient is reduced
    # too (XLA:CPU: an all-reduce over 'fsdp', then the shard's over 'data'); the replicated
    # output h, or its input x, is gathered: an activation.
    assert rows["all-gather", (64, 128)] == (hlo_cost.PARAMETER, 2)
    assert rows["all-reduce", (10, 128)] == rows["all-reduce", (128,)] == (hlo_cost.PARAMETER, 8)
    assert any(cls == hlo_cost.PARAMETER and kind in ("all-reduce", "reduce-scatter")
               and 64 * 128 in (math.prod(shape) * 2, math.prod(shape))
               for (kind, shape), (cls, _) in rows.items() if kind != "all-gather")
    activations = [shape for shape, (cls, _) in rows.items() if cls == hlo_cost.ACTIVATION]
    assert activations and all(s in ((64, 256), (128, 256)) for _, s in activations)
    w1_bytes, replicated = 64 * 128 * 4, (128 * 10 + 128) * 4
    assert sorted(map(tuple, result["ideal"])) == sorted([
        ("all-gather", 2 * w1_bytes, 2), ("reduce-scatter", w1_bytes, 2),
        ("all-reduce", replicated, 8), ("all-reduce", w1_bytes // 2, 4)])


def test_command_line_on_eight_devices(tmp_path):
    # A ViT with its blocks in a loop (gradient accumulation over 2 micro-batches): fast to
    # compile, and a loop in the real train step.
    out = tmp_path / "cost.json"
    result = _run(["-m", "benchmarks.step_cost", "--config=configs/quickstart.py",
                   "--config.model.name=vit_P-tiny", "--config.grad_accum_steps=2", "--devices",
                   "8", "--batch", "32", "--resolution", "16", "--accelerator", "h100_sxm",
                   "--json", str(out)], timeout=600)
    report = result.stdout
    assert "vit_P-tiny" in report and "mesh data=8, fsdp=1 over 8 x cpu" in report
    assert "iterations, runs 1 x per step" in report and "roofline on NVIDIA H100 SXM" in report
    cost = json.loads(out.read_text())
    assert cost["devices"] == 8 and cost["mesh"] == {"data": 8, "fsdp": 1}
    assert [loop["trip_count"] for loop in cost["loops"]] == [2]
    assert cost["flops"] > 0 and cost["flops_per_example"] > 0 and cost["ideal_flops"] > 0
    assert cost["flops"] > cost["xla_flops"] * 1.2  # the loop body is counted twice, XLA once
    assert cost["temp_bytes"] > 0 and cost["argument_bytes"] > 0
    kinds = {c["kind"] for c in cost["collectives"]}
    assert kinds and kinds <= set(hlo_cost.COLLECTIVES)
    assert all(c["cls"] in (hlo_cost.PARAMETER, hlo_cost.SMALL, hlo_cost.ACTIVATION)
               for c in cost["collectives"])
    assert cost["ideal"] == [{"kind": "all-reduce", "dtype": "f32", "shape": [],
                              "bytes": cost["param_bytes"], "count": 1, "group_size": 8,
                              "cls": hlo_cost.PARAMETER}]
    assert 0 < cost["roofline"]["mfu"] < 1
