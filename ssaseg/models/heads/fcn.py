"""FCN head: a stack of 3x3 ConvBNReLU on the last (dilated) stage, optionally fused with its
input."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU


class FCNHead(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        in_index: int = -1,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        c_in = in_channels[in_index]
        self.convs = nn.Sequential(
            *(ConvBNReLU(c_in if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.fuse = ConvBNReLU(c_in + channels, channels, 3) if concat_input else None
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        x = features[self.in_index]
        out = self.convs(x)
        if self.fuse is not None:
            out = self.fuse(torch.cat([x, out], dim=1))
        return HeadOutput(out)
