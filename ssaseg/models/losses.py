"""Loss functions shared by classifiers and auxiliary heads; always evaluated in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssaseg.errors import ParameterError


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) logits to ``size`` (no-op when already that size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, H, W) integer labels to ``size``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def segmentation_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel cross-entropy of (B, K, h, w) logits, upsampled to the (B, H, W) labels, in fp32.

    ``class_weight`` (K,): each pixel's term weighted by its class, the mean taken over the
    weights (``torch.nn.CrossEntropyLoss(weight=...)``, as ProtoSeg's loss). Returns 0 (still
    attached to the graph) when every pixel is ignored, instead of NaN.
    """
    logits = resize_logits(logits.float(), labels.shape[-2:])
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    weight = None if class_weight is None else class_weight.float()
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index)


def class_weight_buffer(module: torch.nn.Module, name: str, class_weight, num_classes: int
                        ) -> None:
    """Register ``class_weight`` (None or K positive numbers) on ``module`` as a non-persistent
    buffer ``class_weight`` (it follows the module's device; checkpoints keep their keys);
    a wrong length or value is an error naming the classifier ``name``."""
    if class_weight is not None:
        values = [float(v) for v in class_weight]
        if len(values) != num_classes or min(values) <= 0:
            raise ParameterError(
                f"{name} classifier: class_weight needs {num_classes} positive values (one per "
                f"class of the dataset), got {len(values)}"
                + (f" with minimum {min(values)}" if values else ""))
        class_weight = torch.tensor(values, dtype=torch.float32)
    module.register_buffer("class_weight", class_weight, persistent=False)
