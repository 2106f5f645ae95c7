"""Decode heads by name: a dict from name to constructor (see base.py for the contract)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssaseg.models.heads.all_mlp import AllMLPHead
from ssaseg.models.heads.fcn import FCNHead

HEADS: dict[str, Callable[..., nn.Module]] = {
    "all_mlp": AllMLPHead,
    "fcn": FCNHead,
}
