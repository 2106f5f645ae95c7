"""Paired latency step: FLOP floor on toy models with known counts, the floor verdict, the report
section from a tiny synthetic result, the CLI on a miniature run and the rule wiring (dry run).
Nothing here asserts a timing: the engine is driven by a stub timer or by 2-4 rounds."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from torch import nn

from ssaseg.engine.paired_latency import floor_verdict, measure_paired_latency, result_table
from ssaseg.paired_timing import PairedTiming, RatioInterval
from ssaseg.report import build_report, paired_latency_section, paired_latency_table
from tests.conftest import REPO, miniature_params, write_params


def _stub_timer(ratios: dict[str, tuple[float, float, float]], calls: list):
    """A stand-in for time_paired that runs every candidate once and returns fixed ratios."""

    def timer(fns, baseline, **kwargs):
        calls.append((sorted(fns), baseline, kwargs))
        for fn in fns.values():
            fn()
        times = {name: [10.0 * ratios.get(name, (1.0,))[0]] * 3 for name in fns}
        return PairedTiming(
            baseline=baseline, times_ms=times, orders=[list(fns)] * 3,
            ratios={n: RatioInterval(*r, 0.95) for n, r in ratios.items()},
            target_half_width=kwargs["target_half_width"], target_reached=True,
            stop_reason="target", warmup=kwargs["warmup"], seed=kwargs["seed"], seconds=1.0)

    return timer


def test_flop_floor_of_toy_models_with_known_counts():
    h = w = 16
    models = {"linear": nn.Conv2d(3, 8, 1),
              "ssa": nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)),
              "protoseg": nn.Conv2d(3, 8, 1)}
    calls: list = []
    timer = _stub_timer({"ssa": (1.50, 1.45, 1.55), "protoseg": (1.20, 1.10, 1.30)}, calls)
    result = measure_paired_latency(models, (h, w), __import__("torch").device("cpu"),
                                    warmup=2, min_rounds=3, seed=7, timer=timer)
    base = 2 * 3 * 8 * h * w                       # 2 FLOPs per multiply-add, bias not counted
    extra = 2 * 8 * 8 * h * w
    c = result["classifiers"]
    assert c["linear"]["flops_full"] == base
    assert c["ssa"]["flops_full"] == base + extra
    assert c["ssa"]["flops_ratio"] == pytest.approx((base + extra) / base)     # 3.667
    # ssa: ratio 1.5 [1.45, 1.55] lies below its floor 3.67; protoseg: above its floor 1.0
    assert c["ssa"]["floor_verdict"] == "below"
    assert c["protoseg"]["flops_ratio"] == 1.0 and c["protoseg"]["floor_verdict"] == "above"
    assert c["linear"]["ratio"] == 1.0 and c["ssa"]["ratio"] == 1.5
    names, baseline, kwargs = calls[0]
    assert baseline == "linear" and names == ["linear", "protoseg", "ssa"]
    assert kwargs["seed"] == 7 and kwargs["target_half_width"] == 0.02
    cond = result["conditions"]
    assert cond["input_size"] == [h, w] and cond["batch_size"] == 1 and "date" in cond
    assert "threads" in cond["device"]
    table = result_table(result, "synthetic", "toy").splitlines()
    assert table[0].startswith("dataset,model,classifier,median_ms,ratio")
    assert len(table) == 4 and table[2].startswith("synthetic,toy,ssa,")


def test_paired_latency_needs_linear():
    with pytest.raises(ValueError, match="linear"):
        measure_paired_latency({"ssa": nn.Conv2d(3, 2, 1)}, (8, 8),
                               __import__("torch").device("cpu"), timer=_stub_timer({}, []))


@pytest.mark.parametrize("low, high, floor, verdict", [
    (1.05, 1.08, 1.01, "above"), (0.95, 0.99, 1.01, "below"), (1.00, 1.03, 1.01, "at")])
def test_floor_verdict(low, high, floor, verdict):
    assert floor_verdict(low, high, floor) == verdict


def _result(dataset, model, ssa, protoseg, reached=True):
    """A tiny synthetic paired-latency result (the JSON profile-latency writes)."""
    def entry(ms, ratio, low, high, flops_ratio, verdict):
        return {"median_ms": ms, "ratio": ratio, "low": low, "high": high,
                "flops_full": int(1e9 * flops_ratio), "flops_ratio": flops_ratio,
                "floor_verdict": verdict}
    return {
        "baseline": "linear", "run": {"dataset": dataset, "model": model, "seed": 0,
                                      "weights": "trained"},
        "classifiers": {"linear": entry(100.0, 1.0, 1.0, 1.0, 1.0, "at"),
                        "ssa": entry(*ssa), "protoseg": entry(*protoseg)},
        "rounds": 120, "target_half_width": 0.02, "target_reached": reached,
        "stop_reason": "target" if reached else "max_seconds", "seconds": 60.0,
        "conditions": {"batch_size": 1, "input_size": [512, 512], "precision": "fp32",
                       "device": "cpu (x86_64), 1 threads", "threads": 1, "warmup_rounds": 5,
                       "rounds": 120, "seed": 0, "date": "2026-12-03 09:00 UTC",
                       "load_average": [7.5, 8.3]},
    }


def test_report_section_renders_ratios_floor_paper_and_sentences(tmp_path):
    published = pd.DataFrame([
        {"dataset": "ade20k", "model": "segnext_t", "classifier": "linear", "miou": 41.04,
         "latency_ms": 22.8, "source": "paper table"},
        {"dataset": "ade20k", "model": "segnext_t", "classifier": "ssa", "miou": 43.9,
         "latency_ms": 23.3, "source": "SSA README"}])
    results = [
        _result("ade20k", "segnext_t", (104.0, 1.04, 1.03, 1.05, 1.01, "above"),
                (98.0, 0.98, 0.97, 0.99, 1.20, "below")),
        _result("ade20k", "segformer_b0", (100.5, 1.005, 0.99, 1.02, 1.005, "at"),
                (101.0, 1.01, 0.99, 1.03, 1.3, "below"), reached=False),
    ]
    text = paired_latency_section(results, published)
    assert "## Paired latency (ratio to linear)" in text
    assert "| ade20k | segnext_t | ssa | 104.00 | 1.0400 [1.0300, 1.0500] | 1.0100 | above " \
           "| 1.022 (23.3 / 22.8 ms) | SSA README |" in text
    # no published pair for segformer_b0: the paper's headline figure and its source
    assert re.search(r"\| segformer_b0 \| ssa \|.*\| 1\.005-1\.020 \| "
                     r"SSA-Seg \(arXiv 2405\.06525\)", text)
    assert "| segformer_b0 | protoseg |" in text and "not published" in text
    assert "ssa is slower than linear on segnext_t: +4.0 % (+3.0 % to +5.0 %), above its FLOP " \
           "floor (+1.0 % FLOPs)" in text
    assert "more than the paper's x1.022 (GPU)" in text            # 1.03 > 23.3 / 22.8
    assert "consistent with the paper's x1.005-1.020 (GPU)" in text  # [0.99, 1.02] overlaps
    assert "protoseg is faster than linear on segnext_t" in text
    assert "ssa and linear on segformer_b0 are not distinguishable" in text
    assert "NOT reached" in text
    assert "batch 1, 512x512, fp32, cpu (x86_64), 1 threads, trained weights" in text
    assert "2026-12-03 09:00 UTC" in text and "120 rounds" in text
    assert "load average 7.5 -> 8.3" in text
    table = paired_latency_table(results, published)
    assert len(table) == 6 and set(table.classifier) == {"linear", "ssa", "protoseg"}
    assert paired_latency_section([], published) == ""


def test_report_writes_the_section_and_its_csv(tmp_path, monkeypatch):
    from ssaseg import report
    from tests.test_report_atomic import fake_runs, quick_plots

    monkeypatch.setattr(report, "_plots", quick_plots)
    runs = fake_runs(tmp_path)
    paired = tmp_path / "paired_latency.json"
    paired.write_text(json.dumps(_result("synthetic", "segformer_b0",
                                         (103.0, 1.03, 1.02, 1.04, 1.01, "above"),
                                         (120.0, 1.2, 1.18, 1.22, 1.3, "below"))))
    out = tmp_path / "report"
    build_report(runs, out, None, [paired])
    summary = (out / "summary.md").read_text()
    assert summary.index("| synthetic | segformer_b0 | linear |") < summary.index(
        "## Paired latency")
    assert "| synthetic | segformer_b0 | ssa | 103.00 | 1.0300 [1.0200, 1.0400] |" in summary
    table = pd.read_csv(out / "paired_latency.csv")
    assert list(table.classifier) == ["linear", "ssa", "protoseg"]
    assert table.set_index("classifier").loc["ssa", "floor_verdict"] == "above"
    # no paired results: the section is absent and the CSV has its header only
    build_report(runs, tmp_path / "plain")
    assert "Paired latency" not in (tmp_path / "plain/summary.md").read_text()
    assert (tmp_path / "plain/paired_latency.csv").read_text().startswith("dataset,model,")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ssaseg", *args], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ,
                                                       "HF_HUB_OFFLINE": "1"})


def test_cli_untrained_writes_result_and_missing_weights_exit_2(tmp_path):
    params = miniature_params(tmp_path)
    params["classifiers"] = {"linear": {}, "ssa": {}}
    params["profile"]["input_size"] = [32, 32]
    params["paired_latency"] = {"warmup": 0, "min_rounds": 2, "max_rounds": 2}
    path = write_params(tmp_path / "mini.yaml", params)
    assert _cli("prepare", "--params", str(path), "--dataset", "synthetic").returncode == 0
    missing = _cli("profile-latency", "--params", str(path), "--dataset", "synthetic",
                   "--model", "segformer_b0")
    assert missing.returncode == 2
    assert "model.pt does not exist" in missing.stderr and "--untrained" in missing.stderr
    done = _cli("profile-latency", "--params", str(path), "--dataset", "synthetic",
                "--model", "segformer_b0", "--untrained")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results/mini/synthetic/segformer_b0"
    result = json.loads((out / "paired_latency.json").read_text())
    assert result["rounds"] == 2 and set(result["classifiers"]) == {"linear", "ssa"}
    assert result["run"]["weights"] == "untrained"
    assert result["classifiers"]["ssa"]["flops_ratio"] > 1.0
    assert len(result["times_ms"]["ssa"]) == 2
    assert (out / "paired_latency.csv").read_text().count("\n") == 3


def _dry_run(tmp_path, classifiers, models=("segformer_b0",)):
    params = miniature_params(tmp_path)
    params["classifiers"] = {c: {} for c in classifiers}
    params["models"] = list(models)
    path = write_params(tmp_path / "mini.yaml", params)
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(path), "--cores", "3"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _rule_blocks(out: str, rule: str) -> list[str]:
    return [b for b in re.split(r"\n(?=rule |localrule )", out) if b.startswith(f"rule {rule}:")]


def test_dry_run_schedules_one_paired_job_per_baseline_alone_on_the_machine(tmp_path):
    out = _dry_run(tmp_path, ["linear", "ssa", "protoseg"], models=["segformer_b0",
                                                                    "fcn_resnet18"])
    blocks = _rule_blocks(out, "profile_paired_latency")
    assert len(blocks) == 2
    for block in blocks:
        model = re.search(r"model=(\w+)", block).group(1)
        for clf in ("linear", "ssa", "protoseg"):   # every classifier's trained weights
            assert f"synthetic/{model}/{clf}/seed0/model.pt" in block
        assert re.search(r"threads: 3\b", block)      # every core: nothing runs beside it
        assert "gpu=1" in block                       # on Slurm: one job on one GPU
        assert f"--model {model} --seed 0" in block and "profile-latency" in block
    report = _rule_blocks(out, "build_report")
    assert len(report) == 1
    for model in ("segformer_b0", "fcn_resnet18"):
        assert f"results/mini/synthetic/{model}/paired_latency.json" in report[0]
    assert "reports/mini/paired_latency.csv" in report[0]


def test_dry_run_without_a_second_classifier_has_no_paired_job(tmp_path):
    out = _dry_run(tmp_path, ["linear"])
    assert not _rule_blocks(out, "profile_paired_latency")
    assert "paired_latency.json" not in out


def test_the_plot_places_each_run_at_its_paired_latency_where_measured():
    from ssaseg.report import plot_latency

    table = pd.DataFrame({"dataset": ["d"] * 3, "model": ["a", "a", "b"],
                          "classifier": ["linear", "ssa", "linear"],
                          "latency_ms": [100.0, 90.0, 50.0]})  # per-run jobs: ssa "faster"
    paired = pd.DataFrame({"dataset": ["d", "d"], "model": ["a", "a"],
                           "classifier": ["linear", "ssa"], "median_ms": [101.0, 108.0]})
    latency, label = plot_latency(table, paired)
    assert latency == [101.0, 108.0, 50.0] and "where measured" in label
    latency, label = plot_latency(table.iloc[:2], paired)
    assert latency == [101.0, 108.0] and label.startswith("latency (ms, paired median")
    latency, label = plot_latency(table, None)
    assert latency == [100.0, 90.0, 50.0] and "own job" in label
