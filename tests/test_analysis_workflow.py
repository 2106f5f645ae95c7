"""The analyses of params/analysis.yaml end to end through Snakemake on a miniature params file:
the report renders every new table and plot (paired differences, per-class delta, frequency
split, shift sweep, corruptions, controls/ablations, cost, probes and t-SNE)."""

import pytest

from tests.conftest import miniature_params, write_params
from tests.test_workflow import _snakemake

pytest.importorskip("imagecorruptions")
pytest.importorskip("sklearn")


def test_analysis_report_has_every_section(tmp_path):
    from ssaseg.config import load_params

    params = miniature_params(tmp_path)
    params["datasets"]["synthetic"]["options"]["class_shift"] = 0.05
    params["classifiers"] = {"linear": {}, "ssa": {}, "ssa-no_dice": {"dice_weight": 0.0}}
    params["train"]["iters"] = 4
    params["evaluate"] = {"num_workers": 0}
    params["analysis"] = {"classifiers": ["linear", "ssa"], "shift_sweep": [0.0, 0.3],
                          "corruptions": ["fog"], "severities": [1], "probes": True}
    path = write_params(tmp_path / "analysis.yaml", params)
    load_params(path)  # valid
    result = _snakemake(tmp_path, path, timeout=1800)  # 19 steps; minutes on a busy machine
    assert result.returncode == 0, result.stderr[-4000:]
    report = tmp_path / "reports" / "mini"
    for name in ("paired_differences.csv", "per_class_delta.png", "delta_by_frequency.csv",
                 "miou_vs_shift.png", "shift_sweep.csv", "corruptions.csv", "ablations.csv",
                 "cost.csv", "probes.csv", "intra_class_shift.png",
                 "tsne_synthetic_segformer_b0_ssa_seed0.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    summary = (report / "summary.md").read_text()
    for section in ("## Paired differences", "by class frequency", "## Controls and ablations",
                    "## Cost", "## mIoU against the per-class appearance shift",
                    "## Common corruptions", "## Mechanism probes"):
        assert section in summary, section
    assert "| ssa-no_dice | dice_weight=0.0 |" in summary
    run = tmp_path / "results/mini/synthetic/segformer_b0/ssa/seed0"
    assert (run / "per_image_counts.npz").is_file() and (run / "train_cost.json").is_file()


def test_analysis_params_plan_every_analysis(tmp_path):
    """params/analysis.yaml: 15 classifiers (4 + 11 ablations) x 3 seeds trained; the shift
    sweep for every seed of the 4 main classifiers, corruptions and probes for seed 0."""
    from tests.conftest import REPO
    from tests.test_workflow import _planned_jobs

    result = _snakemake(tmp_path, REPO / "params" / "analysis.yaml", "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _planned_jobs(result)
    assert counts["train_model"] == 45 and counts["evaluate_model"] == 45, counts
    assert counts["evaluate_shift"] == 12 and counts["evaluate_corruptions"] == 4, counts
    assert counts["probe_model"] == 4 and counts["count_pixels"] == 1, counts
