"""CGRSeg's decode head (Ni et al., "Context-Guided Spatial Feature Reconstruction for Efficient
Semantic Segmentation", ECCV 2024), written from the paper and the authors' public code.

Input: the stride-8/16/32 stages of EfficientFormerV2.

1. Pyramid pooling aggregation: every stage average-pooled to half the coarsest stage's size,
   concatenated, and refined by ``neck_repeat`` Rectangular Self-Calibration Modules (RCM).
2. From coarse to fine, per stage: local tokens (the stage, plus the previous, finer-grained
   result upsampled and projected to the stage's width) -> RCM -> fused with that stage's slice
   of the global context by a sigmoid gate (``GatedFusion``: BN(1x1)(local) * h_sigmoid(BN(1x1)
   (global)), upsampled) -> ``channels`` wide.
3. Dynamic prototype guidance: a depthwise 1x1 ConvBNReLU, a coarse prediction (K logits) from
   it, class prototypes as softmax(coarse over pixels)-weighted means of the stride-8 feature,
   attention-pooled over the K prototypes into one channel gate (1x1 -> LayerNorm -> ReLU ->
   1x1 -> sigmoid); output = feature * gate + feature.

Deviation from the reference, forced by our contract (a head never classifies): the reference
makes the coarse prediction with the *same* 1x1 classifier that later classifies the output.
Here the coarse prediction has its own 1x1 conv inside the head and is returned as
``aux_logits`` (supervised with the model's ``aux_loss_weight``), so the classifier stays
swappable. That adds K * (channels + 1) parameters (~38.5 k for ADE20K).
The reference's +SSA variant drops step 3 and lets SSA classify the depthwise-conv feature;
we keep one head for all classifiers (SSA exists once), which changes FLOPs by < 2 %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.heads.conv_module import ConvBNReLU
from ssaseg.models.heads.ocr import region_representations


class RectangularCalibration(nn.Module):
    """RCA: a square depthwise conv (local detail) gated by a rectangular attention built from
    horizontal + vertical average pools and two band-shaped depthwise convs (1xk, kx1)."""

    def __init__(self, dim: int, band_kernel: int = 11, square_kernel: int = 3) -> None:
        super().__init__()
        self.local = nn.Conv2d(dim, dim, square_kernel, padding=square_kernel // 2, groups=dim)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.excite = nn.Sequential(
            nn.Conv2d(dim, dim, (1, band_kernel), padding=(0, band_kernel // 2), groups=dim),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=dim),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(self.pool_h(x) + self.pool_w(x))  # (B, C, H, 1) + (B, C, 1, W)
        return gate * self.local(x)


class RCM(nn.Module):
    """Rectangular Self-Calibration Module: RCA -> BN -> 1x1 MLP (GELU) -> layer scale, residual."""

    def __init__(
        self, dim: int, band_kernel: int = 11, square_kernel: int = 3, mlp_ratio: float = 2.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.token_mixer = RectangularCalibration(dim, band_kernel, square_kernel)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        return x + y * self.gamma.view(1, -1, 1, 1)


class GatedFusion(nn.Module):
    """Local tokens (1x1 conv + BN) times a hard-sigmoid gate from the global context
    (1x1 conv + BN), upsampled to the local size."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.local = ConvBNReLU(in_channels, channels, 1, act=False)
        self.gate = ConvBNReLU(in_channels, channels, 1, act=False)

    def forward(self, local: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gate = F.relu6(self.gate(context) + 3.0) / 6.0
        gate = F.interpolate(gate, size=local.shape[-2:], mode="bilinear", align_corners=False)
        return self.local(local) * gate


class PrototypeGate(nn.Module):
    """Attention-pool the K class prototypes (B, C, K, 1) into a per-channel sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attend = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.LayerNorm([channels, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )
        nn.init.kaiming_normal_(self.attend.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attend.bias)
        nn.init.zeros_(self.transform[-1].weight)  # the gate starts at sigmoid(0) = 0.5
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, c = prototypes.shape[:2]
        weights = self.attend(prototypes).flatten(2).softmax(dim=-1)  # (B, 1, K)
        pooled = torch.bmm(prototypes.flatten(2), weights.transpose(1, 2))  # (B, C, 1)
        return x * torch.sigmoid(self.transform(pooled.view(b, c, 1, 1)))


class CGRHead(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        channels: int = 256,
        band_kernel: int = 11,
        neck_band_kernel: int = 11,
        neck_repeat: int = 6,
        square_kernel: int = 3,
        mlp_ratio: float = 2.0,
        coarse_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        total = sum(in_channels)
        self.neck = nn.Sequential(
            *(RCM(total, neck_band_kernel, square_kernel, mlp_ratio) for _ in range(neck_repeat))
        )
        self.local = nn.ModuleList(
            RCM(c, band_kernel, square_kernel, mlp_ratio) for c in in_channels
        )
        self.fusion = nn.ModuleList(GatedFusion(c, channels) for c in in_channels)
        self.project = nn.ModuleList(nn.Conv2d(channels, c, 1) for c in in_channels[:-1])
        self.depthwise = ConvBNReLU(channels, channels, 1, groups=channels)
        self.coarse = nn.Sequential(
            nn.Dropout2d(coarse_dropout) if coarse_dropout > 0 else nn.Identity(),
            nn.Conv2d(channels, num_classes, 1),
        )
        self.prototype_gate = PrototypeGate(channels)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        h, w = features[-1].shape[-2:]
        size = ((h - 1) // 2 + 1, (w - 1) // 2 + 1)
        context = self.neck(torch.cat([F.adaptive_avg_pool2d(f, size) for f in features], dim=1))
        contexts = context.split(self.in_channels, dim=1)
        x = None
        for i in range(len(features) - 1, -1, -1):
            local = features[i]
            if x is not None:
                up = F.interpolate(x, size=local.shape[-2:], mode="bilinear", align_corners=False)
                local = local + self.project[i](up)
            x = self.fusion[i](self.local[i](local), contexts[i])
        coarse = self.coarse(self.depthwise(x))  # (B, K, H/8, W/8)
        prototypes = region_representations(x, coarse)  # (B, C, K, 1)
        return HeadOutput(self.prototype_gate(x, prototypes) + x, coarse)
