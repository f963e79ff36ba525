"""Smoke tests of the performance benchmarks on tiny models (CPU, no timings asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from benchmarks import compile_time_benchmark, profile_train_step, timm_train_step
from benchmarks import train_throughput_benchmark as throughput

HAS_TIMM = all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))
TINY = ["--batch", "2", "--resolution", "32", "--steps", "1", "--warmup", "1"]


def test_throughput_prints_the_table(capsys):
    # Where torch and timm are installed, timm's side runs eagerly (torch.compile takes minutes).
    rows = throughput.main(["--models", "nfnet_tiny", "vit_tiny", *TINY,
                            *(["--no_compile"] if HAS_TIMM else [])])
    out = capsys.readouterr().out
    assert "| device | model | batch / device | px | ours img/s / device | timm img/s |" in out
    assert "CPU: not a performance figure" in out
    assert "~35% MFU on TPU v4" in out
    for name in ("nfnet_tiny", "vit_tiny"):
        assert f"| CPU (cpu x 1) | {name} | 2 | 32 |" in out
    if HAS_TIMM:
        assert all("timm" in row for row in rows)
    else:
        assert "timm not measured: torch and timm not installed" in out or (
            "timm not measured: timm not installed" in out)
        assert out.count("| no timm | n/a |") == 2


def test_throughput_without_timm_writes_json_and_profiles_the_slowest(tmp_path, capsys):
    figures, trace = tmp_path / "figures.json", tmp_path / "profile"
    (row,) = throughput.main(["--models", "convnext_test", "--no_timm", *TINY,
                              "--json", str(figures), "--profile", str(trace)])
    out = capsys.readouterr().out
    assert "timm not measured: --no_timm" in out and "| no timm | n/a |" in out
    assert row["ours"]["step_time"] > 0 and "timm" not in row
    written = json.loads(figures.read_text())
    assert written["jax"] == jax.__version__ and written["dtype"] == "bfloat16"
    (entry,) = written["rows"]
    assert entry["name"] == "convnext_test" and entry["ours_over_timm"] is None
    assert entry["images_per_s_ours"] == pytest.approx(2 / row["ours"]["step_time"])
    assert "profile of the slowest of ours, convnext_test" in out and "XLA cost analysis" in out
    assert list(trace.rglob("*.xplane.pb")) and (trace / "train_step.optimized.hlo.txt").exists()


def test_slowest_is_furthest_behind_timm_else_its_mfu_target():
    a = dict(name="a", ours={"step_time": 1.0}, timm={"step_time": 2.0}, mfu_ours=0.2,
             target_mfu=0.5)
    b = dict(name="b", ours={"step_time": 1.0}, timm={"step_time": 1.5}, mfu_ours=0.4,
             target_mfu=0.5)
    assert throughput.slowest([a, b])["name"] == "b"  # 1.5x timm against a's 2x.
    for row in (a, b):
        del row["timm"]
    assert throughput.slowest([a, b])["name"] == "a"  # 40% of its MFU target against 80%.


@pytest.mark.skipif(HAS_TIMM, reason="checks the message where torch is not installed")
def test_timm_worker_without_torch_reports_the_error():
    spec = throughput.timm_spec(throughput.TARGETS["vit_tiny"], 2, 32, "bfloat16", 1, 1, False)
    result = throughput.measure_timm(spec, sys.executable)
    assert "torch" in result["error"]


def test_table_ratio_and_mfu():
    assert throughput.mfu(10**9, 10, 1.0, 6e10) == pytest.approx(1.0)
    assert throughput.mfu(10**9, 10, 1.0, None) is None
    row = dict(device="GPU x 1", name="m", batch=100, resolution=224, target_mfu=0.5,
               ours={"step_time": 0.5}, timm={"step_time": 1.0}, mfu_ours=0.4, mfu_timm=0.2)
    line = throughput.format_table([row])[-1]
    assert line == "| GPU x 1 | m | 100 | 224 | 200.0 | 100.0 | 2.000 | 40.0% | 20.0% | 50.0% |"


def test_timm_spec_carries_the_recipe():
    spec = throughput.timm_spec(throughput.TARGETS["nfnet_f0"], 256, 192, "bfloat16", 3, 5, True)
    assert spec["model"] == "dm_nfnet_f0" and spec["resolution"] == 192 and spec["bf16"]
    assert spec["optimizer"]["name"] == "sgd" and spec["optimizer"]["agc_clip"] == 0.01
    assert spec["optimizer"]["lr"] == pytest.approx(1.6 * 256 / 4096)
    vit = throughput.timm_spec(throughput.TARGETS["vit_b16"], 256, 224, "bfloat16", 3, 5, True)
    assert vit["optimizer"]["name"] == "adamw" and vit["label_smoothing"] == 0.1


def test_time_steps_counts_only_timed_steps():
    calls = []
    first, per_step = timm_train_step.time_steps(lambda: calls.append(1), lambda _: None, 3, 4)
    assert len(calls) == 7 and first >= 0 and per_step >= 0


def test_compile_time_prints_lowering_and_compilation_per_layout(capsys):
    results = compile_time_benchmark.main(
        ["--models", "vit_P-tiny:pool='gap'", "--resolution", "16",
         "--batch_per_device", "2", "--layouts", "unrolled", "remat"]
    )
    out = capsys.readouterr().out
    assert "backend cpu" in out and "persistent compilation cache off" in out
    assert "vit_P-tiny:pool='gap' [unrolled]:" in out and "lowering" in out
    assert "vit_P-tiny:pool='gap' [remat]:" in out
    assert "remat/unrolled: compilation" in out and "temporaries" in out
    assert [r["layout"] for r in results] == ["unrolled", "remat"]
    assert all(r["compile_s"] > 0 for r in results)


def test_parse_model_overrides():
    assert compile_time_benchmark.parse_model("vit_G/14:scan=True,remat_policy=dots_saveable") == (
        "vit_G/14", {"scan": True, "remat_policy": "dots_saveable"}
    )
    assert compile_time_benchmark.parse_model("nfnet_f7plus") == ("nfnet_f7plus", {})


def test_profile_writes_trace_and_hlo(tmp_path, capsys):
    profile_train_step.main(["--model", "vit_tiny", *TINY, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "XLA cost analysis" in out and "dtype conversions in the step's jaxpr" in out
    assert "top ops by time" in out or "no per-op events" in out
    assert (tmp_path / "train_step.optimized.hlo.txt").read_text().startswith("HloModule")
    assert (tmp_path / "train_step.stablehlo.mlir").exists()
    assert list(tmp_path.rglob("perfetto_trace.json.gz"))


def test_configs_and_the_benchmarked_step_load_without_tensorflow():
    # Accelerator images (e.g. CUDA ones with jax, torch and timm) often lack TensorFlow: only the
    # input pipeline may need it.
    blocker = (
        "import sys\n"
        "class NoTensorFlow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('tensorflow', 'tensorflow_datasets'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, NoTensorFlow())\n"
        "import benchmarks.train_throughput_benchmark, benchmarks.profile_train_step\n"
        "import benchmarks.gpu_run\n"
        "import configs.nfnet_f7plus, configs.convnext_xlarge, configs.vit_c_4gf\n"
        "import configs.quickstart, configs.finetune_nfnet\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", blocker], cwd=repo, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_array_record_benchmark_prints_rates_and_ratios(capsys):
    from benchmarks import array_record_benchmark

    medians = array_record_benchmark.main(
        ["--images", "32", "--size", "16", "--resolution", "8", "--batch", "8", "--batches",
         "1", "--rounds", "1", "--latency_ms", "1"]
    )
    out = capsys.readouterr().out
    assert "0 ms per read call" in out and "1 ms per read call" in out
    assert out.count("images/s: ours / plain") == 2 and out.count("ours / per-record") == 4
    assert out.count("images per CPU-second: ours / plain") == 2
    assert sorted(medians) == [0.0, 1.0]
    assert all(m.keys() == {"ours", "plain", "per-record"} for m in medians.values())
    assert all(rate > 0 for m in medians.values() for rate in m.values())
