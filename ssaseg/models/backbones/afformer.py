"""AFFormer (Dong et al., "Head-Free Lightweight Semantic Segmentation with Linear Transformer",
AAAI 2023).

A convolutional stem (stride 4) and four stages. Stage i embeds its input twice in a row with
depthwise-separable convolutions: the first embedding ("local path", refined by a residual
``Restore`` block) sets the stage's output resolution, the second (strided, except in stage 0)
feeds a stack of frequency-filter blocks: factorised linear attention ``q (softmax_N(k)^T v)``
plus an adaptive filter on v, a high-pass (per-head-group depthwise 3/5/7 convolutions, gated by
q) and a low-pass (pyramid average pooling 1/2/3/6). The global path is upsampled back onto the
local one, the two are summed and a 1x1 ConvBN-Hardswish sets the next stage's width. The output
strides are 4, 8, 8, 8: the last two stages attend at strides 16 and 32 but return at 8.

Parameter names follow the official code; modules it shares between blocks (the positional
convolution and the frequency filter of each encoder) are held once here, so the duplicate
names they have in an official state dict are dropped on loading, as is the ImageNet classifier.
"""

from __future__ import annotations

import math
import re
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


@dataclass(frozen=True)
class AFFormerArch:
    embed_dims: tuple[int, int, int, int]
    num_layers: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (8, 8, 8, 8)


AFFORMER_ARCHS: dict[str, AFFormerArch] = {
    # afformer_base of the official code and of the SSA code (configs/afformer/afformer.py)
    "base": AFFormerArch(embed_dims=(32, 96, 176, 216), num_layers=(1, 2, 6, 2)),
}

# Strides of the two successive patch embeddings of each stage (local path, global path).
EMBED_STRIDES: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2), (1, 4))
# Depthwise kernel size -> number of heads it filters (the official crpe_window).
HIGH_PASS_WINDOWS: dict[int, int] = {3: 2, 5: 3, 7: 3}
LOW_PASS_SIZES: tuple[int, ...] = (1, 2, 3, 6)


