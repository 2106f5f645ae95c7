"""Dice loss per (image, present class), the Mask2Former-style form SSA uses, in fp32."""

from __future__ import annotations

import torch


def dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1.0
) -> torch.Tensor:
    """Mean over the (image, class) pairs present in ``labels`` of the sigmoid Dice loss.

    logits: (B, K, H, W), same resolution as labels (B, H, W). For image b and a class k that
    occurs in it: p = sigmoid(logits[b, k]) over ALL pixels (ignored pixels count as
    negatives, as in the reference), t = (labels[b] == k),
    loss = 1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth).
    The sum over pairs is divided by the number of pairs (at least 1), so a batch without
    any labelled pixel gives 0, still attached to the graph.
    """
    batch, num_classes = logits.shape[:2]
    flat_logits = logits.flatten(2)  # (B, K, HW)
    flat_labels = labels.reshape(batch, -1)  # (B, HW)
    with torch.no_grad():
        bins = torch.where(flat_labels == ignore_index, num_classes, flat_labels)  # K = discard
        counts = torch.zeros(batch, num_classes + 1, device=labels.device).scatter_add_(
            1, bins, torch.ones(bins.shape, device=labels.device)
        )[:, :num_classes]  # (B, K)
        image, cls = (counts > 0).nonzero(as_tuple=True)  # the N present (image, class) pairs
    if image.numel() == 0:
        return logits.float().sum() * 0.0
    # only the present pairs are ever used: (N, HW) instead of (B, K, HW)
    prob = flat_logits[image, cls].float().sigmoid()  # (N, HW)
    target = flat_labels[image] == cls[:, None]  # (N, HW)
    intersection = (prob * target).sum(-1)  # (N,)
    loss = 1 - (2 * intersection + smooth) / (prob.sum(-1) + counts[image, cls] + smooth)
    return loss.sum() / image.numel()
