"""SeaFormer's light segmentation head: the stride-8 detail map is successively multiplied by a
hard-sigmoid gate computed from each coarser (global) map, then a depthwise 1x1 ConvBNReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU


class FusionBlock(nn.Module):
    """``BN(conv(local)) * hsigmoid(up(BN(conv(global))))`` at the local map's resolution."""

    def __init__(self, local_channels: int, global_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.local_embedding = ConvBNReLU(local_channels, embed_dim, 1, act=False)
        self.global_act = ConvBNReLU(global_channels, embed_dim, 1, act=False)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(self.global_act(global_))  # (B, E, h, w), relu6(x + 3) / 6
        gate = F.interpolate(gate, size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.local_embedding(local) * gate  # (B, E, H, W)


class SeaFormerLightHead(nn.Module):
    """Reference settings: SeaFormer-B embed_dims (128, 160), channels 160; SeaFormer-L
    (128, 160, 192), channels 192 (``channels == embed_dims[-1]``). Output (B, channels, H/8, W/8).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        embed_dims: tuple[int, ...] = (128, 160),
        channels: int = 160,
        depthwise_fuse: bool = True,
    ) -> None:
        super().__init__()
        if len(embed_dims) != len(in_channels) - 1:
            raise ValueError(
                f"SeaFormer head needs one embed_dim per global map: {len(in_channels) - 1} maps "
                f"(in_channels={in_channels}) but embed_dims={embed_dims}"
            )
        if channels != embed_dims[-1]:
            raise ValueError(f"channels ({channels}) must equal embed_dims[-1] ({embed_dims[-1]})")
        self.fuse = nn.ModuleList(
            FusionBlock(in_channels[0] if i == 0 else embed_dims[i - 1], in_channels[i + 1], e)
            for i, e in enumerate(embed_dims)
        )
        self.linear_fuse = ConvBNReLU(
            channels, channels, 1, groups=channels if depthwise_fuse else 1
        )
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        x = features[0]  # (B, C_0, H/8, W/8)
        for fuse, global_ in zip(self.fuse, features[1:]):
            x = fuse(x, global_)
        return HeadOutput(self.linear_fuse(x))  # (B, channels, H/8, W/8)
