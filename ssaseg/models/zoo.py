"""The baselines: which backbone and which head make each named model.

Add a model by adding an entry to MODELS; nothing else needs to know about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ssaseg.models.backbones import BACKBONES
from ssaseg.models.classifiers import build_classifier
from ssaseg.models.heads import HEADS
from ssaseg.models.segmentor import Segmentor


@dataclass(frozen=True)
class ModelSpec:
    backbone: str  # key of BACKBONES
    head: str  # key of HEADS
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_loss_weight: float = 0.4
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "segformer_b0": ModelSpec(
        backbone="timm", backbone_kwargs=dict(model_name="pvt_v2_b0"),
        head="all_mlp", head_kwargs=dict(channels=256),
        description="SegFormer-B0: MiT-B0 (timm pvt_v2_b0) + all-MLP head",
    ),
    "fcn_resnet18": ModelSpec(
        backbone="timm",
        backbone_kwargs=dict(model_name="resnet18", output_stride=8, out_indices=(1, 2, 3, 4)),
        head="fcn", head_kwargs=dict(channels=128, num_convs=2),
        description="FCN on a dilated (output stride 8) ResNet-18, a small CNN baseline",
    ),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_segmentor(
    model: str,
    classifier: str,
    num_classes: int,
    ignore_index: int = 255,
    classifier_params: dict[str, Any] | None = None,
    weights: str | Path | None = None,
) -> Segmentor:
    """Compose backbone, head and classifier for a named model and classifier."""
    spec = model_spec(model)
    backbone: nn.Module = BACKBONES[spec.backbone](weights=weights, **spec.backbone_kwargs)
    head: nn.Module = HEADS[spec.head](
        in_channels=backbone.out_channels,
        in_strides=backbone.out_strides,
        num_classes=num_classes,
        **spec.head_kwargs,
    )
    clf = build_classifier(
        classifier, head.out_channels, num_classes, ignore_index, **(classifier_params or {})
    )
    return Segmentor(backbone, head, clf, ignore_index, spec.aux_loss_weight)
