"""Evaluation: confusion-matrix mIoU, per-class IoU, pixel accuracy; whole-image or sliding-window
inference. The ignore index is excluded from every count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssaseg.models.losses import resize_logits


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignored pixels dropped."""
    valid = target != ignore_index
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class SegmentationMetrics:
    iou: list[float]  # per class; NaN where the class is absent from both prediction and truth
    accuracy: list[float]  # per-class recall; NaN where absent from the ground truth
    miou: float
    macc: float
    pixel_accuracy: float

    @classmethod
    def from_confusion(cls, cm: torch.Tensor) -> SegmentationMetrics:
        cm = cm.double()
        tp = cm.diag()
        gt, pred = cm.sum(1), cm.sum(0)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, math.nan))
        total = cm.sum()
        return cls(
            iou=iou.tolist(), accuracy=acc.tolist(),
            miou=float(iou.nanmean()) if bool((union > 0).any()) else math.nan,
            macc=float(acc.nanmean()) if bool((gt > 0).any()) else math.nan,
            pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        )


def slide_logits(model, image: torch.Tensor, num_classes: int, crop: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """Sliding-window inference: (1, 3, H, W) -> (1, K, H, W) averaged logits.

    Images smaller than the window are zero-padded to it; windows are batched into one forward.
    """
    _, _, h, w = image.shape
    ch, cw = crop
    sh, sw = stride
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    padded = F.pad(image, (0, pw, 0, ph))
    H, W = padded.shape[-2:]
    rows = list(range(0, max(H - ch, 0) + 1, sh))
    cols = list(range(0, max(W - cw, 0) + 1, sw))
    if rows[-1] + ch < H:
        rows.append(H - ch)
    if cols[-1] + cw < W:
        cols.append(W - cw)
    windows = torch.cat([padded[..., y:y + ch, x:x + cw] for y in rows for x in cols])
    win_logits = model.predict(windows)  # (N, K, ch, cw)
    logits = padded.new_zeros((1, num_classes, H, W))
    counts = padded.new_zeros((1, 1, H, W))
    for i, (y, x) in enumerate((y, x) for y in rows for x in cols):
        logits[..., y:y + ch, x:x + cw] += win_logits[i]
        counts[..., y:y + ch, x:x + cw] += 1
    return (logits / counts)[..., :h, :w]


@torch.no_grad()
def evaluate(model, dataset, device: torch.device, mode: str = "whole",
             crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (341, 341),
             progress: bool = False) -> tuple[SegmentationMetrics, torch.Tensor]:
    """Metrics and the confusion matrix of ``model`` over every image of ``dataset``."""
    from tqdm import tqdm

    num_classes, ignore = dataset.meta.num_classes, dataset.meta.ignore_index
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    model.eval()
    for index in tqdm(range(len(dataset)), disable=not progress, desc="evaluate", mininterval=2):
        image, label = dataset[index]
        image, label = image[None].to(device), label.to(device)
        if mode == "slide":
            logits = slide_logits(model, image, num_classes, crop, stride)
        else:
            logits = resize_logits(model.predict(image), label.shape)
        cm += confusion_matrix(logits.argmax(1)[0], label, num_classes, ignore)
    return SegmentationMetrics.from_confusion(cm.cpu()), cm.cpu()
