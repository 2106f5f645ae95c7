"""The contract every decode head fulfils. A head never classifies.

    head(features) -> HeadOutput
        features: list of backbone feature maps, (B, C_i, H/s_i, W/s_i), in the order of
                  ``backbone.out_channels`` / ``backbone.out_strides``
        feature:  ONE map (B, head.out_channels, h, w) handed to the classifier
        aux_logits: optional (B, K, h', w') logits of an *auxiliary* prediction that is part of
                  the head's architecture (e.g. OCR's soft object regions); supervised by the
                  Segmentor with an auxiliary cross-entropy, never used as the output.

A mask-classification head (Mask2Former) also returns ``mask_predictions``: per decoder stage,
every *query's* class logits (K classes + "no object") and mask logits over ``feature``'s grid
(its decoder needs them at every layer: they are its attention masks). Its ``feature`` is the
per-pixel embedding the masks are computed from. Pixels are still classified by the classifier
that receives both (``models/classifiers/mask_classification.py``).

A head constructor takes ``in_channels: list[int]``, ``in_strides: list[int]``,
``num_classes: int`` (only heads with an auxiliary prediction or query classes use it) and its own keyword
arguments, and sets ``self.out_channels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskPredictions:
    """One (class logits, mask logits) pair per decoder stage, the last one the final."""

    class_logits: list[torch.Tensor]  # per stage (B, Q, K + 1), the last column "no object"
    mask_logits: list[torch.Tensor]  # per stage (B, Q, h, w), on the grid of HeadOutput.feature


@dataclass
class HeadOutput:
    feature: torch.Tensor  # (B, C, h, w)
    aux_logits: torch.Tensor | None = None  # (B, K, h', w')
    mask_predictions: MaskPredictions | None = None  # mask-classification heads only
