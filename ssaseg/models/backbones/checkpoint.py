"""Loading an official checkpoint into one of our own backbones.

Every checkpoint is read on the CPU with ``weights_only=True`` (plain tensors, no pickled code),
unwrapped from the training-script envelope it came in (``state_dict``, ``state_dict_ema``,
``model``), and its keys renamed by the backbone's own mapping. Any key left over on either side,
or a tensor of the wrong shape, is an error that names such keys (on one line, at most
``LISTED_KEYS`` of each kind): a checkpoint is loaded completely or not at all. A file that is
not there or cannot be read is a one-line error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ssaseg.errors import CheckpointError, MissingFileError, load_failure

# Training scripts save {"state_dict": ...}, {"model": ...} or timm's
# {"state_dict": ..., "state_dict_ema": ...}; the first key found wins.
DEFAULT_ENVELOPE_KEYS: tuple[str, ...] = ("state_dict", "model")
# Prefixes a whole-model or DataParallel checkpoint puts in front of backbone keys.
STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "backbone.")
# BatchNorm's step counter is bookkeeping, not a weight: classification checkpoints written
# without it (or with it) load either way.
OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)
# Keys named per kind (missing, unexpected, mis-shaped) in a mismatch message; the rest counted.
LISTED_KEYS = 20


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys (after renaming) do not match the module's parameters."""


def mismatch_message(source: str, target: str, missing: Sequence[str],
                     unexpected: Sequence[str], wrong_shape: Sequence[str]) -> str:
    """One line: ``<source> does not match <target>: missing keys (2): a, b; ...``."""
    parts = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", wrong_shape)):
        if keys:
            listed = ", ".join(keys[:LISTED_KEYS])
            more = f" and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
            parts.append(f"{title} ({len(keys)}): {listed}{more}")
    return f"{source} does not match {target}: " + "; ".join(parts)


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"pretrained weights {path} not found; run `python -m ssaseg fetch-weights` "
            "or set the model's weights to null to train from scratch"
        )
    return path


def read_state_dict(
    path: str | Path, envelope_keys: Sequence[str] = DEFAULT_ENVELOPE_KEYS
) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict inside a checkpoint file, prefixes stripped."""
    path = require_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or pickled objects beyond tensors
        raise CheckpointError(f"cannot load weights {path}: {load_failure(exc)}; delete it and "
                              "fetch it again (`python -m ssaseg fetch-weights`)") from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"weights {path} hold a {type(checkpoint).__name__}, not a "
                              "mapping of names to tensors; delete it and fetch it again")
    for key in envelope_keys:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint.items():
        if not isinstance(tensor, torch.Tensor):
            continue  # epoch counters, optimiser hyper-parameters, ...
        for prefix in STRIPPED_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = tensor
    return state


def load_mapped_state_dict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    rename: Callable[[str], str | None],
    source: str = "checkpoint",
) -> None:
    """Load ``state`` into ``module`` after ``rename`` (None drops a key, e.g. a classifier).

    Raises CheckpointMismatchError listing missing keys, unexpected keys and shape mismatches.
    """
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        new_name = rename(name)
        if new_name is not None:
            renamed[new_name] = tensor
    own = module.state_dict()
    missing = sorted(
        k for k in own.keys() - renamed.keys() if not k.endswith(OPTIONAL_SUFFIXES)
    )
    unexpected = sorted(renamed.keys() - own.keys())
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}"
        for k in renamed.keys() & own.keys()
        if renamed[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(mismatch_message(source, type(module).__name__, missing,
                                                       unexpected, wrong_shape))
    module.load_state_dict(renamed, strict=False)  # strictness checked above
