"""Loading an official checkpoint into one of our own backbones.

Every checkpoint is read on the CPU with ``weights_only=True`` (plain tensors, no pickled code),
unwrapped from the training-script envelope it came in (``state_dict``, ``state_dict_ema``,
``model``), and its keys renamed by the backbone's own mapping. Any key left over on either side,
or a tensor of the wrong shape, is an error that names every such key: a checkpoint is loaded
completely or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

# Training scripts save {"state_dict": ...}, {"model": ...} or timm's
# {"state_dict": ..., "state_dict_ema": ...}; the first key found wins.
DEFAULT_ENVELOPE_KEYS: tuple[str, ...] = ("state_dict", "model")
# Prefixes a whole-model or DataParallel checkpoint puts in front of backbone keys.
STRIPPED_PREFIXES: tuple[str, ...] = ("module.", "backbone.")
# BatchNorm's step counter is bookkeeping, not a weight: classification checkpoints written
# without it (or with it) load either way.
OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys (after renaming) do not match the module's parameters."""


def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {path} not found; run `python -m ssaseg fetch-weights` "
            "or set the model's weights to null to train from scratch"
        )
    return path


def read_state_dict(
    path: str | Path, envelope_keys: Sequence[str] = DEFAULT_ENVELOPE_KEYS
) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict inside a checkpoint file, prefixes stripped."""
    checkpoint = torch.load(require_file(path), map_location="cpu", weights_only=True)
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
        lines = [f"{source} does not match {type(module).__name__}:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointMismatchError("\n".join(lines))
    module.load_state_dict(renamed, strict=False)  # strictness checked above
