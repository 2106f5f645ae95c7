"""FCN head: a stack of 3x3 ConvBNReLU on the last (dilated) stage, optionally fused with its
input; and :class:`AuxiliaryFCN`, mmseg's auxiliary FCN head, which any head can carry to
predict ``aux_logits`` from one backbone stage during training (loss weight: the model's
``aux_loss_weight``, 0.4 in the reference configs)."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU


class AuxiliaryFCN(nn.Module):
    """ConvBNReLU x ``num_convs`` (3x3) -> dropout -> 1x1 conv to K logits.

    It is a training-time auxiliary *prediction*, not the model's classifier: its logits are
    only supervised (``HeadOutput.aux_logits``) and never used as the output.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                ConvBNReLU(in_channels if i == 0 else channels, channels, kernel_size)
                for i in range(num_convs)
            )
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dropout(self.convs(x)))


def build_aux_fcn(
    in_channels: list[int], num_classes: int, aux_in_index: int | None, aux_channels: int
) -> AuxiliaryFCN | None:
    if aux_in_index is None:
        return None
    return AuxiliaryFCN(in_channels[aux_in_index], num_classes, aux_channels)


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
        aux_in_index: int | None = None,
        aux_channels: int = 256,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        c_in = in_channels[in_index]
        self.convs = nn.Sequential(
            *(ConvBNReLU(c_in if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.fuse = ConvBNReLU(c_in + channels, channels, 3) if concat_input else None
        self.aux_in_index = aux_in_index
        self.aux = build_aux_fcn(in_channels, num_classes, aux_in_index, aux_channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        x = features[self.in_index]
        out = self.convs(x)
        if self.fuse is not None:
            out = self.fuse(torch.cat([x, out], dim=1))
        aux = None
        if self.aux is not None and self.training:
            aux = self.aux(features[self.aux_in_index])
        return HeadOutput(out, aux)
