"""Training checkpoints (resumable) and the final model file, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssaseg import atomic_io

LAST = "last.pt"


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps its resumable state: ``<run_dir>/checkpoints/last.pt``."""
    return Path(run_dir) / "checkpoints" / LAST


def save(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for a truncated/corrupt file
        raise RuntimeError(f"cannot load checkpoint {path}: {exc}; delete it to start over") from exc
