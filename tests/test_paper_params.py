"""The paper-table params files (params/*.yaml) and the published results they compare against.

* every params file validates and expands to its runs;
* `snakemake -n --configfile <file>` lists every job of the table (in a temporary copy of the
  workflow, so that nothing is written into the repository): one train/evaluate/profile job per
  (dataset, model, classifier, seed), one download per archive, one prepare per dataset;
* params/published_results.csv names only known datasets, models and classifiers, once each, and
  every run of a paper table that has a published row gets it joined by ``report.summarise``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ssaseg.config import all_runs, load_params, resolve_run
from ssaseg.data.download import archive_paths
from ssaseg.data.prepare import PREPARERS
from ssaseg.models.classifiers import CLASSIFIERS
from ssaseg.models.zoo import MODELS
from ssaseg.report import summarise
from ssaseg.weights import weights_for_model, weights_path

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILES = sorted(p.name for p in (REPO / "params").glob("*.yaml"))
PUBLISHED = REPO / "params" / "published_results.csv"
KEYS = ["dataset", "model", "classifier"]

# The paper tables: file -> (dataset, models, classifiers), as the issue and the papers define them.
SSA_LINEAR = ["linear", "ssa"]
SSA_GENERAL = ["ocrnet_hrnet_w48", "upernet_swin_t", "segformer_b5", "upernet_swin_l"]
SSA_LIGHT = ["afformer_b", "seaformer_b", "segnext_t", "seaformer_l"]
SSA_VIT_ADAPTER = ["upernet_vit_adapter_l"]
SSA_REBUTTAL = ["mask2former_r50"]  # the authors' answer to the reviewers, ADE20K only
PAPER_TABLES = {
    "ade20k.yaml": ("ade20k", SSA_GENERAL + SSA_LIGHT + ["cgrseg_b", "cgrseg_l"]
                    + SSA_VIT_ADAPTER + SSA_REBUTTAL, SSA_LINEAR),
    "coco_stuff10k.yaml": ("coco_stuff10k", SSA_GENERAL + SSA_LIGHT + SSA_VIT_ADAPTER, SSA_LINEAR),
    "pascal_context59.yaml": ("pascal_context59", SSA_GENERAL + SSA_LIGHT + SSA_VIT_ADAPTER,
                              SSA_LINEAR),
    "cityscapes_protoseg.yaml": ("cityscapes", ["hrnet_w48", "fcn_resnet101", "ocrnet_hrnet_w48"],
                                 ["linear", "protoseg"]),
}
# (iterations, crop (h, w), batch, profiled input, classes) per table
TABLE_SETTINGS = {
    "ade20k.yaml": (160_000, (512, 512), 16, (512, 512), 150),
    "coco_stuff10k.yaml": (80_000, (512, 512), 16, (512, 512), 171),
    "pascal_context59.yaml": (80_000, (480, 480), 16, (512, 512), 59),
    "cityscapes_protoseg.yaml": (80_000, (512, 1024), 8, (512, 512), 19),
}

# (amp, eval mode, test scale, size divisor, cat_max_ratio, photometric distortion) per table, as
# the reference configs say (the params files name them)
TABLE_RECIPES = {
    "ade20k.yaml": ("off", "whole", (2048, 512), 32, 0.75, True),
    "coco_stuff10k.yaml": ("off", "whole", (2048, 512), None, 0.75, True),
    "pascal_context59.yaml": ("off", "whole", (520, 520), None, 0.75, True),
    "cityscapes_protoseg.yaml": ("fp16", "whole", (2048, 1024), None, 1.0, False),
}


@functools.cache
def _params(name: str) -> dict:
    """The validated params file (cached: the tests only read it)."""
    return load_params(REPO / "params" / name)


def _table_runs(params: dict) -> list[tuple[str, str, str, int]]:
    """One run per (dataset, model, classifier): seeds do not change the resolved settings."""
    return [run for run in all_runs(params) if run[3] == params["seeds"][0]]


# ----------------------------------------------------------------------------- params files


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_params_file_validates_and_resolves_every_run(name):
    params = _params(name)
    assert all_runs(params)
    for run in _table_runs(params):
        resolve_run(params, *run)  # model_overrides validated per model


def test_the_paper_tables_are_all_there():
    assert set(PAPER_TABLES) <= set(PARAMS_FILES)


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_paper_table_covers_the_published_table(name):
    dataset, models, classifiers = PAPER_TABLES[name]
    iters, crop, batch, profile_size, num_classes = TABLE_SETTINGS[name]
    params = _params(name)
    assert list(params["datasets"]) == [dataset]
    assert sorted(params["models"]) == sorted(models)
    assert sorted(params["classifiers"]) == sorted(classifiers)
    assert params["seeds"] == [0, 1, 2]
    assert params["published"] == "params/published_results.csv"
    assert "inherit" not in params and "include" not in params
    assert len(all_runs(params)) == len(models) * len(classifiers) * 3
    assert set(params["model_overrides"]) == set(models)  # every baseline's own optimiser
    for run in _table_runs(params):
        cfg = resolve_run(params, *run)
        assert cfg.train.iters == iters
        assert cfg.train.batch_size == batch
        assert cfg.train.pretrained is True
        assert cfg.dataset.crop_size == crop
        assert cfg.profile.input_size == profile_size
        assert cfg.profile.num_classes == num_classes
        amp, mode, scale, divisor, cat_max_ratio, photometric = TABLE_RECIPES[name]
        assert cfg.train.amp == amp
        assert (cfg.evaluate.mode, cfg.evaluate.scale, cfg.evaluate.size_divisor) == (
            mode, scale, divisor)
        assert (cfg.dataset.cat_max_ratio, cfg.dataset.photometric_distortion) == (
            cat_max_ratio, photometric)


def test_protoseg_table_turns_on_the_reference_loss_and_classifier():
    """ProtoSeg's ce_weight (both classifiers' segmentation CE) and its bias-free linear conv."""
    from ssaseg.models.classifiers import build_classifier

    params = _params("cityscapes_protoseg.yaml")
    linear = resolve_run(params, "cityscapes", "hrnet_w48", "linear", 0).classifier_params
    protoseg = resolve_run(params, "cityscapes", "hrnet_w48", "protoseg", 0).classifier_params
    assert linear["bias"] is False
    assert linear["class_weight"] == protoseg["class_weight"]
    assert len(linear["class_weight"]) == 19
    assert linear["class_weight"][:3] == [0.8373, 0.9180, 0.8660]
    assert linear["class_weight"][-1] == 1.0507
    clf = build_classifier("linear", 8, 19, 255, **linear)
    assert clf.conv.bias is None and clf.class_weight.shape == (19,)
    assert build_classifier("protoseg", 8, 19, 255, **protoseg).class_weight.shape == (19,)
    ssa_linear = resolve_run(_params("ade20k.yaml"), "ade20k", "segformer_b5", "linear", 0)
    assert ssa_linear.classifier_params == {}  # the constructor defaults: bias, unweighted


def test_baselines_keep_their_reference_optimisers():
    """Spot checks of the reference configs' optimisers after model_overrides."""
    ade = _params("ade20k.yaml")
    coco = _params("coco_stuff10k.yaml")

    def opt(params, model):
        return resolve_run(params, next(iter(params["datasets"])), model, "ssa", 0).train

    ocr = opt(ade, "ocrnet_hrnet_w48")
    assert (ocr.optimizer.name, ocr.optimizer.lr, ocr.optimizer.weight_decay) == ("sgd", 0.01, 5e-4)
    assert (ocr.schedule.power, ocr.schedule.min_lr, ocr.schedule.warmup_iters) == (0.9, 1e-4, 0)
    swin = opt(ade, "upernet_swin_l")
    assert (swin.optimizer.name, swin.optimizer.lr, swin.optimizer.head_lr_mult) == ("adamw", 6e-5, 1.0)
    assert opt(ade, "segformer_b5").optimizer.head_lr_mult == 10.0
    assert opt(ade, "cgrseg_b").optimizer.lr == 1.2e-4
    assert opt(ade, "seaformer_b").optimizer.lr == 2.5e-4
    assert opt(coco, "seaformer_b").optimizer.lr == 2e-4
    assert opt(coco, "seaformer_l").optimizer.lr == 2.5e-4
    aff = opt(ade, "afformer_b").optimizer
    assert (aff.lr, aff.head_lr_mult, aff.norm_weight_decay) == (3e-4, 1.0, 0.01)
    vit = opt(ade, "upernet_vit_adapter_l").optimizer
    assert (vit.lr, vit.weight_decay, vit.layer_decay_rate, vit.head_lr_mult) == (2e-5, 0.05, 0.95, 1.0)
    assert opt(coco, "upernet_vit_adapter_l").optimizer.layer_decay_rate == 0.9
    m2f = opt(ade, "mask2former_r50")
    assert (m2f.optimizer.lr * m2f.optimizer.head_lr_mult, m2f.optimizer.lr) == (1e-4, 1e-5)
    assert (m2f.grad_clip, m2f.schedule.power, m2f.schedule.warmup_iters) == (0.01, 0.9, 0)
    for model in ade["models"]:
        if opt(ade, model).optimizer.name == "adamw" and model != "mask2former_r50":
            sched = opt(ade, model).schedule
            assert (sched.warmup_iters, sched.warmup_ratio, sched.power) == (1500, 1e-6, 1.0)


