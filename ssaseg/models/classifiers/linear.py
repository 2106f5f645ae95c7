"""The vanilla classifier every baseline ships with: dropout, then a 1x1 convolution."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.models.classifiers.base import ClassifierOutput
from ssaseg.models.losses import segmentation_cross_entropy


class LinearClassifier(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ignore_index: int = 255,
        dropout: float = 0.1,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feature: torch.Tensor, labels: torch.Tensor | None = None) -> ClassifierOutput:
        logits = self.conv(self.dropout(feature))  # (B, K, h, w)
        losses = {}
        if labels is not None and self.training:
            losses["ce"] = self.loss_weight * segmentation_cross_entropy(
                logits, labels, self.ignore_index
            )
        return ClassifierOutput(logits, losses)
