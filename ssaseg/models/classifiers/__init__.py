"""Pixel classifiers by name. Each constructor takes (in_channels, num_classes, ignore_index,
**params-from-config) and returns a module honouring :mod:`ssaseg.models.classifiers.base`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssaseg.errors import UnknownNameError
from ssaseg.models.classifiers.linear import LinearClassifier
from ssaseg.models.classifiers.protoseg import ProtoSegClassifier
from ssaseg.models.classifiers.ssa import SSAClassifier

CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearClassifier,
    "ssa": SSAClassifier,
    "protoseg": ProtoSegClassifier,
}


def build_classifier(
    name: str, in_channels: int, num_classes: int, ignore_index: int, **params
) -> nn.Module:
    if name not in CLASSIFIERS:
        known = ", ".join(sorted(CLASSIFIERS))
        raise UnknownNameError(f"unknown classifier {name!r}; known classifiers: {known}")
    return CLASSIFIERS[name](
        in_channels=in_channels, num_classes=num_classes, ignore_index=ignore_index, **params
    )
