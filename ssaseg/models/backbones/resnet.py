"""Dilated ResNet as mmsegmentation builds it (``ResNetV1c``, ``*-d8`` configs), on timm's ResNet.

timm's ``output_stride=8`` gives the same strides (1, 2, 1, 1) and dilations (1, 1, 2, 4), with
the first block of a dilated stage at half the dilation (mmseg's ``contract_dilation=True``).
The one difference is in the *basic* block (ResNet-18/34): timm dilates both of its 3x3
convolutions, mmseg only the first (``conv2`` keeps dilation 1, padding 1). Bottleneck blocks
(ResNet-50/101) have a single 3x3 convolution and already agree. :class:`DilatedResNetBackbone`
sets every basic block's ``conv2`` back to dilation 1, in place (same parameters and names).
The deep stem of V1c (three 3x3 convolutions, 32-32-64 channels) is timm's ``stem_type="deep",
stem_width=32`` (what ``resnet*c`` models already are).
"""

from __future__ import annotations

from pathlib import Path

from ssaseg.models.backbones.timm_backbone import TimmBackbone, timm

_resnet = timm.models.resnet


def undilate_basic_block_conv2(model) -> int:
    """Every timm BasicBlock's second 3x3 conv to dilation 1 (mmseg's); returns how many."""
    changed = 0
    for module in model.modules():
        if isinstance(module, _resnet.BasicBlock) and module.conv2.dilation != (1, 1):
            module.conv2.dilation, module.conv2.padding = (1, 1), (1, 1)
            changed += 1
    return changed


class DilatedResNetBackbone(TimmBackbone):
    """mmseg's dilated ResNet (see module docstring); the arguments of :class:`TimmBackbone`."""

    def __init__(self, model_name: str, weights: str | Path | None = None, **timm_kwargs) -> None:
        super().__init__(model_name, weights=weights, **timm_kwargs)
        undilate_basic_block_conv2(self.model)
