"""HRNetV2's plain segmentation head: every branch upsampled to the finest and concatenated,
then one 3x3 conv + BN + ReLU at the concatenated width.

This is the ``hrnet_w48`` / ``hrnet_w48_proto`` model of ProtoSeg (Zhou et al., CVPR 2022; its
Cityscapes HRNet-W48 numbers), read for facts from tfzhou/ProtoSeg@1c4a778,
lib/models/nets/hrnet.py (``HRNet_W48``, ``HRNet_W48_Proto``):

    feats = cat[x0, up(x1), up(x2), up(x3)]           # bilinear, align_corners=True; 720 for W48
    cls_head = Conv2d(720, 720, 3, padding=1)  (bias=True)  -> BN -> ReLU -> Dropout2d(0.1)
               -> Conv2d(720, K, 1, bias=False)       (HRNet_W48: the linear classifier)
               -> ProjectionHead(720, 720) + prototypes (HRNet_W48_Proto: ProtoSeg)

The head ends at the ReLU: the dropout and everything after it belong to the classifier
(``linear`` and ``protoseg`` both start with Dropout2d(0.1)), so the feature handed on has the
concatenated width (720 for W48). The 3x3 conv keeps its bias as in the reference (redundant
before BN, 720 parameters). No auxiliary prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput


class HRNetConcatHead(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,  # unused: no auxiliary prediction
        channels: int | None = None,  # None: the concatenated width, as the reference
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        concat = sum(in_channels)
        channels = concat if channels is None else channels
        self.align_corners = align_corners
        self.conv = nn.Sequential(
            nn.Conv2d(concat, channels, kernel_size=3, padding=1, bias=True),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        size = features[0].shape[-2:]
        x = torch.cat(
            [features[0]]
            + [
                F.interpolate(f, size=size, mode="bilinear", align_corners=self.align_corners)
                for f in features[1:]
            ],
            dim=1,
        )
        return HeadOutput(self.conv(x))
