"""Every baseline's size matches the published one (params/published_sizes.csv), within 5%.

Measured as the papers did: ADE20K (150 classes), one 512x512 image, GFLOPs in mmcv's
convention (engine/flops.py). Models are built on the meta device: no memory, no compute.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ssaseg.engine.flops import count_flops_mmcv, count_params
from ssaseg.models.classifiers import CLASSIFIERS
from ssaseg.models.zoo import MODELS, build_segmentor

TABLE = Path(__file__).resolve().parents[1] / "params" / "published_sizes.csv"
TOLERANCE = 0.05


def _rows() -> list[dict[str, str]]:
    with open(TABLE, newline="") as handle:
        return list(csv.DictReader(handle))


def _within(measured: float, published: float) -> bool:
    return abs(measured - published) <= TOLERANCE * published


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['model']}-{r['classifier']}")
def test_size_matches_published(row: dict[str, str]) -> None:
    assert row["model"] in MODELS, f"{row['model']} is in {TABLE.name} but not in the zoo"
    if row["classifier"] not in CLASSIFIERS:
        pytest.skip(f"classifier {row['classifier']!r} not registered yet")
    with torch.device("meta"):
        model = build_segmentor(row["model"], row["classifier"], num_classes=150)
        image = torch.empty(1, 3, 512, 512)
    problems = []
    if row["params_m"]:
        params = count_params(model) / 1e6
        if not _within(params, float(row["params_m"])):
            problems.append(f"params {params:.2f} M vs published {row['params_m']} M")
    if row["gflops_mmcv"]:
        gflops = count_flops_mmcv(model, image, **MODELS[row["model"]].mmcv_counting) / 1e9
        if not _within(gflops, float(row["gflops_mmcv"])):
            problems.append(f"GFLOPs {gflops:.2f} vs published {row['gflops_mmcv']}")
    assert not problems, f"{row['model']} + {row['classifier']}: " + "; ".join(problems)


def test_table_is_well_formed() -> None:
    rows = _rows()
    keys = [(r["model"], r["classifier"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (model, classifier) pair appears twice"
    for r in rows:
        assert r["params_m"] or r["gflops_mmcv"], f"{r['model']}: no number to check"
        assert r["source"], f"{r['model']}: the source of the published numbers is missing"
