"""The GPU run's script on the CPU: its --tiny path writes the same JSON, a deadline included."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_run, profile_train_step

REPO = Path(__file__).resolve().parents[2]
HAS_TIMM = all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))
# Ours only: where torch and timm are absent the JSON says so; where present, --no_timm.
OURS_ONLY = ["--no_timm"] if HAS_TIMM else []
MODEL_KEYS = {
    "name", "model", "overrides", "batch", "resolution", "macs", "target_mfu",
    "images_per_s_ours", "images_per_s_timm", "ours_over_timm", "mfu_ours", "mfu_timm",
    "first_step_s_ours", "first_step_s_timm", "ours_note", "timm_note",
}  # fmt: skip


def run_gpu_script(out: Path, *flags: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_run", "--out", str(out), "--tiny",
         "--compile_cache", str(out / "jax_cache"), *flags],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_run.json").read_text())


def test_tiny_run_writes_every_figure_and_profiles_the_slowest(tmp_path):
    record = run_gpu_script(tmp_path, "--cases", "vit_b16", "vit_b16_cudnn", *OURS_ONLY)
    assert record["status"] == "done" and record["date"]
    assert {"jax", "jaxlib", "flax", "torch", "timm", "device"} <= record["versions"].keys()
    assert record["timm_status"].startswith("not measured: ")
    vit, cudnn = record["models"]
    assert MODEL_KEYS <= vit.keys() and MODEL_KEYS <= cudnn.keys()
    assert vit["ours_note"] == "measured" and vit["images_per_s_ours"] > 0
    assert vit["first_step_s_ours"] > 0 and vit["images_per_s_timm"] is None
    assert vit["timm_note"] == record["timm_status"]
    assert cudnn["overrides"] == {"attention_implementation": "cudnn"}
    # No cuDNN on a CPU: the case fails, says why, and the run goes on.
    assert cudnn["ours_note"] == "measured" or cudnn["ours_note"].startswith("failed: ")
    profile = record["profile"]
    assert profile["case"] == "vit_b16" and profile["why"]
    assert (tmp_path / profile["trace_dir"] / "train_step.optimized.hlo.txt").exists()
    assert all({"name", "ms_per_step", "share", "kind"} <= op.keys() for op in profile["top_ops"])
    assert [p["part"] for p in record["parts"]] == [
        "timm vit_b16", "ours vit_b16", "timm vit_b16_cudnn", "ours vit_b16_cudnn", "profile",
    ]  # fmt: skip
    assert "| vit_b16 (vit_tiny) | 2 | 32 |" in (tmp_path / "report.md").read_text()


def test_a_spent_budget_still_writes_valid_json(tmp_path):
    record = run_gpu_script(tmp_path, "--budget_s", "0", "--min_part_s", "1", *OURS_ONLY)
    assert record["status"] == "done"
    assert [m["name"] for m in record["models"]] == [c.name for c in gpu_run.CASES]
    for model in record["models"]:
        assert model["ours_note"].startswith("not measured: time budget")
        assert model["images_per_s_ours"] is None
    assert record["profile"] == {"skipped": "no case of ours was measured"}


def test_gpu_trace_ops_are_found_by_their_hlo_op_and_kinds_named():
    instructions = {
        "fusion.3": "bf16[8]{0} fusion(bf16[8]{0} %p), kind=kCustom, calls=%f, backend_config="
        '{"fusion_backend_config":{"kind":"__triton_gemm"}}',
        "custom-call.1": 'bf16[8]{0} custom-call(%a), custom_call_target="__cudnn$convForward"',
        "loop_add_fusion": "f32[8]{0} fusion(%a, %b), kind=kLoop, calls=%g",
        "conditional.2": "(f32[8]{0}) conditional(%c, %a, %b), branch_computations={%x, %y}",
    }
    kernel = lambda name, micros, op: {
        "ph": "X", "pid": 1, "name": name, "dur": micros, "args": {"hlo_op": op},
    }  # fmt: skip
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        kernel("triton_gemm_kernel", 30, "fusion.3"),
        kernel("cudnn_kernel_a", 10, "custom-call.1"),
        kernel("cudnn_kernel_b", 5, "custom-call.1"),
        kernel("a_branch", 99, "conditional.2"),  # Its callees' kernels carry the time.
        {"ph": "X", "pid": 2, "name": "loop_add_fusion", "dur": 7},  # A host event.
    ]
    times = profile_train_step.op_times(events, instructions)
    assert times == {"fusion.3": 30.0, "custom-call.1": 15.0}
    kinds = {name: profile_train_step.op_kind(hlo) for name, hlo in instructions.items()}
    assert kinds == {
        "fusion.3": "fusion kCustom __triton_gemm",
        "custom-call.1": "custom-call __cudnn$convForward",
        "loop_add_fusion": "fusion kLoop",
        "conditional.2": "conditional",
    }
