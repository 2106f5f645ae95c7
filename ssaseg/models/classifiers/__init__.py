"""Pixel classifiers by name. Each constructor takes (in_channels, num_classes, ignore_index,
**params-from-config) and returns a module honouring :mod:`ssaseg.models.classifiers.base`.
A variant's name, ``<classifier>-<label>`` (e.g. ``ssa-no_dice``), builds ``<classifier>``
(:func:`ssaseg.config.classifier_kind`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssaseg.errors import UnknownNameError
from ssaseg.config import classifier_kind
from ssaseg.models.classifiers.linear import LinearClassifier
from ssaseg.models.classifiers.linear_control import LinearControlClassifier
from ssaseg.models.classifiers.protoseg import ProtoSegClassifier
from ssaseg.models.classifiers.ssa import SSAClassifier

CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearClassifier,
    "ssa": SSAClassifier,
    "protoseg": ProtoSegClassifier,
    "linear_control": LinearControlClassifier,
}


def build_classifier(
    name: str, in_channels: int, num_classes: int, ignore_index: int, **params
) -> nn.Module:
    name = classifier_kind(name)
    if name not in CLASSIFIERS:
        known = ", ".join(sorted(CLASSIFIERS))
        raise UnknownNameError(f"unknown classifier {name!r}; known classifiers: {known}")
    return CLASSIFIERS[name](
        in_channels=in_channels, num_classes=num_classes, ignore_index=ignore_index, **params
    )
