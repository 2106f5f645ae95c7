"""Initialisation shared by the backbones written in ssaseg (MSCAN, SeaFormer, AFFormer)."""

from __future__ import annotations

import math

from torch import nn


def init_backbone_weights(root: nn.Module, linear_std: float | None = None) -> None:
    """Conv2d: normal with std sqrt(2 / fan_out) (fan_out per group), bias 0; with
    ``linear_std``, Linear: truncated normal with that std, bias 0. Other modules keep theirs."""
    for m in root.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.trunc_normal_(m.weight, std=linear_std)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
