"""benchmarks/gpu_check.py in its CPU mode (what CI runs): tiny settings, items 1-3, the JSON and
the markdown table written, items 4-7 reported as needing CUDA. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.tiny_benchmark
def test_cpu_mode_writes_json_and_markdown(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), str(out), "--device", "cpu",
         "--tiny", "--size", "32", "--precisions", "fp32", "--min-rounds", "2",
         "--max-rounds", "2", "--warmup", "0", "--budget-s", "20"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "No CUDA device" in done.stdout and "item 1" in done.stdout  # progress printed
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["conditions"]["mode"] == "cpu (tiny)" and result["conditions"]["size"] == 32
    (row,) = result["train_step"]
    assert row["status"] == "ok" and row["precision"] == "fp32" and row["rounds"] == 2
    assert set(row["classifiers"]) == {"linear", "ssa", "protoseg"}
    assert row["classifiers"]["linear"]["ratio"] == 1.0
    for clf in ("ssa", "protoseg"):
        v = row["classifiers"][clf]
        assert v["median_ms"] > 0 and v["low"] <= v["ratio"] <= v["high"]
    (inference,) = result["inference"]
    assert all(v["fps"] > 0 for v in inference["classifiers"].values())
    assert {(m["model"], m["classifier"]) for m in result["memory"]} == {
        ("segformer_b0", c) for c in ("linear", "ssa", "protoseg")}
    assert set(result["skipped"]) == {"4", "5", "6", "7"}  # JSON keys
    assert "errors" not in result
    md = (out / "gpu_check.md").read_text()
    for heading in ("## 1. Training step", "## 2. Inference, batch 1", "## 3. Peak memory"):
        assert heading in md
    assert "| segformer_b0 | fp32 | ssa |" in md and "| segformer_b0 | ssa |" in md
    assert "item 7: needs CUDA" in md


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_renders_every_gpu_item():
    """Items 4-7 only run on a GPU: their tables are rendered here from a result of the shape
    the items write, so that the first GPU run cannot fail in the formatting."""
    g = _gpu_check()
    cls = {"linear": {"median_ms": 10.0, "ratio": 1.0, "low": 1.0, "high": 1.0, "fps": 100.0},
           "ssa": {"median_ms": 10.2, "ratio": 1.02, "low": 1.01, "high": 1.03, "fps": 98.0}}
    results = {
        "conditions": {"date": "2026-12-03 10:00 UTC", "device": "NVIDIA H200", "torch": "2",
                       "mode": "cuda", "size": 512, "batch": 8, "classes": 150},
        "train_step": [{"model": "segformer_b0", "precision": "fp16", "status": "ok",
                        "classifiers": cls},
                       {"model": "segformer_b0", "precision": "bf16",
                        "status": "skipped: bf16 not supported on this GPU"}],
        "inference": [{"model": "segformer_b0", "rounds": 50, "classifiers": cls}],
        "memory": [{"model": "seaformer_l", "classifier": "ssa", "train_mb": 4511.0,
                    "inference_mb": 300.0, "kind": "torch.cuda.max_memory_allocated"}],
        "fp16_stability": [{"model": "segformer_b0", "classifier": "ssa", "steps": 50,
                            "finite": True, "non_finite_losses": [], "skipped_steps": [],
                            "skipped": 2, "final_scale": 16384.0}],
        "compile": [{"model": "segformer_b0", "classifier": "ssa", "status": "works",
                     "compile_s": 40.0, "eager_ms": 10.0, "compiled_ms": 8.0, "speedup": 1.25,
                     "speedup_low": 1.2, "speedup_high": 1.3},
                    {"model": "segnext_t", "classifier": "ssa", "status": "fails: X: y"}],
        "ddp": {"status": "ran", "gpus": 2, "rows": [
            {"classifier": "protoseg", "status": "ok", "equal": True, "rel_update_diff": 2e-4,
             "tolerance": 1e-2, "median_rel_update_diff": 2e-4, "buffers_max_abs_diff": 2e-4,
             "prototypes_max_abs_diff": 2e-4}]},
        "pipeline": {"returncode": 0, "report": True, "profiled_on": ["NVIDIA H200"],
                     "seconds": 95.0},
    }
    md = g.markdown(results)
    assert "| segformer_b0 | fp16 | ssa | 10.20 | 1.020 [1.010, 1.030] |" in md
    assert "skipped: bf16 not supported" in md
    assert "| segformer_b0 | ssa | 50 | True | 0 | 2 | 16384 |" in md
    assert "| segformer_b0 | ssa | works | 1.25 [1.20, 1.30] | 40 |" in md
    assert "| segnext_t | ssa | fails: X: y |" in md
    assert "protoseg: ok; equal: True" in md
    assert "Return code 0, report written: True, profiled on NVIDIA H200" in md


def test_fp16_item_reports_losses_and_scaler_skips_on_cpu():
    import torch

    g = _gpu_check()
    args = g.parse_args(["unused", "--tiny", "--size", "32", "--fp16-steps", "2"])
    args.models, args.batch, args.classes = ["segformer_b0"], 2, 10
    results: dict = {}
    g.item_fp16_stability(args, torch.device("cpu"), results)
    rows = results["fp16_stability"]
    assert [r["classifier"] for r in rows] == ["ssa", "protoseg"]
    for r in rows:
        assert r["steps"] == 2 and r["non_finite_losses"] == []   # losses finite
        assert r["skipped"] == len(r["skipped_steps"]) and r["final_scale"] >= 1


def test_ddp_item_is_skipped_below_two_gpus(monkeypatch):
    import torch

    g = _gpu_check()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    results: dict = {}
    g.item_ddp(g.parse_args(["unused"]), torch.device("cpu"), results)
    assert results["ddp"]["status"] == "skipped: 1 GPU(s) visible, needs 2"
