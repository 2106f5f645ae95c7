"""Reading maps at continuous points, as Mask2Former's losses do (PointRend's point sampling).

Points are (x, y) in [0, 1] over the whole map; a map is read bilinearly at pixel coordinates
(x * W - 0.5, y * H - 0.5), zero outside (``grid_sample`` with ``align_corners=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """maps (N, C, h, w), points (N, P, 2) -> (N, C, P)."""
    return F.grid_sample(maps, 2 * points[:, :, None] - 1, mode="bilinear",
                         padding_mode="zeros", align_corners=False)[..., 0]


def sample_label_masks(labels: torch.Tensor, images: torch.Tensor, classes: torch.Tensor,
                       points: torch.Tensor) -> torch.Tensor:
    """The binary masks ``labels[images[n]] == classes[n]`` read at ``points[n]``, bilinearly,
    without building the (N, H, W) masks: (N, P) float.

    labels (B, H, W) int; images, classes (N,) int; points (N, P, 2). Equal to
    ``point_sample((labels[images] == classes[:, None, None]).float()[:, None], points)[:, 0]``.
    """
    height, width = labels.shape[-2:]
    x = points[..., 0] * width - 0.5  # (N, P)
    y = points[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    flat = labels.reshape(-1)  # (B*H*W,)
    base = (images * (height * width))[:, None]  # (N, 1): start of each mask's image
    out = torch.zeros_like(x)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())  # (N, P)
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).long() + base
            hit = (flat[index] == classes[:, None]) & inside  # (N, P)
            out = out + weight * hit
    return out


def uncertain_points(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                     importance_sample_ratio: float) -> torch.Tensor:
    """Mask2Former's training points for N masks (N, 1, h, w): draw ``num_points *
    oversample_ratio`` uniform points, keep the ``importance_sample_ratio`` share of
    ``num_points`` where the logit is closest to 0, fill up with fresh uniform points.
    Returns (N, num_points, 2)."""
    count = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(count, num_sampled, 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates)[:, 0].abs()  # (N, num_sampled)
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    chosen = candidates.gather(1, index[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        fresh = torch.rand(count, num_random, 2, device=mask_logits.device)
        chosen = torch.cat([chosen, fresh], dim=1)
    return chosen
