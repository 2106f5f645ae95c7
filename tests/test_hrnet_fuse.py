"""HRNet's branch fusion, ours against the rule of each reference, written out here.

mmseg's rule is also checked end to end against mmseg itself (tests/test_mmseg_models.py);
ProtoSeg's (tfzhou/ProtoSeg@1c4a778, lib/models/backbones/hrnet/hrnet_backbone.py) has no oracle
that runs here: each coarser branch, after its 1x1 conv + BN, is resized straight to the finer
branch's size (bilinear, align_corners=True) and summed in branch order, then ReLU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssaseg.models.backbones.hrnet import BilinearFuseModule, HRNetBackbone


def _first_fuse_module(backbone: HRNetBackbone) -> BilinearFuseModule:
    return next(m for m in backbone.modules()
                if isinstance(m, BilinearFuseModule) and m.num_branches > 2)


@pytest.mark.parametrize("align_corners", [False, True])
def test_fuse_follows_the_reference_rule(align_corners: bool) -> None:
    torch.manual_seed(0)
    backbone = HRNetBackbone("hrnet_w18_small", feature_location="", out_indices=(1, 2, 3, 4),
                             fuse_align_corners=align_corners).eval()
    module = _first_fuse_module(backbone)
    sizes = [(16, 24), (8, 12), (4, 6)]  # exact multiples, as pad_to_multiple=32 gives
    channels = module.num_in_chs
    xs = [torch.randn(1, c, *s) for c, s in zip(channels, sizes)]
    with torch.no_grad():
        ours = module([x.clone() for x in xs])
        branches = [b(x) for b, x in zip(module.branches, xs)]
        for i, fuse_outer in enumerate(module.fuse_layers):
            y = 0
            for j, fuse in enumerate(fuse_outer):
                if j == i:
                    y = y + branches[j]
                elif j > i:  # conv + BN, then straight to the target size
                    z = fuse[1](fuse[0](branches[j]))
                    y = y + F.interpolate(z, size=sizes[i], mode="bilinear",
                                          align_corners=align_corners)
                else:
                    y = y + fuse(branches[j])
            assert torch.allclose(ours[i], torch.relu(y), atol=1e-5)
