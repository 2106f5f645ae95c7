"""Boundaries of a label map, computed with tensor ops on the labels' device.

The SSA reference runs OpenCV's Canny on each label map on the CPU, blanks a 6-pixel frame,
then dilates with a ``width`` x ``width`` square. On a piecewise-constant label map Canny
returns a one-pixel line along every change of label; here that line is the set of pixels
whose right or lower neighbour carries a different label (the ignore value counts as a label,
as it does for Canny), and the dilation is a max-pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_boundaries(labels: torch.Tensor, width: int = 3, margin: int = 6) -> torch.Tensor:
    """Boolean (B, h, w) mask of the pixels within the dilated label edges.

    labels: (B, h, w) integer label map. ``width``: side of the square dilation window (1 = the
    one-pixel edge itself; even widths reach one pixel further up/left, like OpenCV's centred
    anchor). ``margin``: edges closer than this many pixels to the image border are dropped
    before the dilation (the reference uses 6).
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    edges = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)  # (B, h, w)
    edges[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]  # change to the right
    edges[:, :-1, :] |= labels[:, 1:, :] != labels[:, :-1, :]  # change downwards
    if margin > 0:
        frame = torch.ones_like(edges[0])  # (h, w)
        frame[margin:-margin, margin:-margin] = False
        edges &= ~frame
    if width == 1:
        return edges
    before, after = width // 2, (width - 1) // 2  # window covers offsets -before..after
    # (B, 1, h + width - 1, w + width - 1)
    padded = F.pad(edges[:, None].float(), (before, after, before, after))
    return F.max_pool2d(padded, kernel_size=width, stride=1)[:, 0] > 0  # (B, h, w)
