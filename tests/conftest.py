"""Test-wide settings: never reach a model hub; small thread counts on the shared 2-core CI."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def miniature_params(tmp_path: Path, **sections) -> dict:
    """A params mapping for runs that finish in seconds, rooted in ``tmp_path``."""
    params = {
        "name": "mini",
        "results_dir": str(tmp_path / "results"),
        "reports_dir": str(tmp_path / "reports"),
        "data_dir": str(tmp_path / "data"),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "datasets": {"synthetic": {"options": {"num_train": 12, "num_val": 4, "image_size": 32},
                                   "crop_size": [32, 32]}},
        "models": ["segformer_b0"],
        "classifiers": {"linear": {}},
        "seeds": [0],
        "train": {"iters": 6, "batch_size": 2, "pretrained": False, "checkpoint_every": 3,
                  "log_every": 1, "num_workers": 0,
                  "optimizer": {"lr": 1e-3, "head_lr_mult": 1.0},
                  "schedule": {"warmup_iters": 2}},
        "profile": {"input_size": [64, 64], "warmup": 1, "repeats": 2},
        "paired_latency": {"warmup": 1, "min_rounds": 3, "max_rounds": 4, "check_every": 1},
    }
    for key, value in sections.items():
        params[key] = value
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def mini_params(tmp_path):
    return miniature_params(tmp_path)


def tiny_batch(num_classes: int, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random images and label maps with some ignored (255) pixels."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, h, w, generator=g)
    labels = torch.randint(0, num_classes, (2, h, w), generator=g)
    labels[:, :5] = 255
    return images, labels
