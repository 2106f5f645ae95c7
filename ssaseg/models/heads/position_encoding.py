"""DETR's fixed sine position encoding of a feature grid (no padding), normalised to 2*pi."""

from __future__ import annotations

import math

import torch


def sine_position_encoding(height: int, width: int, num_feats: int = 128,
                           temperature: float = 10000.0, device: torch.device | None = None,
                           eps: float = 1e-6) -> torch.Tensor:
    """(1, 2 * num_feats, H, W): the y encoding, then the x encoding; per axis, channel pairs
    (sin, cos) of position / temperature^(2i / num_feats), positions 1..n scaled to (0, 2*pi]."""
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (height + eps) * 2 * math.pi
    x = x / (width + eps) * 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, num_feats)
        angles = pos[:, None] / dim_t
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], -1).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat([pos_y, pos_x], -1).permute(2, 0, 1)[None]