# ----------------------------------------------------------------------------- dry runs


def _job_counts(stdout: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake dry run, as {rule: count}."""
    block = stdout.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        match = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """`snakemake -n` of every params file, all at once, each in its own copy of the workflow
    (Snakefile, workflow/, profiles/, params/) so that the repository stays untouched."""
    procs = {}
    for name in PARAMS_FILES:
        work = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
        shutil.copy2(REPO / "Snakefile", work / "Snakefile")
        for folder in ("workflow", "profiles", "params"):
            shutil.copytree(REPO / folder, work / folder,
                            ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-n", "--cores", "1",
             "--configfile", f"params/{name}"],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_dry_run_lists_every_job(name, dry_runs):
    result = dry_runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    params = _params(name)
    runs = len(all_runs(params))
    assert runs == (len(params["datasets"]) * len(params["models"]) * len(params["classifiers"])
                    * len(params["seeds"]))
    archives = sum(len(archive_paths(d, Path(params["raw_dir"]) / d)) for d in params["datasets"])
    expected = {
        "train_model": runs, "evaluate_model": runs, "profile_model": runs,
        "prepare_dataset": len(params["datasets"]), "init_tracking": 1, "build_report": 1, "all": 1,
    }
    if archives:
        expected["download_archive"] = archives
    for rule, count in expected.items():
        assert counts.get(rule) == count, f"{rule}: {counts}"


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_dry_run_fetches_every_pretrained_backbone(name, dry_runs):
    result = dry_runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    params = _params(name)
    files = {weights_path(weights_for_model(m), params["weights_dir"]) for m in params["models"]}
    assert _job_counts(result.stdout).get("fetch_weights") == len(files)
    for path in files:
        assert f"output: {path}" in result.stdout


# ----------------------------------------------------------------------------- published results


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED)


def test_published_results_name_known_things_once(published):
    assert list(published.columns) == ["dataset", "model", "classifier", "miou", "latency_ms",
                                       "source"]
    assert not published.duplicated(KEYS).any(), published[published.duplicated(KEYS, keep=False)]
    assert set(published.dataset) <= set(PREPARERS) - {"synthetic"}
    assert set(published.model) <= set(MODELS), set(published.model) - set(MODELS)
    assert set(published.classifier) <= set(CLASSIFIERS)
    assert published.miou.between(0, 100).all()
    assert (published.latency_ms.dropna() > 0).all()
    assert published.source.str.len().gt(10).all()  # every number says where it comes from


def test_every_published_row_belongs_to_a_paper_table(published):
    covered = set()
    for name in PAPER_TABLES:
        params = _params(name)
        covered |= {(d, m, c) for d, m, c, _ in all_runs(params)}
    missing = [k for k in published[KEYS].itertuples(index=False, name=None) if k not in covered]
    assert not missing, f"published rows no params file runs: {missing}"


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_report_joins_the_published_rows(name, published):
    params = _params(name)
    rows = [{"dataset": d, "model": m, "classifier": c, "seed": s,
             "miou": 40.0 + s + (c != "linear"), "params_deployed_m": 10.0, "gflops_mmcv": 5.0,
             "gflops_full": 11.0, "latency_ms": 20.0 + s}
            for d, m, c, s in all_runs(params)]
    runs = pd.DataFrame(rows)
    table = summarise(runs, pd.read_csv(Path(REPO) / params["published"]))
    assert len(table) == len(runs[KEYS].drop_duplicates())  # the join adds no rows
    expected = published.merge(runs[KEYS].drop_duplicates(), on=KEYS)
    assert len(expected) == (published.dataset == next(iter(params["datasets"]))).sum()
    joined = table.set_index(KEYS)
    for row in expected.itertuples(index=False):
        got = joined.loc[(row.dataset, row.model, row.classifier)]
        assert got.published_miou == pytest.approx(row.miou)
        assert got.miou_diff_vs_published == pytest.approx(got.miou - row.miou)
        if pd.isna(row.latency_ms):
            assert pd.isna(got.published_latency_ms)
        else:
            assert got.published_latency_ms == pytest.approx(row.latency_ms)
    unpublished = table[table.published_miou.isna()]
    assert len(unpublished) == len(table) - len(expected)
