"""``python -m ssaseg report`` writes a report whole or not at all: a fault at the write of one
file leaves the previous report as it was, and outputs that did not change keep their mtime."""

from __future__ import annotations

import csv
import errno
import json
import pathlib
from pathlib import Path

import pytest

from ssaseg import report
from ssaseg.report import build_report


def quick_plots(runs, table, *args, **kwargs) -> dict[str, bytes]:
    """Plots as bytes that follow the tables (matplotlib takes seconds; test_workflow draws
    the real ones): what these tests check is how the files are written."""
    return {"miou_vs_latency.png": table.to_csv().encode(), "loss_curves.png": b"losses"}


@pytest.fixture(autouse=True)
def _quick_plots(monkeypatch):
    monkeypatch.setattr(report, "_plots", quick_plots)


def fake_runs(root: Path, miou: float = 0.40) -> list[Path]:
    """Two runs' eval.json, profile.json and train_log.csv, as the pipeline writes them."""
    runs = []
    for classifier, delta in (("linear", 0.0), ("ssa", 0.02)):
        run_dir = root / "results" / classifier
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "eval.json").write_text(json.dumps({
            "run": {"dataset": "synthetic", "model": "segformer_b0", "classifier": classifier,
                    "seed": 0},
            "miou": miou + delta, "pixel_accuracy": 0.8}))
        (run_dir / "profile.json").write_text(json.dumps({
            "params_total": 3.8e6, "params_deployed": 3.7e6, "flops_mmcv": 8.4e9,
            "flops_full": 16.0e9, "latency_ms_median": 12.5,
            "conditions": {"batch_size": 1, "input_size": [64, 64], "precision": "fp32",
                           "device": "cpu", "warmup": 1, "repeats": 2}}))
        with open(run_dir / "train_log.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["iter", "loss"])
            writer.writerows([[i, 2.0 / i] for i in range(1, 7)])
        runs.append(run_dir)
    return runs


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_fault_between_two_files_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "reports" / "mini"
    build_report(fake_runs(tmp_path, miou=0.1234), out)
    before = snapshot(out)
    assert "12.34" in before["summary.md"][0].decode()

    runs = fake_runs(tmp_path, miou=0.1636)  # new results: every table changes
    real_write_bytes = pathlib.Path.write_bytes
    writes = []

    def disk_full_at_the_second_file(self, data):
        if tmp_path / "reports" in Path(self).parents:
            writes.append(Path(self).name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full_at_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        build_report(runs, out)
    assert len(writes) == 2
    assert snapshot(out) == before  # neither half of the new report shows
    assert sorted(p.name for p in out.parent.iterdir()) == ["mini"]  # no temporary left

    monkeypatch.setattr(pathlib.Path, "write_bytes", real_write_bytes)
    changed = build_report(runs, out)
    after = snapshot(out)
    assert "16.36" in after["summary.md"][0].decode()
    assert "16.36" in after["summary.csv"][0].decode()
    assert {p.name for p in changed} == {"summary.md", "summary.csv", "runs.csv",
                                         "miou_vs_latency.png"}
    # the loss curves did not change: same file, same mtime (Snakemake sees nothing new)
    assert after["loss_curves.png"] == before["loss_curves.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["mini"]


def test_nothing_changed_rewrites_nothing(tmp_path):
    out = tmp_path / "reports" / "mini"
    runs = fake_runs(tmp_path)
    build_report(runs, out)
    (out / "notes.txt").write_text("a file the report does not write is kept\n")
    before, inode = snapshot(out), out.stat().st_ino
    assert build_report(runs, out) == []
    assert snapshot(out) == before and out.stat().st_ino == inode
    fake_runs(tmp_path, miou=0.5)
    build_report(runs, out)
    assert (out / "notes.txt").read_text().startswith("a file the report does not write")


def test_a_report_directory_with_folders_is_refused(tmp_path):
    from ssaseg.config import ConfigError

    out = tmp_path / "reports"
    (out / "mini").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds the folder\(s\) \['mini'\]"):
        build_report(fake_runs(tmp_path), out)
    assert (out / "mini").is_dir() and not list(out.glob("summary*"))
