"""The report's statistical sections (ssaseg/report_analysis.py) on hand-made runs: a clear gain
is marked as excluding zero, no gain is not; per-class deltas sorted; the frequency split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssaseg.report import build_report, collect
from ssaseg.report_analysis import frequency_split, paired_differences, per_class_deltas

CLASSES = ["a", "b", "c", "d", "e", "f"]


def write_run(root: Path, classifier: str, seed: int, gain: float, rng) -> Path:
    """A run's files as the pipeline writes them; ``gain`` raises the intersection of every
    class by that share of its union."""
    run_dir = root / "results" / classifier / f"seed{seed}"
    run_dir.mkdir(parents=True)
    n = 30
    union = rng.integers(50, 150, (n, len(CLASSES)))
    inter = np.floor(union * np.clip(rng.uniform(0.4, 0.6, union.shape) + gain, 0, 1))
    inter = inter.astype(np.int64)
    np.savez(run_dir / "per_image_counts.npz", intersection=inter, union=union,
             label_pixels=union)
    iou = inter.sum(0) / union.sum(0)
    (run_dir / "eval.json").write_text(json.dumps({
        "run": {"dataset": "synthetic", "model": "segformer_b0", "classifier": classifier,
                "seed": seed},
        "miou": float(iou.mean()), "pixel_accuracy": 0.8,
        "per_class": [{"class": c, "iou": float(v), "accuracy": 0.5}
                      for c, v in zip(CLASSES, iou)]}))
    (run_dir / "profile.json").write_text(json.dumps({
        "params_total": 3.8e6, "params_deployed": 3.7e6, "flops_mmcv": 8.4e9,
        "flops_full": 16.0e9, "latency_ms_median": 12.5,
        "conditions": {"batch_size": 1, "input_size": [64, 64], "precision": "fp32",
                       "device": "cpu", "warmup": 1, "repeats": 2}}))
    with open(run_dir / "train_log.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iter", "loss"])
        writer.writerows([[i, 2.0 / i] for i in range(1, 7)])
    return run_dir


def make_runs(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    gains = {"linear": 0.0, "ssa": 0.1, "protoseg": 0.0}
    return [write_run(tmp_path, c, s, g, rng) for c, g in gains.items() for s in range(3)]


def test_a_clear_gain_excludes_zero_and_no_gain_does_not(tmp_path):
    runs = collect(make_runs(tmp_path))
    diffs = paired_differences(runs, n_resamples=500).set_index("classifier")
    ssa, proto = diffs.loc["ssa"], diffs.loc["protoseg"]
    assert 8 < ssa.delta_seeds < 12 and ssa.delta_seeds_excludes_zero
    assert ssa.delta_images_low > 0 and ssa.delta_images_excludes_zero
    assert ssa.delta_images_text.endswith("]*")
    assert proto.delta_images_low < 0 < proto.delta_images_high
    assert not proto.delta_images_excludes_zero and not proto.delta_images_text.endswith("*")
    assert ssa.seeds == 3 and ssa.images == 30


def test_per_class_deltas_and_frequency_split(tmp_path):
    runs = collect(make_runs(tmp_path))
    deltas = per_class_deltas(runs)
    ssa = deltas[deltas.classifier == "ssa"]
    assert list(ssa["class"]) == CLASSES and (ssa.delta_iou > 5).all()
    freq = frequency_split(runs, {"synthetic": [600, 500, 40, 30, 2, 1]}, n_resamples=300)
    rows = freq[freq.classifier == "ssa"].set_index("classes")
    assert list(rows.index) == ["frequent", "common", "rare"]
    assert rows.num_classes.tolist() == [2, 2, 2]
    assert rows.loc["frequent", "train_pixel_share"] > 90
    assert (rows.delta_images > 5).all()


def test_the_report_shows_the_intervals_and_the_plot(tmp_path):
    out = tmp_path / "reports"
    build_report(make_runs(tmp_path), out, train_pixels={"synthetic": [6, 5, 4, 3, 2, 1]})
    summary = (out / "summary.md").read_text()
    assert "Δ vs linear (seeds)" in summary and "Δ vs linear (images)" in summary
    assert "## Paired differences" in summary and "by class frequency" in summary
    assert "median" not in summary.split("## Paired")[0].split("|---")[0]
    table = pd.read_csv(out / "summary.csv")
    assert {"miou", "miou_sd", "delta_vs_linear_seeds", "delta_vs_linear_images"} <= set(table)
    assert (out / "per_class_delta.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(out / "paired_differences.csv")) == 2
