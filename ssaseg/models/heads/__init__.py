"""Decode heads by name: a dict from name to constructor (see base.py for the contract)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssaseg.models.heads.afformer_head import AFFormerHead
from ssaseg.models.heads.all_mlp import AllMLPHead
from ssaseg.models.heads.cgr import CGRHead
from ssaseg.models.heads.fcn import FCNHead
from ssaseg.models.heads.hrnet_concat import HRNetConcatHead
from ssaseg.models.heads.light_ham import LightHamHead
from ssaseg.models.heads.mask2former import Mask2FormerHead
from ssaseg.models.heads.ocr import OCRHead
from ssaseg.models.heads.seaformer_head import SeaFormerLightHead
from ssaseg.models.heads.uper import UPerHead

HEADS: dict[str, Callable[..., nn.Module]] = {
    "all_mlp": AllMLPHead,
    "fcn": FCNHead,
    "uper": UPerHead,
    "ocr": OCRHead,
    "cgr": CGRHead,
    "light_ham": LightHamHead,
    "seaformer_light": SeaFormerLightHead,
    "afformer": AFFormerHead,
    "hrnet_concat": HRNetConcatHead,
    "mask2former": Mask2FormerHead,
}
