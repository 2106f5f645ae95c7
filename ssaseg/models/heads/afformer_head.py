"""AFFormer's head ("head-free"): a single 1x1 ConvGNReLU on the backbone's last map (stride 8),
which already fuses the local and global paths.

The reference head (``CLS`` in aff_head.py) also builds an ``align`` ConvModule that its forward
never calls; it has no effect on the output and is left out here (66 k parameters at 256
channels, which the published parameter count includes).
"""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.light_ham import ConvGNReLU


class AFFormerHead(nn.Module):
    """Reference settings for AFFormer-B: the last map (216 channels), channels 256, GN(32)."""

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        in_index: int = -1,
        channels: int = 256,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.squeeze = ConvGNReLU(in_channels[in_index], channels, num_groups)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        return HeadOutput(self.squeeze(features[self.in_index]))  # (B, channels, H/8, W/8)
