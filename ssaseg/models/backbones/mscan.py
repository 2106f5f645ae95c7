"""MSCAN, SegNeXt's backbone (Guo et al., "SegNeXt: Rethinking Convolutional Attention Design
for Semantic Segmentation", NeurIPS 2022).

A four-stage convolutional pyramid (strides 4, 8, 16, 32). Each block is
``x + s1 * MSCA(BN(x))`` then ``x + s2 * MLP(BN(x))``, where multi-scale convolutional attention
(MSCA) gates its input by a sum of depthwise strip convolutions (7, 11, 21) on top of a 5x5
depthwise convolution. The parameter names follow the official code, so its ImageNet checkpoint
loads after one rename (the MLP's depthwise convolution is not wrapped in a submodule here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssaseg.errors import UnknownNameError
from ssaseg.models.backbones.checkpoint import load_mapped_state_dict, read_state_dict
from ssaseg.models.backbones.weight_init import init_backbone_weights
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
from timm.layers import DropPath  # noqa: E402  (after the CPU-torch fix above)


@dataclass(frozen=True)
class MSCANArch:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]


MSCAN_ARCHS: dict[str, MSCANArch] = {
    # SegNeXt-T (configs/segnext/mscan_tiny.py of the SSA code, local_configs of SegNeXt)
    "tiny": MSCANArch(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4)),
}


class StemConv(nn.Module):
    """Two stride-2 3x3 convolutions: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Stride-2 3x3 convolution + BN between stages: (B, C_in, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class MultiScaleConvAttention(nn.Module):
    """MSCA: ``x * conv1x1(d + sum_k strip_k(d))`` with ``d = dwconv5x5(x)``; strips 7, 11, 21."""

    def __init__(self, dim: int, strip_sizes: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        # names conv{i}_1 (1 x k) and conv{i}_2 (k x 1) as in the official checkpoint
        for i, k in enumerate(strip_sizes):
            horizontal = nn.Conv2d(dim, dim, (1, k), padding=(0, k // 2), groups=dim)
            vertical = nn.Conv2d(dim, dim, (k, 1), padding=(k // 2, 0), groups=dim)
            setattr(self, f"conv{i}_1", horizontal)
            setattr(self, f"conv{i}_2", vertical)
        self.num_strips = len(strip_sizes)
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)  # (B, C, H, W)
        total = attn
        for i in range(self.num_strips):
            total = total + getattr(self, f"conv{i}_2")(getattr(self, f"conv{i}_1")(attn))
        return self.conv3(total) * x


class SpatialAttention(nn.Module):
    """1x1 -> GELU -> MSCA -> 1x1, with a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = MultiScaleConvAttention(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))


class ConvMlp(nn.Module):
    """1x1 expand -> 3x3 depthwise -> GELU -> 1x1 project, channels-first."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class MSCABlock(nn.Module):
    def __init__(
        self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0,
        layer_scale_init: float = 1e-2,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class MSCAN(nn.Module):
    """Multi-scale features (strides 4, 8, 16, 32) of MSCAN; see the module docstring.

    ``weights`` is a local checkpoint file in the official (or mmsegmentation) naming; None trains
    from scratch.
    """

    def __init__(
        self,
        arch: str = "tiny",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if arch not in MSCAN_ARCHS:
            raise UnknownNameError(f"unknown MSCAN arch {arch!r}; known: "
                                   f"{', '.join(sorted(MSCAN_ARCHS))}")
        spec = MSCAN_ARCHS[arch]
        self.num_stages = len(spec.depths)
        n = sum(spec.depths)  # stochastic depth rising linearly (no tensors: meta-device safe)
        rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]
        for i, (dim, depth, ratio) in enumerate(zip(spec.embed_dims, spec.depths, spec.mlp_ratios)):
            embed = StemConv(3, dim) if i == 0 else OverlapPatchEmbed(spec.embed_dims[i - 1], dim)
            first = sum(spec.depths[:i])
            blocks = nn.ModuleList(
                MSCABlock(dim, ratio, drop_rate, rates[first + j]) for j in range(depth)
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim))  # over channels, as the official
        self.out_channels: list[int] = list(spec.embed_dims)
        self.out_strides: list[int] = [4, 8, 16, 32]
        init_backbone_weights(self)
        if weights is not None:
            self.load_pretrained(weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images  # (B, 3, H, W)
        features = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"patch_embed{i}")(x)  # (B, C_i, H/s_i, W/s_i)
            for block in getattr(self, f"block{i}"):
                x = block(x)
            # LayerNorm over channels: channels-last and back
            x = getattr(self, f"norm{i}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            features.append(x)
        return features

    def load_pretrained(self, path: str | Path) -> None:
        """Load the official MSCAN ImageNet checkpoint (``mscan_t.pth`` or mmsegmentation's
        ``mscan_t_20230227-119e8c9f.pth``); the ImageNet classifier ``head.*`` is dropped."""
        load_mapped_state_dict(self, read_state_dict(path), rename_official_key, source=str(path))


_MLP_DWCONV = re.compile(r"\.mlp\.dwconv\.dwconv\.")


def rename_official_key(name: str) -> str | None:
    """Official MSCAN key -> ours (None: not part of the backbone)."""
    if name.startswith("head."):
        return None
    return _MLP_DWCONV.sub(".mlp.dwconv.", name)