class Conv2d_BN(nn.Module):  # noqa: N801  (official name, keeps checkpoint keys conv/bn)
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        act: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv2d_BN(nn.Module):  # noqa: N801
    """kxk depthwise (strided) -> 1x1 -> BN -> Hardswish."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False
        )
        self.pwconv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pwconv(self.dwconv(x))))


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.patch_conv = DWConv2d_BN(channels, 3, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_conv(x)


class PatchEmbedStage(nn.Module):
    """Two chained embeddings; returns both outputs (local path, global path)."""

    def __init__(self, channels: int, strides: tuple[int, int]) -> None:
        super().__init__()
        self.patch_embeds = nn.ModuleList(PatchEmbed(channels, s) for s in strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for embed in self.patch_embeds:
            x = embed(x)
            outputs.append(x)
        return outputs


class ConvPosEnc(nn.Module):
    """Depthwise 3x3 positional encoding with a residual, on tokens (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        image = x.transpose(1, 2).reshape(b, c, *size)
        return x + self.proj(image).flatten(2).transpose(1, 2)


class LowPass(nn.Module):
    """Split channels into len(sizes) groups, average-pool group g to sizes[g] x sizes[g],
    upsample back, concatenate, ReLU. No parameters."""

    def __init__(self, channels: int, sizes: tuple[int, ...] = LOW_PASS_SIZES) -> None:
        super().__init__()
        if channels % len(sizes):
            raise ValueError(f"low-pass needs channels ({channels}) divisible by {len(sizes)}")
        self.sizes = sizes
        self.split = channels // len(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> same
        size = x.shape[-2:]
        pooled = [
            F.interpolate(F.adaptive_avg_pool2d(part, s), size=size, mode="bilinear",
                          align_corners=False)
            for part, s in zip(torch.split(x, self.split, dim=1), self.sizes)
        ]
        return F.relu(torch.cat(pooled, dim=1))


class FrequencyFilter(nn.Module):
    """``q * high_pass(v) + low_pass(v)`` per head, on (B, h, N, Ch) tensors."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        covered = sum(HIGH_PASS_WINDOWS.values())
        if covered != num_heads:
            raise ValueError(f"the high-pass windows cover {covered} heads, not {num_heads}")
        self.channel_splits = [heads * head_dim for heads in HIGH_PASS_WINDOWS.values()]
        self.conv_list = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c)  # depthwise
            for k, c in zip(HIGH_PASS_WINDOWS, self.channel_splits)
        )
        self.LP = LowPass(head_dim * num_heads)

    def forward(self, q: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, h, n, ch = q.shape
        v_image = v.transpose(2, 3).reshape(b, h * ch, *size)  # (B, h*Ch, H, W)
        parts = torch.split(v_image, self.channel_splits, dim=1)
        high = torch.cat([conv(part) for conv, part in zip(self.conv_list, parts)], dim=1)
        low = self.LP(v_image)
        high, low = (t.reshape(b, h, ch, n).transpose(2, 3) for t in (high, low))  # (B, h, N, Ch)
        return q * high + low


class FrequencyAttention(nn.Module):
    """Factorised linear attention plus the frequency filter (official Frequency_FilterModule)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], filter_: FrequencyFilter
    ) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        context = k.softmax(dim=2).transpose(2, 3) @ v  # (B, h, Ch, Ch)
        out = self.scale * (q @ context) + filter_(q, v, size)  # (B, h, N, Ch)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TokenMlp(nn.Module):
    """Linear -> GELU(x + depthwise 3x3(x)) -> Linear on tokens (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        local = self.dwconv(x.transpose(1, 2).reshape(b, c, *size)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x + local))


class FrequencyBlock(nn.Module):
    """Official MHCABlock (its shared positional encoding and filter live in the encoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.factoratt_crpe = FrequencyAttention(dim, num_heads)
        self.mlp = TokenMlp(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], cpe: ConvPosEnc, filter_: FrequencyFilter
    ) -> torch.Tensor:
        x = cpe(x, size)
        x = x + self.drop_path(self.factoratt_crpe(self.norm1(x), size, filter_))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class FrequencyEncoder(nn.Module):
    """Official MHCAEncoder: (B, C, H, W) -> same, through ``num_layers`` blocks."""

    def __init__(
        self, dim: int, num_layers: int, num_heads: int, mlp_ratio: int, drop_paths: list[float]
    ) -> None:
        super().__init__()
        self.cpe = ConvPosEnc(dim)
        self.crpe = FrequencyFilter(dim // num_heads, num_heads)
        self.MHCA_layers = nn.ModuleList(
            FrequencyBlock(dim, num_heads, mlp_ratio, drop_paths[i]) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        for layer in self.MHCA_layers:
            tokens = layer(tokens, (h, w), self.cpe, self.crpe)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class Restore(nn.Module):
    """Residual 1x1 (C -> C/2) -> depthwise 3x3 -> 1x1 (C/2 -> C) on the local path."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.conv1 = Conv2d_BN(channels, hidden, act=nn.Hardswish)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv2 = Conv2d_BN(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.norm(self.dwconv(self.conv1(x)))))


class FrequencyStage(nn.Module):
    """Official MHCA_stage with one global path: local + up(global), then a 1x1 to the next
    width. Stage 0 has no encoder: it restores the sum of its two embeddings."""

    def __init__(
        self, dim: int, out_dim: int, num_layers: int, num_heads: int, mlp_ratio: int,
        drop_paths: list[float], has_encoder: bool,
    ) -> None:
        super().__init__()
        self.Restore = Restore(dim)
        self.aggregate = Conv2d_BN(dim, out_dim, act=nn.Hardswish)
        self.mhca_blks = nn.ModuleList(
            [FrequencyEncoder(dim, num_layers, num_heads, mlp_ratio, drop_paths)]
            if has_encoder else []
        )

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        if not self.mhca_blks:
            return self.aggregate(self.Restore(local + global_))
        attended = self.mhca_blks[0](global_)  # (B, C, H/s', W/s')
        if attended.shape[-2:] != local.shape[-2:]:
            attended = F.interpolate(
                attended, size=local.shape[-2:], mode="bilinear", align_corners=True
            )
        return self.aggregate(self.Restore(local) + attended)


class AFFormer(nn.Module):
    """AFFormer-Base: maps of (96, 176, 216, 216) channels at strides (4, 8, 8, 8).

    ``weights`` is a local copy of the official ImageNet checkpoint; None trains from scratch.
    """

    def __init__(
        self,
        arch: str = "base",
        drop_path_rate: float = 0.0,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if arch not in AFFORMER_ARCHS:
            raise UnknownNameError(
                f"unknown AFFormer arch {arch!r}; known: {', '.join(sorted(AFFORMER_ARCHS))}"
            )
        spec = AFFORMER_ARCHS[arch]
        dims = spec.embed_dims
        self.stem = nn.Sequential(
            Conv2d_BN(3, dims[0] // 2, 3, 2, act=nn.Hardswish),
            Conv2d_BN(dims[0] // 2, dims[0], 3, 2, act=nn.Hardswish),
        )
        self.patch_embed_stages = nn.ModuleList(
            PatchEmbedStage(d, strides) for d, strides in zip(dims, EMBED_STRIDES)
        )
        n = sum(spec.num_layers)  # stochastic depth rising linearly (no tensors: meta-device safe)
        rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]
        out_dims = (*dims[1:], dims[-1])
        self.mhca_stages = nn.ModuleList(
            FrequencyStage(
                dims[i], out_dims[i], spec.num_layers[i], spec.num_heads[i], spec.mlp_ratios[i],
                rates[sum(spec.num_layers[:i]):sum(spec.num_layers[:i + 1])], has_encoder=i > 0,
            )
            for i in range(len(dims))
        )
        self.out_channels: list[int] = list(out_dims)
        local_strides = [s for s, _ in EMBED_STRIDES]
        self.out_strides: list[int] = [
            4 * math.prod(local_strides[: i + 1]) for i in range(len(dims))
        ]
        init_backbone_weights(self, linear_std=0.02)
        if weights is not None:
            self.load_pretrained(weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)  # (B, C_0, H/4, W/4)
        features = []
        for embed, stage in zip(self.patch_embed_stages, self.mhca_stages):
            local, global_ = embed(x)
            x = stage(local, global_)
            features.append(x)
        return features

    def load_pretrained(self, path: str | Path) -> None:
        """Load the official ImageNet checkpoint (``AFFormer_base_ImageNet1k.pth``)."""
        load_mapped_state_dict(self, read_state_dict(path), rename_official_key, source=str(path))


# Second names of modules the official blocks share with their encoder.
_SHARED_ALIAS = re.compile(r"\.MHCA_layers\.\d+\.(cpe|crpe|factoratt_crpe\.crpe)\.")
_MLP_DWCONV = re.compile(r"\.mlp\.dwconv\.dwconv\.")


def rename_official_key(name: str) -> str | None:
    """Official key -> ours (None: classifier or a duplicate name of a shared module)."""
    if name.startswith(("cls_head.", "head.")) or _SHARED_ALIAS.search(name):
        return None
    return _MLP_DWCONV.sub(".mlp.dwconv.", name)
