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
