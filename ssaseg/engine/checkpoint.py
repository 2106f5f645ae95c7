"""Training checkpoints (resumable) and the final model file, written atomically.

A checkpoint holds only tensors and plain types (dict, list, tuple, str, int, float, bool,
None): :func:`save` refuses anything else, naming where it sits, and :func:`load` reads every
file with ``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and
refuses any other pickled object. Loading a checkpoint from someone else therefore cannot
run code; one that holds more is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ssaseg import atomic_io
from ssaseg.errors import CheckpointError, MissingFileError, load_failure

__all__ = ["CheckpointError", "LAST", "last_checkpoint", "load", "save"]

LAST = "last.pt"
_PLAIN = (str, int, float, bool, type(None))


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps its resumable state: ``<run_dir>/checkpoints/last.pt``."""
    return Path(run_dir) / "checkpoints" / LAST


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(value).__module__}."
                    f"{type(value).__qualname__}; store tensors and plain types only (it could "
                    "not be loaded with weights_only=True)")


def save(path: str | Path, state: dict[str, Any]) -> None:
    _check_plain(state, "state")
    with atomic_io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found: train this run first "
                               "(`python -m ssaseg train` with the same arguments)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a refused object: unreadable bytes
            raise CheckpointError(f"cannot load checkpoint {path}: {load_failure(exc)}; it is "
                                  "corrupt: delete it to start over") from exc
        what = f"a pickled {found.group(1)}"
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds {what}, not only tensors and plain types, "
            "and unpickling it could run code; ssaseg writes no such file (it was made "
            "elsewhere or tampered with): delete it, or retrain"
        ) from exc
    except Exception as exc:  # torch raises several types for a truncated/corrupt file
        raise CheckpointError(
            f"cannot load checkpoint {path}: {load_failure(exc)}; delete it to start over"
        ) from exc
