"""The contract every decode head fulfils. A head never classifies.

    head(features) -> HeadOutput
        features: list of backbone feature maps, (B, C_i, H/s_i, W/s_i), in the order of
                  ``backbone.out_channels`` / ``backbone.out_strides``
        feature:  ONE map (B, head.out_channels, h, w) handed to the classifier
        aux_logits: optional (B, K, h', w') logits of an *auxiliary* prediction that is part of
                  the head's architecture (e.g. OCR's soft object regions); supervised by the
                  Segmentor with an auxiliary cross-entropy, never used as the output.

A head constructor takes ``in_channels: list[int]``, ``in_strides: list[int]``,
``num_classes: int`` (only heads with an auxiliary prediction use it) and its own keyword
arguments, and sets ``self.out_channels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutput:
    feature: torch.Tensor  # (B, C, h, w)
    aux_logits: torch.Tensor | None = None  # (B, K, h', w')
