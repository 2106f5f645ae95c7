"""SeaFormer (Wan et al., "SeaFormer: Squeeze-enhanced Axial Transformer for Mobile Semantic
Segmentation", ICLR 2023).

Five stacks of MobileNetV2 inverted residuals (``smb1..smb5``, strides 4, 8, 16, 32, 64); the
last two (Base) or three (Large) stacks are each followed by a stack of SeaFormer blocks
(``trans*``). A SeaFormer block's attention squeezes q/k/v to a row mean and a column mean,
attends along each axis (cost linear in H + W), broadcasts the two results back over the map and
gates a depthwise-convolution "detail" branch with them.

Returned maps: the stride-8 output of ``smb2`` and the output of every ``trans`` stack.
Parameter names follow the official code, so the ImageNet checkpoint loads as is (its
classifier ``linear.*`` dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.errors import UnknownNameError
from ssaseg.models.backbones.checkpoint import load_mapped_state_dict, read_state_dict
from ssaseg.models.backbones.weight_init import init_backbone_weights
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
from timm.layers import DropPath  # noqa: E402  (after the CPU-torch fix above)

# (kernel, expand ratio, out channels, stride) of each inverted residual
MV2Config = tuple[int, int, int, int]


@dataclass(frozen=True)
class SeaFormerArch:
    stacks: tuple[tuple[MV2Config, ...], ...]  # one tuple of inverted residuals per smb stack
    channels: tuple[int, ...]  # stem width, then the input width of smb2..smb5, then the last
    depths: tuple[int, ...]  # SeaFormer blocks after each of the last len(depths) stacks
    key_dims: tuple[int, ...]
    emb_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    num_heads: int = 8
    attn_ratio: float = 2.0


# From the official seaformer-cls/seaformer.py and the SSA configs (seaformer_{base,large}.py).
SEAFORMER_ARCHS: dict[str, SeaFormerArch] = {
    "base": SeaFormerArch(
        stacks=(
            ((3, 1, 16, 1), (3, 4, 32, 2), (3, 3, 32, 1)),
            ((5, 3, 64, 2), (5, 3, 64, 1)),
            ((3, 3, 128, 2), (3, 3, 128, 1)),
            ((5, 4, 192, 2),),
            ((3, 6, 256, 2),),
        ),
        channels=(16, 32, 64, 128, 192, 256),
        depths=(4, 4),
        key_dims=(16, 24),
        emb_dims=(192, 256),
        mlp_ratios=(2, 4),
    ),
    "large": SeaFormerArch(
        stacks=(
            ((3, 3, 32, 1), (3, 4, 64, 2), (3, 4, 64, 1)),
            ((5, 4, 128, 2), (5, 4, 128, 1)),
            ((3, 4, 192, 2), (3, 4, 192, 1)),
            ((5, 4, 256, 2),),
            ((3, 6, 320, 2),),
        ),
        channels=(32, 64, 128, 192, 256, 320),
        depths=(3, 3, 3),
        key_dims=(16, 20, 24),
        emb_dims=(192, 256, 320),
        mlp_ratios=(2, 4, 6),
    ),
}


class Conv2d_BN(nn.Sequential):  # noqa: N801  (official name, keeps checkpoint keys c/bn)
    """Conv (no bias) -> BatchNorm; ``bn_weight_init=0`` starts a residual branch at zero."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        groups: int = 1, bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
            bias=False,
        ))
        bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)


class HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3) / 6


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand ->] kxk depthwise -> 1x1 project; residual when shapes
    allow."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
        expand_ratio: float, act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [Conv2d_BN(in_channels, hidden), act()]
        layers += [
            Conv2d_BN(hidden, hidden, kernel_size, stride, groups=hidden), act(),
            Conv2d_BN(hidden, out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class StackedMV2Block(nn.Module):
    def __init__(
        self, configs: tuple[MV2Config, ...], in_channels: int, stem: bool,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.stem = stem
        if stem:
            self.stem_block = nn.Sequential(Conv2d_BN(3, in_channels, 3, 2), act())
        self.num_layers = len(configs)
        for i, (k, t, c, s) in enumerate(configs):
            self.add_module(f"layer{i + 1}", InvertedResidual(in_channels, c, k, s, t, act))
            in_channels = c
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem:
            x = self.stem_block(x)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        return x


class SqueezeAxialPositionalEmbedding(nn.Module):
    """A learnt (1, C, 16) embedding, linearly resized to the squeezed axis length."""

    def __init__(self, dim: int, length: int = 16) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, dim, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L)
        length = x.shape[-1]
        return x + F.interpolate(self.pos_embed, size=length, mode="linear", align_corners=False)


def _axial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """Multi-head attention along one squeezed axis: q, k (B, h*dk, L), v (B, h*dv, L) ->
    (B, h*dv, L)."""
    b, _, length = q.shape
    q = q.reshape(b, num_heads, -1, length).transpose(-1, -2)  # (B, h, L, dk)
    k = k.reshape(b, num_heads, -1, length)  # (B, h, dk, L)
    v = v.reshape(b, num_heads, -1, length).transpose(-1, -2)  # (B, h, L, dv)
    attn = torch.softmax((q @ k) * scale, dim=-1)  # (B, h, L, L)
    return (attn @ v).transpose(-1, -2).reshape(b, -1, length)  # (B, h*dv, L)


class SeaAttention(nn.Module):
    """Squeeze-enhanced axial attention with the detail-enhancement branch."""

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, attn_ratio: float,
        act: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim ** -0.5
        nh_kd = key_dim * num_heads
        self.dh = dh = int(attn_ratio * key_dim) * num_heads
        self.to_q = Conv2d_BN(dim, nh_kd)
        self.to_k = Conv2d_BN(dim, nh_kd)
        self.to_v = Conv2d_BN(dim, dh)
        self.proj = nn.Sequential(act(), Conv2d_BN(dh, dim, bn_weight_init=0))
        self.proj_encode_row = nn.Sequential(act(), Conv2d_BN(dh, dh, bn_weight_init=0))
        self.pos_emb_rowq = SqueezeAxialPositionalEmbedding(nh_kd)
        self.pos_emb_rowk = SqueezeAxialPositionalEmbedding(nh_kd)
        self.proj_encode_column = nn.Sequential(act(), Conv2d_BN(dh, dh, bn_weight_init=0))
        self.pos_emb_columnq = SqueezeAxialPositionalEmbedding(nh_kd)
        self.pos_emb_columnk = SqueezeAxialPositionalEmbedding(nh_kd)
        qkv = 2 * nh_kd + dh
        self.dwconv = Conv2d_BN(qkv, qkv, 3, groups=qkv)
        self.act = act()
        self.pwconv = Conv2d_BN(qkv, dim)
        self.sigmoid = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.act(self.dwconv(torch.cat([q, k, v], dim=1))))  # (B, C, H, W)
        # squeeze columns away -> one token per row (length H), and rows away -> per column (W)
        row = _axial_attention(
            self.pos_emb_rowq(q.mean(-1)), self.pos_emb_rowk(k.mean(-1)), v.mean(-1),
            self.num_heads, self.scale,
        )  # (B, dh, H)
        column = _axial_attention(
            self.pos_emb_columnq(q.mean(-2)), self.pos_emb_columnk(k.mean(-2)), v.mean(-2),
            self.num_heads, self.scale,
        )  # (B, dh, W)
        row = self.proj_encode_row(row[..., None])  # (B, dh, H, 1)
        column = self.proj_encode_column(column[..., None, :])  # (B, dh, 1, W)
        gate = self.proj(v + row + column)  # broadcast to (B, dh, H, W) -> (B, C, H, W)
        return self.sigmoid(gate) * detail


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        self.fc1 = Conv2d_BN(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = act()
        self.fc2 = Conv2d_BN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class SeaFormerBlock(nn.Module):
    def __init__(
        self, dim: int, key_dim: int, num_heads: int, mlp_ratio: float, attn_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.attn = SeaAttention(dim, key_dim, num_heads, attn_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    def __init__(self, blocks: list[SeaFormerBlock]) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


class SeaFormer(nn.Module):
    """SeaFormer-Base (maps at strides 8, 32, 64) or -Large (8, 16, 32, 64).

    ``weights`` is a local copy of the official ImageNet checkpoint; None trains from scratch.
    """

    def __init__(
        self,
        arch: str = "base",
        drop_path_rate: float = 0.1,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if arch not in SEAFORMER_ARCHS:
            raise UnknownNameError(
                f"unknown SeaFormer arch {arch!r}; known: {', '.join(sorted(SEAFORMER_ARCHS))}"
            )
        spec = SEAFORMER_ARCHS[arch]
        self.num_stacks = len(spec.stacks)
        self.num_trans = len(spec.depths)
        self.out_channels: list[int] = []
        self.out_strides: list[int] = []
        stride = 1
        for i, configs in enumerate(spec.stacks):
            stack = StackedMV2Block(configs, spec.channels[i], stem=i == 0)
            self.add_module(f"smb{i + 1}", stack)
            stride *= (2 if i == 0 else 1) * math.prod(s for *_, s in configs)
            if i == 1:
                self.out_channels.append(stack.out_channels)
                self.out_strides.append(stride)
            t = i - (self.num_stacks - self.num_trans)  # index of the trans stack after it
            if t >= 0:
                # stochastic depth rises linearly within each trans stack, as the official
                n = spec.depths[t]
                rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]
                blocks = [
                    SeaFormerBlock(
                        spec.emb_dims[t], spec.key_dims[t], spec.num_heads, spec.mlp_ratios[t],
                        spec.attn_ratio, rate,
                    )
                    for rate in rates
                ]
                self.add_module(f"trans{t + 1}", BasicLayer(blocks))
                self.out_channels.append(spec.emb_dims[t])
                self.out_strides.append(stride)
        init_backbone_weights(self)
        if weights is not None:
            self.load_pretrained(weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images  # (B, 3, H, W)
        features = []
        for i in range(self.num_stacks):
            x = getattr(self, f"smb{i + 1}")(x)
            if i == 1:
                features.append(x)  # (B, C, H/8, W/8), the shared detail map
            t = i - (self.num_stacks - self.num_trans)
            if t >= 0:
                x = getattr(self, f"trans{t + 1}")(x)
                features.append(x)
        return features

    def load_pretrained(self, path: str | Path) -> None:
        """Load the official ImageNet checkpoint (``SeaFormer_{B,L}.pth``, timm's training output:
        the EMA weights when present, as the official segmentation code does)."""
        state = read_state_dict(path, envelope_keys=("state_dict_ema", "state_dict", "model"))
        load_mapped_state_dict(self, state, rename_official_key, source=str(path))


def rename_official_key(name: str) -> str | None:
    """Official key -> ours: identical, minus the ImageNet classifier."""
    return None if name.startswith("linear.") else name
