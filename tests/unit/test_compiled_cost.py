"""The verdict and prediction of training/compiled_cost.py and the TPU cycle estimates of
training/hlo_cost.py, on made-up memory figures and HLO text."""

import pytest

from modeling import hardware
from training import compiled_cost, hlo_cost
from training.compiled_cost import GiB, Layout, Memory

V4 = hardware.accelerator("tpu_v4")
LAYOUT = Layout(batch_per_device=64, grad_accum_steps=1, fsdp=1, devices=64,
                remat_policy="dots_saveable")


def test_memory_counts_what_is_resident_once():
    m = Memory(arguments=6 * GiB, outputs=6 * GiB, aliased=6 * GiB, temporaries=20 * GiB,
               code=GiB // 4)
    assert m.total == 26 * GiB + GiB // 4  # donated outputs reuse their arguments
    evaluation = Memory(arguments=3 * GiB, outputs=GiB, aliased=0, temporaries=2 * GiB, code=0)
    assert compiled_cost.eval_memory(m, evaluation) == 9 * GiB  # beside the resident state


def test_usable_hbm_keeps_headroom_for_the_runtime():
    assert V4.hbm_bytes_per_device == 32 * GiB  # megacore: one device is the chip
    assert compiled_cost.usable_hbm(V4) == int(30.75 * GiB)  # libtpu's figure for a v4 chip
    assert hardware.accelerator("tpu_v3").hbm_bytes_per_device == 16 * GiB  # a core's half


def test_a_step_that_fits_says_how_much_is_free():
    train = Memory(6 * GiB, 6 * GiB, 6 * GiB, 19 * GiB, 0)
    v = compiled_cost.verdict(train, None, 30 * GiB, LAYOUT)
    assert v.fits and v.sentence() == "fits: 25.00 GiB of 30.00 GiB per device, 5.00 GiB free"


def test_activations_that_overflow_suggest_fewer_examples_per_device():
    """F7+ at 64 images per v4 chip (measured: 6.19 GiB of state, 30.32 GiB of temporaries)."""
    train = Memory(int(6.19 * GiB), int(6.19 * GiB), int(6.19 * GiB), int(30.32 * GiB), 0)
    v = compiled_cost.verdict(train, None, compiled_cost.usable_hbm(V4), LAYOUT)
    assert not v.fits
    sentence = v.sentence()
    assert sentence.startswith("does not fit: needs 36.51 GiB per device, 30.75 GiB usable; ")
    assert "from 64 to 32 (grad_accum_steps=2, or a slice with 2x the chips)" in sentence
    assert "remat_policy='nothing_saveable'" in sentence
    # FSDP shrinks only the 6.19 GiB of state; the 30.32 GiB of temporaries alone leave no
    # margin (compiled_cost.SUGGESTION_MARGIN).
    assert "config.mesh.fsdp" not in sentence


def test_state_that_overflows_suggests_fsdp():
    train = Memory(34 * GiB, 34 * GiB, 34 * GiB, 2 * GiB, 0)
    v = compiled_cost.verdict(train, None, 30 * GiB, LAYOUT)
    assert "shard the train state over more devices (config.mesh.fsdp=2)" in v.sentence()
    assert "grad_accum_steps" not in v.sentence()  # 2 GiB of activations cannot free 6


def test_when_neither_change_is_enough_alone_the_pair_is_named():
    """ViT-G/14 at 16 per v4 chip: 27.5 GiB of state, 50 GiB of temporaries (the compiler's)."""
    layout = Layout(batch_per_device=16, grad_accum_steps=1, fsdp=1, devices=128,
                    remat_policy="dots_saveable")
    train = Memory(int(27.5 * GiB), 0, 0, 50 * GiB, 0)
    v = compiled_cost.verdict(train, None, int(30.75 * GiB), layout)
    # Alone, 16 micro-batches leave 30.6 GiB (no margin) and FSDP frees at most the 27.5.
    assert ("to fit, shard the train state over more devices (config.mesh.fsdp=2) and cut the "
            "examples per device at a time from 16 to 4 (grad_accum_steps=4, or a slice with 4x "
            "the chips), or recompute each block") in v.sentence()


def test_the_compilers_refusal_gives_the_figures():
    message = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total "
               "memory required for HLO temporaries (50.00G) exceeds available HBM (30.75G). HLO "
               "module: jit_step.")
    assert compiled_cost.compile_oom(message) == (50 * GiB, int(30.75 * GiB))
    assert compiled_cost.compile_oom("INTERNAL: something else") is None


