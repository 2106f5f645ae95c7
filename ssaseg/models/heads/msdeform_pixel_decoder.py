"""Mask2Former's pixel decoder (Cheng et al., CVPR 2022): a deformable-attention encoder over the
three coarsest backbone levels, then an FPN step onto the finest level.

* Each of the levels at strides 32, 16, 8 (coarsest first) is projected to C channels (1x1 conv
  + GroupNorm); the three token sequences, with a sine position encoding plus a learned
  embedding per level, go through ``num_layers`` encoder layers: multi-scale deformable
  self-attention (every token attends to all three levels around its own position) and an FFN
  (C -> ffn_channels -> C, ReLU), each followed by a residual and a LayerNorm (post-norm).
* The stride-4 level: 1x1 conv + GroupNorm, plus the stride-8 encoder output upsampled
  (bilinear), then 3x3 conv + GroupNorm + ReLU.
* Outputs: the per-pixel embedding (a 1x1 conv of the stride-4 map: ``mask_channels``) and
  the three encoder levels (coarsest first) the transformer decoder attends to.

Settings of Mask2Former's ADE20K semantic configs (facebookresearch/Mask2Former
configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml and mmsegmentation 1.2.2's
mask2former_r50_8xb2-160k_ade20k-512x512.py): C = 256, 6 layers, 8 heads, 4 points, FFN 1024,
GroupNorm with 32 groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.position_encoding import sine_position_encoding
from ssaseg.models.ms_deform_attn import MultiScaleDeformableAttention, reference_grid


def _conv_gn(cin: int, cout: int, kernel: int, bias: bool, groups: int, relu: bool = False):
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias),
                               nn.GroupNorm(groups, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeedForward(nn.Module):
    """Linear -> ReLU -> Linear, with the residual (no dropout: 0 in the reference configs)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class DeformableEncoderLayer(nn.Module):
    def __init__(self, channels: int, num_heads: int, num_levels: int, num_points: int,
                 ffn_channels: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(channels, num_heads, num_levels,
                                                       num_points)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = FeedForward(channels, ffn_channels)
        self.norm2 = nn.LayerNorm(channels)

    def forward(self, tokens, pos, reference_points, shapes):
        """tokens, pos (B, S, C); reference_points (B or 1, S, L, 2)."""
        tokens = self.norm1(tokens + self.self_attn(tokens + pos, reference_points, tokens,
                                                    shapes))
        return self.norm2(self.ffn(tokens))


class MSDeformAttnPixelDecoder(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        channels: int = 256,
        mask_channels: int = 256,
        num_encoder_levels: int = 3,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_channels: int = 1024,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if len(in_channels) != num_encoder_levels + 1:
            raise ValueError(f"the pixel decoder takes {num_encoder_levels + 1} levels (one "
                             f"below the encoder's), got {len(in_channels)}")
        self.num_encoder_levels = num_encoder_levels
        # coarsest first, as the encoder's levels are ordered
        self.input_proj = nn.ModuleList(
            _conv_gn(c, channels, 1, bias=True, groups=num_groups)
            for c in reversed(in_channels[1:])
        )
        self.level_embed = nn.Parameter(torch.zeros(num_encoder_levels, channels))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(channels, num_heads, num_encoder_levels, num_points,
                                   ffn_channels)
            for _ in range(num_layers)
        )
        self.lateral = _conv_gn(in_channels[0], channels, 1, bias=False, groups=num_groups)
        self.output = _conv_gn(channels, channels, 3, bias=False, groups=num_groups, relu=True)
        self.mask_proj = nn.Conv2d(channels, mask_channels, 1)
        self.out_channels = mask_channels
        self._init_weights()

    def _init_weights(self) -> None:
        """mmdet's: Xavier-uniform input projections, Kaiming-uniform (a=1) FPN and mask
        convs, N(0, 1) level embedding, Xavier-normal encoder matrices, then the deformable
        attentions' own init; zero biases."""
        if self.level_embed.device.type == "meta":
            return
        for seq in self.input_proj:
            nn.init.xavier_uniform_(seq[0].weight)
            nn.init.zeros_(seq[0].bias)
        for conv in (self.lateral[0], self.output[0], self.mask_proj):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.level_embed)
        for p in self.encoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for m in self.encoder.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features: the backbone's levels, finest first (strides 4, 8, 16, 32).
        Returns the per-pixel embedding (B, mask_channels, H/4, W/4) and the encoder levels
        (B, C, h_l, w_l), coarsest first."""
        coarse = features[1:][::-1]  # strides 32, 16, 8
        shapes = [tuple(f.shape[-2:]) for f in coarse]
        tokens, pos = [], []
        for i, (proj, feature) in enumerate(zip(self.input_proj, coarse)):
            h, w = feature.shape[-2:]
            tokens.append(proj(feature).flatten(2).transpose(1, 2))  # (B, h*w, C)
            level_pos = sine_position_encoding(h, w, tokens[-1].shape[-1] // 2,
                                               device=feature.device)
            pos.append(level_pos.flatten(2).transpose(1, 2) + self.level_embed[i])  # (1, h*w, C)
        tokens = torch.cat(tokens, 1)  # (B, S, C)
        pos = torch.cat(pos, 1).to(tokens.dtype)  # (1, S, C)
        # every token's own position, the same normalised point on every level
        refs = reference_grid(shapes, tokens.device)[None, :, None].expand(
            -1, -1, self.num_encoder_levels, -1)  # (1, S, L, 2)
        for layer in self.encoder:
            tokens = layer(tokens, pos, refs, shapes)
        batch, _, channels = tokens.shape
        levels = [part.transpose(1, 2).reshape(batch, channels, h, w)
                  for part, (h, w) in zip(tokens.split([h * w for h, w in shapes], 1), shapes)]
        fine = self.lateral(features[0])
        fine = fine + F.interpolate(levels[-1], size=fine.shape[-2:], mode="bilinear",
                                    align_corners=False)
        fine = self.output(fine)
        return self.mask_proj(fine), levels
