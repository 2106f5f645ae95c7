"""Backbone -> head -> classifier: the only model object the engine sees."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ssaseg.models.losses import resize_logits, segmentation_cross_entropy


@dataclass
class SegmentorOutput:
    logits: torch.Tensor  # (B, K, h, w), feature resolution
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total_loss(self) -> torch.Tensor:
        return sum(self.losses.values())  # type: ignore[return-value]


class Segmentor(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        classifier: nn.Module,
        ignore_index: int = 255,
        aux_loss_weight: float = 0.4,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classifier = classifier
        self.ignore_index = ignore_index
        self.aux_loss_weight = aux_loss_weight

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> SegmentorOutput:
        """images (B, 3, H, W); labels (B, H, W) in training. Losses only when training."""
        head_out = self.head(self.backbone(images))
        out = self.classifier(head_out.feature, labels if self.training else None)
        losses = dict(out.losses)
        if self.training and labels is not None and head_out.aux_logits is not None:
            losses["aux_ce"] = self.aux_loss_weight * segmentation_cross_entropy(
                head_out.aux_logits, labels, self.ignore_index
            )
        return SegmentorOutput(out.logits, losses)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) at the input resolution, fp32."""
        return resize_logits(self(images).logits.float(), images.shape[-2:])


class MaskClassificationSegmentor(Segmentor):
    """Backbone -> mask-classification head (Mask2Former) -> mask-classification classifier
    (``ssaseg/models/classifiers/mask_classification.py``): the classifier receives the head's
    per-pixel embedding *and* its per-query predictions, and computes every loss."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> SegmentorOutput:
        head_out = self.head(self.backbone(images))
        out = self.classifier(head_out.feature, head_out.mask_predictions,
                              labels if self.training else None)
        return SegmentorOutput(out.logits, dict(out.losses))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (B, K, H, W) at the input resolution, fp32 (the classifier decides how:
        Mask2Former's own inference upsamples the masks before combining them)."""
        head_out = self.head(self.backbone(images))
        return self.classifier.predict(head_out.feature, head_out.mask_predictions,
                                       tuple(images.shape[-2:]))
