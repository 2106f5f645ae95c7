"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021) in plain PyTorch.

Each query looks at ``num_points`` locations on each of ``num_levels`` feature maps, per head.
The locations are the query's reference point plus learned offsets (in pixels of each level,
predicted from the query); the values there are read by bilinear interpolation (zero outside
the map) and summed with learned weights (a softmax over levels x points, also predicted from
the query). Used by the ViT-Adapter's injectors and extractors and by Mask2Former's pixel
decoder.

The sampling is :func:`torch.nn.functional.grid_sample` with ``align_corners=False`` and zero
padding, which reads a location (x, y) in [0, 1] at pixel coordinates (x * W - 0.5, y * H - 0.5)
exactly as the compiled CUDA kernels of the reference implementations do; one call per level
(levels are few), every query, head and point of a level in that call. It runs on CPU and GPU
alike and needs nothing compiled. Under autocast the sampling runs in fp32 (the reference
kernels cast their inputs to fp32 too); the projections follow autocast.

Shapes: B images, Q queries, S = sum of H_l * W_l value positions, M heads, L levels, P points,
D = value channels per head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.mixed_precision import autocast_off

SpatialShapes = Sequence[tuple[int, int]]


def multi_scale_deformable_sampling(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The attention core: weighted sum of bilinearly sampled values.

    value: (B, S, M, D), the levels' positions concatenated row-major, level after level;
    spatial_shapes: L pairs (H_l, W_l) with sum(H_l * W_l) == S;
    sampling_locations: (B, Q, M, L, P, 2), (x, y) normalised to [0, 1] per level;
    attention_weights: (B, Q, M, L, P), already normalised.
    Returns (B, Q, M * D).
    """
    batch, positions, heads, dims = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    if len(sizes) != levels or sum(sizes) != positions:
        raise ValueError(
            f"spatial_shapes {list(spatial_shapes)} cover {sum(sizes)} positions in "
            f"{len(sizes)} levels; value has {positions} and the locations {levels} levels"
        )
    # (B, Q, M, L, P, 2) -> (B, M, Q, L, P, 2) -> (B*M, Q, L, P, 2), grid_sample's [-1, 1]
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)
    sampled = []
    for level, (value_l, (height, width)) in enumerate(zip(value.split(sizes, dim=1),
                                                            spatial_shapes)):
        # (B, H*W, M, D) -> (B, M, D, H*W) -> (B*M, D, H, W)
        value_l = value_l.permute(0, 2, 3, 1).reshape(batch * heads, dims, height, width)
        sampled.append(F.grid_sample(value_l, grids[:, :, level], mode="bilinear",
                                     padding_mode="zeros", align_corners=False))  # (B*M, D, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    # (B, Q, M, L, P) -> (B, M, Q, L, P) -> (B*M, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (stacked * weights).sum(-1)  # (B*M, D, Q)
    return out.view(batch, heads * dims, queries).transpose(1, 2)  # (B, Q, M*D)


def level_start_offsets(spatial_shapes: SpatialShapes) -> list[int]:
    """Index of each level's first position in the concatenated value sequence."""
    starts, total = [], 0
    for height, width in spatial_shapes:
        starts.append(total)
        total += height * width
    return starts


def reference_grid(spatial_shapes: SpatialShapes, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1], as (x, y): (S, 2), row-major."""
    grids = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        grids.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
    return torch.cat(grids, 0)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over a multi-level value sequence; no residual, no
    dropout (the callers add their own).

    Args:
        embed_dims: C, channels of queries and value inputs (and of the output).
        num_heads: M.
        num_levels: L.
        num_points: P, sampling points per head and level.
        value_ratio: the value projection has ``C * value_ratio`` channels (the ViT-Adapter's
            ``deform_ratio``; 1 in Deformable DETR and Mask2Former).

    Parameters are named as in every reference implementation (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``) and initialised like them: zero
    offset weights with a bias that starts head m's points on a ray at angle 2*pi*m/M, points
    1..P pixels out; zero attention logits; Xavier-uniform projections.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, value_ratio: float = 1.0) -> None:
        super().__init__()
        value_dims = int(embed_dims * value_ratio)
        if value_dims % num_heads:
            raise ValueError(f"value channels {value_dims} (embed_dims {embed_dims} x "
                             f"value_ratio {value_ratio}) must be divisible by num_heads "
                             f"{num_heads}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.value_dims = value_dims
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_dims)
        self.output_proj = nn.Linear(value_dims, embed_dims)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        if self.sampling_offsets.weight.device.type != "meta":
            angles = torch.arange(self.num_heads, dtype=torch.float32) * (
                2.0 * math.pi / self.num_heads)
            ray = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
            ray = ray / ray.abs().max(-1, keepdim=True).values  # onto the unit square's border
            steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
            bias = ray[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
            bias = bias.expand(-1, self.num_levels, -1, -1)  # (M, L, P, 2)
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: SpatialShapes,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, Q, C); reference_points (B or 1, Q, L or 1, 2) as (x, y) in [0, 1];
        value_input (B, S, C) over the levels of ``spatial_shapes``; padding_mask (B, S), True
        where a position is padding (its value is zeroed). Returns (B, Q, C)."""
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"{len(spatial_shapes)} levels given, the attention has {levels}")
        value = self.value_proj(value_input)  # (B, S, C')
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], heads, self.value_dims // heads)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        # offsets are in pixels of each level: divide by (W_l, H_l)
        normaliser = torch.tensor([(w, h) for h, w in spatial_shapes], device=query.device,
                                  dtype=offsets.dtype)  # (L, 2)
        locations = (reference_points[:, :, None, :, None, :]
                     + offsets / normaliser[None, None, None, :, None, :])  # (B, Q, M, L, P, 2)
        with autocast_off(query.device.type):
            out = multi_scale_deformable_sampling(
                value.float(), spatial_shapes, locations.float(), weights.float()
            )  # (B, Q, C')
        return self.output_proj(out.to(value.dtype))