def test_the_eval_step_beside_the_state_can_be_what_does_not_fit():
    train = Memory(20 * GiB, 0, 0, 5 * GiB, 0)
    evaluation = Memory(10 * GiB, 0, 0, 15 * GiB, 0)
    v = compiled_cost.verdict(train, evaluation, 30 * GiB, LAYOUT)
    assert not v.fits and v.needed == 35 * GiB


def test_nothing_to_change_says_so():
    layout = Layout(batch_per_device=1, grad_accum_steps=1, fsdp=1, devices=1,
                    remat_policy="nothing_saveable")
    v = compiled_cost.verdict(Memory(40 * GiB, 0, 0, GiB, 0), None, 30 * GiB, layout)
    assert v.suggestion == ("use a larger slice or a smaller model: no change of this config "
                            "frees enough.")


def test_core_hours_count_tensorcores():
    """Smith et al. count TPU-v4 core hours: 2 TensorCores per chip."""
    assert compiled_cost.core_hours(1.0, 3600, 128, V4) == 256


def test_clocks_give_the_published_peaks_back():
    """v3's and v4's published clocks x their MXUs' FLOPs per cycle = the peak."""
    assert V4.clock_hz * 2 * 4 * 128 * 128 * 2 == pytest.approx(V4.peak_flops_per_chip, 0.01)
    v3 = hardware.accelerator("tpu_v3")
    assert v3.clock_hz * 2 * 2 * 128 * 128 * 2 == pytest.approx(v3.peak_flops_per_chip, 0.01)


LOOP_HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8] get-tuple-element(%p), index=1
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %y = f32[8] fusion(%x), kind=kLoop, calls=%f, backend_config={"estimated_cycles":"100"}
  ROOT %t = (s32[], f32[8]) tuple(%next, %y)
}

%cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]) parameter(0)
  %n = s32[] constant(12)
  %j = s32[] get-tuple-element(%q), index=0
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

%f (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  ROOT %b = f32[8] negate(%a), backend_config={"estimated_cycles":"999"}
}

ENTRY %main (x0: f32[8]) -> (s32[], f32[8]) {
  %x0 = f32[8] parameter(0)
  %zero = s32[] constant(2)
  %start = s32[] copy(%zero)
  %init = (s32[], f32[8]) tuple(%start, %x0)
  %c = f32[8] copy(%x0), backend_config={"estimated_cycles":"7"}
  ROOT %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body, backend_config={"estimated_cycles":"5000"}
}
"""  # noqa: E501


def test_cycles_count_loop_bodies_per_iteration_from_the_loop_itself():
    module = hlo_cost.parse_hlo(LOOP_HLO)
    assert hlo_cost.while_loops(module) == [dict(name="w", trip_count=10, runs=1)]  # 12 - 2
    # 10 x the body's fusion + the entry's copy; the while's own figure and the instructions
    # inside the fusion are not counted again.
    assert hlo_cost.estimated_cycles(module) == 10 * 100 + 7
    assert hlo_cost.cycles_by_kind(module) == {"elementwise": 1000, "copy": 7}


def test_a_step_the_compiler_refuses_gets_the_verdict_from_its_message():
    import collections
    import types

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    import train
    from configs import quickstart
    from training import tpu_slices

    config = quickstart.get_config()
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    State = collections.namedtuple("State", "params")
    state = State({"w": jax.ShapeDtypeStruct((1024, 1024, 64), jnp.float32)})  # 0.25 GiB
    shardings = State({"w": NamedSharding(mesh, PartitionSpec())})
    error = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on "
                         "HBM, the total memory required for HLO temporaries (50.00G) exceeds "
                         "available HBM (30.75G).")
    layout = Layout(batch_per_device=32, grad_accum_steps=1, fsdp=1, devices=4,
                    remat_policy=None)
    report = train.refused_report(config, tpu_slices.parse_slice("v4-8"),
                                  types.SimpleNamespace(shape={"data": 4, "fsdp": 1}), state,
                                  shardings, error, layout, total_steps=10, compile_s=5.0)
    assert report.train is None and not report.verdict.fits
    assert report.verdict.needed == 50 * GiB + GiB // 4
    assert "grad_accum_steps=2" in report.verdict.sentence()
    lines = compiled_cost.format_verdict(report)
    assert "the TPU compiler refused the train step after 5 s: its temporaries alone need " \
        "50.00 GiB of the chip's 30.75 GiB" in lines[0]
    assert report.to_json()["train"] is None
    with pytest.raises(RuntimeError, match="other"):  # any other compile error is raised
        train.refused_report(config, tpu_slices.parse_slice("v4-8"), None, state, shardings,
                             RuntimeError("other"), layout, 10, 5.0)
