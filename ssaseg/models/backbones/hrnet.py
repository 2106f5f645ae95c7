"""HRNetV2 as mmsegmentation builds it (the backbone of the published OCRNet numbers), on timm's
HRNet modules.

timm's HRNet fuses a coarser branch into a finer one with a 1x1 conv, BN and a *nearest*
upsampling; mmseg's upsamples bilinearly (``align_corners=False``) and then resizes the result
to the finer branch's size, bilinearly again, when an odd side made them differ. With the
nearest upsampling the stage features of HRNet-W18 differ from mmseg's by up to 20 % and
OCRNet's logits by 0.38 (W48: 0.69) on identical weights. :class:`HRNetBackbone` switches every
fuse upsampling (31 modules in HRNetV2) and every multi-branch module's fusion to mmseg's; the
parameters and state-dict names stay timm's. No padding is needed: any input size gives
mmseg's feature sizes (``ceil`` at every stride-2 conv).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.backbones.timm_backbone import TimmBackbone, timm

_hrnet = timm.models.hrnet


class BilinearFuseModule(_hrnet.HighResolutionModule):
    """timm's multi-branch module with mmseg's fusion: every upsampled branch is resized to the
    target branch's size (bilinear, align_corners False) before the sum."""

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(xi) for branch, xi in zip(self.branches, x)]  # per branch (B, C_j, h_j, w_j)
        fused = []
        for i, fuse_outer in enumerate(self.fuse_layers):
            size = x[i].shape[-2:]
            y = None
            for j, fuse in enumerate(fuse_outer):  # in branch order, as mmseg sums
                z = fuse(x[j])  # identity for j == i
                if j > i and z.shape[-2:] != size:
                    z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
                y = z if y is None else y + z
            fused.append(self.fuse_act(y))
        return fused


class BilinearUpsample(nn.Module):
    """Upsampling by an integer factor, bilinear: mmseg's own ``Upsample`` module in HRNet's
    fuse layers (align_corners False). Deliberately not an ``nn.Upsample``: mmcv's FLOP counter
    matches module types exactly and does not see mmseg's, so the published GFLOPs leave these
    out, and :func:`ssaseg.engine.flops.count_flops_mmcv` does the same with ours."""

    def __init__(self, scale_factor: int, align_corners: bool = False) -> None:
        super().__init__()
        self.scale_factor = int(scale_factor)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, s*h, s*w)
        size = (x.shape[-2] * self.scale_factor, x.shape[-1] * self.scale_factor)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, align_corners={self.align_corners}"


def make_hrnet_fuse_bilinear(model: nn.Module, align_corners: bool = False) -> int:
    """Switch, in place, every HRNet fuse to a bilinear one (mmseg's: ``align_corners=False``);
    returns how many upsampling modules were replaced (parameter-free: the state-dict names do
    not change)."""
    switched = 0
    for module in model.modules():
        if type(module) is _hrnet.HighResolutionModule:
            module.__class__ = BilinearFuseModule
            if isinstance(module.fuse_layers, nn.ModuleList):
                for fuse_outer in module.fuse_layers:
                    for fuse in fuse_outer:
                        if isinstance(fuse, nn.Sequential) and isinstance(fuse[-1], nn.Upsample):
                            fuse[-1] = BilinearUpsample(fuse[-1].scale_factor, align_corners)
                            switched += 1
    return switched


class HRNetBackbone(TimmBackbone):
    """mmseg's HRNetV2 (see module docstring) from a timm ``hrnet_w*`` model name; the same
    arguments as :class:`TimmBackbone`.

    ``fuse_align_corners=True``: ProtoSeg's HRNet (openseg's, tfzhou/ProtoSeg@1c4a778
    lib/models/backbones/hrnet/hrnet_backbone.py), which resizes each coarser branch straight
    to the finer one's size with ``align_corners=True``; with ``pad_to_multiple=32`` every size
    is an exact multiple, where upsampling by the factor is that same resize.
    """

    def __init__(self, model_name: str, weights: str | Path | None = None,
                 fuse_align_corners: bool = False, **timm_kwargs) -> None:
        super().__init__(model_name, weights=weights, **timm_kwargs)
        if not make_hrnet_fuse_bilinear(self.model, fuse_align_corners):
            raise ValueError(f"{model_name} has no HRNet fuse layers: use the `timm` backbone")
