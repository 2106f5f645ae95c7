"""The contract every pixel classifier fulfils.

A classifier turns the decode head's feature map into per-class logits. It never knows which
head fed it. In training it also receives the labels (at input resolution) and returns its own
named, already weighted loss terms; the total loss is their sum.

    classifier(feature, labels=None) -> ClassifierOutput
        feature: (B, C, h, w) float, the head's output (before any dropout)
        labels:  (B, H, W) int64 at input resolution, ``ignore_index`` marks unlabelled pixels
        logits:  (B, K, h, w) at feature resolution (the Segmentor upsamples for inference)
        losses:  {name: scalar tensor}, empty when labels is None or in eval mode
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, K, h, w)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
