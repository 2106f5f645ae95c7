"""Backbones by name: a dict from name to constructor (see base.py for the contract)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssaseg.models.backbones.afformer import AFFormer
from ssaseg.models.backbones.hrnet import HRNetBackbone
from ssaseg.models.backbones.mscan import MSCAN
from ssaseg.models.backbones.resnet import DilatedResNetBackbone
from ssaseg.models.backbones.seaformer import SeaFormer
from ssaseg.models.backbones.swin import SwinBackbone
from ssaseg.models.backbones.timm_backbone import TimmBackbone
from ssaseg.models.backbones.vit_adapter import ViTAdapter

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "timm": TimmBackbone,
    "swin": SwinBackbone,
    "hrnet": HRNetBackbone,
    "dilated_resnet": DilatedResNetBackbone,
    "mscan": MSCAN,
    "seaformer": SeaFormer,
    "afformer": AFFormer,
    "vit_adapter": ViTAdapter,
}
