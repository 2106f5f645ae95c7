"""SegNeXt's LightHam head: concatenate the stride-8/16/32 stages at stride 8, squeeze, a
"Hamburger" (1x1 -> NMF matrix decomposition -> 1x1, residual), align (Guo et al. 2022, after
Geng et al., "Is Attention Better Than Matrix Decomposition?", ICLR 2021).

The NMF runs ``train_steps`` multiplicative updates in training and ``eval_steps`` in evaluation
from random non-negative bases drawn at every call, then one more coefficient update. The
reference (SegNeXt's and mmsegmentation's ham_head.py) back-propagates through all the updates;
``one_step_grad=True`` gives HamNet's original one-step gradient (updates under no_grad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput
from ssaseg.models.mixed_precision import autocast_off


class ConvGNReLU(nn.Sequential):
    """1x1 conv (no bias) -> GroupNorm -> optional ReLU, the head's building block."""

    def __init__(
        self, in_channels: int, out_channels: int, num_groups: int = 32, act: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.GroupNorm(num_groups, out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class NMF2D(nn.Module):
    """Low-rank reconstruction ``x ~ bases @ coef^T`` of a non-negative (B, C, H, W) map.

    x is split into ``groups`` slices of D = C / groups channels, each factorised as
    (D, N) ~ (D, R) @ (R, N) by multiplicative updates (no learnable parameters).
    """

    def __init__(
        self,
        rank: int = 64,
        groups: int = 1,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        eps: float = 1e-6,
        one_step_grad: bool = False,
    ) -> None:
        super().__init__()
        self.rank = rank
        self.groups = groups
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.inv_t = inv_t
        self.eps = eps
        self.one_step_grad = one_step_grad

    def _update_coef(
        self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor
    ) -> torch.Tensor:
        # x (G, D, N), bases (G, D, R), coef (G, N, R)
        numerator = x.transpose(1, 2) @ bases  # (G, N, R)
        denominator = coef @ (bases.transpose(1, 2) @ bases)  # (G, N, R)
        return coef * numerator / (denominator + self.eps)

    def _update_bases(
        self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor
    ) -> torch.Tensor:
        numerator = x @ coef  # (G, D, R)
        denominator = bases @ (coef.transpose(1, 2) @ coef)  # (G, D, R)
        return bases * numerator / (denominator + self.eps)

    def _iterate(self, x: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = torch.softmax(self.inv_t * (x.transpose(1, 2) @ bases), dim=-1)  # (G, N, R)
        for _ in range(self.train_steps if self.training else self.eval_steps):
            coef = self._update_coef(x, bases, coef)
            bases = self._update_bases(x, bases, coef)
        return bases, coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        dtype = x.dtype
        # fp32 even under autocast: the updates divide by sums of products
        with autocast_off(x.device.type):
            x = x.float().reshape(b * self.groups, c // self.groups, h * w)  # (G, D, N)
            bases = F.normalize(
                torch.rand(x.shape[0], x.shape[1], self.rank, device=x.device), dim=1
            )  # (G, D, R), random non-negative unit columns
            if self.one_step_grad:
                with torch.no_grad():
                    bases, coef = self._iterate(x, bases)
            else:
                bases, coef = self._iterate(x, bases)
            coef = self._update_coef(x, bases, coef)  # the step the gradient always sees
            x = bases @ coef.transpose(1, 2)  # (G, D, N)
        return x.reshape(b, c, h, w).to(dtype)


class Hamburger(nn.Module):
    """``relu(x + GN(conv(NMF(relu(conv(x))))))``."""

    def __init__(self, channels: int, nmf: NMF2D, num_groups: int = 32) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham = nmf
        self.ham_out = ConvGNReLU(channels, channels, num_groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy = self.ham_out(self.ham(F.relu(self.ham_in(x))))
        return F.relu(x + enjoy)


class LightHamHead(nn.Module):
    """Reference settings for SegNeXt-T: stages (1, 2, 3), ham_channels = channels = 256,
    rank 16, GroupNorm(32) everywhere. Output (B, channels, H/8, W/8)."""

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        in_index: tuple[int, ...] = (1, 2, 3),
        channels: int = 256,
        ham_channels: int = 256,
        rank: int = 16,
        groups: int = 1,
        train_steps: int = 6,
        eval_steps: int = 7,
        one_step_grad: bool = False,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.in_index = tuple(in_index)
        concatenated = sum(in_channels[i] for i in self.in_index)
        self.squeeze = ConvGNReLU(concatenated, ham_channels, num_groups)
        nmf = NMF2D(rank, groups, train_steps, eval_steps, one_step_grad=one_step_grad)
        self.hamburger = Hamburger(ham_channels, nmf, num_groups)
        self.align = ConvGNReLU(ham_channels, channels, num_groups)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        chosen = [features[i] for i in self.in_index]
        size = chosen[0].shape[-2:]
        upsampled = [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in chosen[1:]
        ]
        x = torch.cat([chosen[0], *upsampled], dim=1)  # (B, sum C_i, H/8, W/8)
        return HeadOutput(self.align(self.hamburger(self.squeeze(x))))
