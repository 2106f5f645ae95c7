"""UPerNet's decode head (Xiao et al., "Unified Perceptual Parsing", ECCV 2018), as used with
Swin: a pyramid pooling module (PPM) on the coarsest stage, a top-down FPN over all stages,
every level resized to the finest one, concatenated and fused by a 3x3 ConvBNReLU.

Optionally carries mmseg's auxiliary FCN head on one stage (stage 3 for Swin: ``aux_in_index=2``,
256 channels, one conv), whose logits are ``aux_logits`` in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU
from ssaseg.models.heads.fcn import build_aux_fcn


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's pooling pyramid: for each scale, adaptive average pool -> 1x1 ConvBNReLU ->
    bilinear upsample; returns [x, pooled_1, ..., pooled_n] concatenated on channels."""

    def __init__(self, in_channels: int, channels: int, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(in_channels, channels, 1))
            for s in scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [_resize(stage(x), size) for stage in self.stages], dim=1)


class UPerHead(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        aux_in_index: int | None = None,
        aux_channels: int = 256,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.ppm = PyramidPooling(top, channels, tuple(pool_scales))
        self.ppm_bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.aux_in_index = aux_in_index
        self.aux = build_aux_fcn(in_channels, num_classes, aux_in_index, aux_channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        levels = [lat(f) for lat, f in zip(self.lateral, features[:-1])]
        levels.append(self.ppm_bottleneck(self.ppm(features[-1])))
        for i in range(len(levels) - 1, 0, -1):  # top-down: add the coarser level, upsampled
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outs = [fpn(level) for fpn, level in zip(self.fpn, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        feature = self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1))
        aux = None
        if self.aux is not None and self.training:
            aux = self.aux(features[self.aux_in_index])
        return HeadOutput(feature, aux)  # (B, channels, H/4, W/4)
