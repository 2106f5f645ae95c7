"""SegFormer's all-MLP decode head: project every stage to one width, upsample to the finest
stage, concatenate, fuse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU


class AllMLPHead(nn.Module):
    def __init__(
        self, in_channels: list[int], in_strides: list[int], num_classes: int, channels: int = 256
    ) -> None:
        super().__init__()
        self.project = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels)
        self.fuse = ConvBNReLU(channels * len(in_channels), channels, 1)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        size = features[0].shape[-2:]
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.project, features)
        ]
        return HeadOutput(self.fuse(torch.cat(projected, dim=1)))  # (B, channels, H/4, W/4)
