"""The Snakemake workflow end to end on a miniature params file, in a temporary directory."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, miniature_params, write_params

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(workdir, params_file, *extra, timeout=900):
    return subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(params_file), "--cores", "2", *extra],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflow")
    params = miniature_params(tmp)
    params["classifiers"] = {"linear": {}, "ssa": {}}
    params_file = write_params(tmp / "mini.yaml", params)
    first = _snakemake(tmp, params_file)
    assert first.returncode == 0, first.stderr[-4000:]
    return tmp, params, params_file


def test_workflow_produces_the_report(pipeline_run):
    tmp, params, _ = pipeline_run
    report = tmp / "reports" / "mini"
    for name in ("summary.md", "summary.csv", "miou_vs_latency.png", "loss_curves.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0
    summary = (report / "summary.md").read_text()
    assert "| synthetic | segformer_b0 | linear |" in summary
    assert "| synthetic | segformer_b0 | ssa |" in summary
    assert "Latency conditions: batch 1, 64x64, fp32" in summary
    # the paired latency of the baseline: both classifiers' trained weights, in one process
    assert "## Paired latency (ratio to linear)" in summary
    assert "| synthetic | segformer_b0 | ssa |" in summary.split("## Paired latency")[1]
    paired = json.loads((tmp / "results/mini/synthetic/segformer_b0/paired_latency.json")
                        .read_text())
    assert paired["run"]["weights"] == "trained" and set(paired["classifiers"]) == {"linear",
                                                                                    "ssa"}
    assert (report / "paired_latency.csv").read_text().count("\n") == 3
    assert (tmp / "logs/mini/paired_latency/synthetic/segformer_b0.log").is_file()
    for clf in ("linear", "ssa"):
        ev = json.loads((tmp / "results/mini/synthetic/segformer_b0" / clf / "seed0/eval.json")
                        .read_text())
        assert 0.0 <= ev["miou"] <= 1.0 and len(ev["per_class"]) == 10
    assert (tmp / "logs/mini/train/synthetic/segformer_b0/linear/seed0.log").is_file()


def test_rerun_with_nothing_changed_does_nothing(pipeline_run):
    tmp, _, params_file = pipeline_run
    before = {p: p.stat().st_mtime_ns for p in (tmp / "reports" / "mini").iterdir()}
    again = _snakemake(tmp, params_file)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp / "reports" / "mini").iterdir()} == before


def test_mlflow_holds_one_run_per_model_classifier_seed(pipeline_run):
    from mlflow.tracking import MlflowClient

    tmp, params, _ = pipeline_run
    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["segformer_b0/linear/seed0",
                                                     "segformer_b0/ssa/seed0"]
    for run in runs:
        run_dir = tmp / "results/mini/synthetic" / run.info.run_name.replace("/seed", "/seed")
        assert (run_dir / "mlflow_run_id.txt").read_text().strip() == run.info.run_id
        data = run.data
        assert data.params["train.iters"] == "6" and data.params["model"] == "segformer_b0"
        assert {"git_commit", "config_hash", "device"} <= set(data.tags)
        # the precision switch and what it meant on this machine (auto: fp32 on the CPU)
        assert data.params["train.amp"] == "auto" and data.tags["precision"] == "fp32"
        for metric in ("loss", "miou", "pixel_accuracy", "latency_ms_median", "flops_full",
                       "params_total", "peak_memory_mb", "latency_ratio_vs_linear",
                       "latency_ratio_vs_linear_low", "flops_ratio_vs_linear"):
            assert metric in data.metrics, metric
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 6  # one per step
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"per_class_iou.csv", "eval.json", "profile.json", "train_log.csv"} <= artifacts
    ssa = next(r for r in runs if r.info.run_name.endswith("ssa/seed0"))
    assert any(k.startswith("loss/") and "distill" in k for k in ssa.data.metrics)


def test_bad_params_stop_the_workflow_before_any_job(tmp_path):
    params = miniature_params(tmp_path)
    params["train"]["iters"] = "many"
    result = _snakemake(tmp_path, write_params(tmp_path / "bad.yaml", params), "-n")
    assert result.returncode != 0
    assert "'many' is not of type 'integer'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def _planned_jobs(result) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    lines = (result.stdout + result.stderr).split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_a_params_edit_reruns_exactly_the_runs_it_affects(pipeline_run):
    tmp, params, _ = pipeline_run
    edited = dict(params, classifiers={"linear": {}, "ssa": {"dropout": 0.2}})
    result = _snakemake(tmp, write_params(tmp / "edited.yaml", edited), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _planned_jobs(result)
    assert counts.get("train_model") == 1 and "prepare_dataset" not in counts, counts
    assert "classifier=ssa" in result.stdout and "classifier=linear" not in result.stdout


def test_another_experiment_on_the_same_data_does_not_prepare_it_again(pipeline_run):
    tmp, params, _ = pipeline_run
    other = dict(params, name="other", seeds=[1])
    result = _snakemake(tmp, write_params(tmp / "other.yaml", other), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _planned_jobs(result)
    assert "prepare_dataset" not in counts and counts.get("train_model") == 2, counts
