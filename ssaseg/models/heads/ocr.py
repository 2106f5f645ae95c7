"""OCRNet's head (Yuan et al., "Object-Contextual Representations", ECCV 2020) on HRNetV2.

1. All backbone stages are resized to the finest one and concatenated (HRNetV2: 720 channels
   for W48).
2. Soft object regions: 1x1 ConvBNReLU -> 1x1 conv to K logits. They are the head's
   ``aux_logits`` (supervised with the model's ``aux_loss_weight``, 0.4 as in the reference);
   the head uses them, it never outputs them as the prediction.
3. Pixel representation: 3x3 ConvBNReLU to ``channels`` (512).
4. Object region representation: per class, the softmax(over pixels)-weighted mean of the
   pixel representation -> (B, channels, K, 1).
5. Object contextual representation: pixels attend to the K region representations
   (query/key: two 1x1 ConvBNReLU to ``ocr_channels``, value: one; scaled dot-product,
   softmax over the K regions; out: 1x1 ConvBNReLU back to ``channels``), then
   concat[context, pixels] -> 1x1 ConvBNReLU -> the feature handed to the classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU


def _concat_at_finest(features: list[torch.Tensor]) -> torch.Tensor:
    size = features[0].shape[-2:]
    return torch.cat(
        [features[0]]
        + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]],
        dim=1,
    )


def region_representations(pixels: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) pixels, (B, K, h, w) logits -> (B, C, K, 1): each class's softmax-weighted
    mean over the pixels."""
    weights = region_logits.flatten(2).softmax(dim=-1)  # (B, K, hw), sums to 1 over pixels
    regions = torch.bmm(weights, pixels.flatten(2).transpose(1, 2))  # (B, K, C)
    return regions.transpose(1, 2).unsqueeze(-1)


class ObjectAttention(nn.Module):
    """Pixels (queries) attend to object regions (keys/values), then fuse with the pixels."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.query = nn.Sequential(
            ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1)
        )
        self.key = nn.Sequential(
            ConvBNReLU(channels, key_channels, 1), ConvBNReLU(key_channels, key_channels, 1)
        )
        self.value = ConvBNReLU(channels, key_channels, 1)
        self.out = ConvBNReLU(key_channels, channels, 1)
        self.fuse = ConvBNReLU(2 * channels, channels, 1)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        q = self.query(pixels).flatten(2).transpose(1, 2)  # (B, hw, Ck)
        k = self.key(regions).flatten(2)  # (B, Ck, K)
        v = self.value(regions).flatten(2).transpose(1, 2)  # (B, K, Ck)
        attn = (torch.bmm(q, k) * self.key_channels**-0.5).softmax(dim=-1)  # (B, hw, K)
        context = torch.bmm(attn, v).transpose(1, 2).reshape(b, self.key_channels, h, w)
        return self.fuse(torch.cat([self.out(context), pixels], dim=1))


class OCRHead(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
    ) -> None:
        super().__init__()
        total = sum(in_channels)
        self.soft_regions = nn.Sequential(
            ConvBNReLU(total, total, 1), nn.Conv2d(total, num_classes, 1)
        )
        self.pixels = ConvBNReLU(total, channels, 3)
        self.object_attention = ObjectAttention(channels, ocr_channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        x = _concat_at_finest(features)
        region_logits = self.soft_regions(x)
        pixels = self.pixels(x)
        regions = region_representations(pixels, region_logits)
        return HeadOutput(self.object_attention(pixels, regions), region_logits)
