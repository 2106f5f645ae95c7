"""Evaluation: confusion-matrix mIoU, per-class IoU, pixel accuracy; whole-image or sliding-window
inference, scored on the original labels as mmseg scores (tests/test_mmseg_pipeline.py checks it
against mmseg's IoUMetric). The ignore index is excluded from every count.

Beside the dataset-wide confusion matrix, :func:`evaluate_per_image` keeps each image's
intersection and union per class (:class:`PerImageCounts`): their sums over the images are the
confusion matrix's diagonal and unions, and they are what the paired bootstrap over test images
(:mod:`ssaseg.statistics`) resamples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ssaseg.data.dataset import opencv_single_threaded
from ssaseg.data.transforms import normalize
from ssaseg.models.losses import resize_logits


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignored pixels dropped."""
    valid = target != ignore_index
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class PerImageCounts:
    """Per test image and class: intersection (true positives), union (truth + prediction -
    intersection) and ground-truth pixels, each (N, K) int64; ignored pixels excluded."""

    intersection: torch.Tensor  # (N, K)
    union: torch.Tensor  # (N, K)
    label_pixels: torch.Tensor  # (N, K)

    @staticmethod
    def rows(cm: torch.Tensor) -> torch.Tensor:
        """One image's confusion matrix (K, K), rows = truth -> (3, K): intersection, union,
        ground-truth pixels."""
        tp, gt = cm.diagonal(), cm.sum(1)
        return torch.stack([tp, gt + cm.sum(0) - tp, gt])

    def save(self, path) -> None:
        """An ``.npz`` (arrays ``intersection``, ``union``, ``label_pixels``), written atomically."""
        import io

        import numpy as np

        from ssaseg import atomic_io

        buf = io.BytesIO()
        np.savez_compressed(buf, intersection=self.intersection.numpy(),
                            union=self.union.numpy(), label_pixels=self.label_pixels.numpy())
        atomic_io.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> PerImageCounts:
        import numpy as np

        with np.load(path) as data:
            return cls(*(torch.from_numpy(data[k]) for k in
                         ("intersection", "union", "label_pixels")))


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


def slide_windows(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
                  ) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of mmseg's sliding windows over an (height, width) image: a grid of
    ``stride`` steps, the last window of each row and column moved back inside the image; a
    side shorter than the window is covered once, unpadded (EncoderDecoder.slide_inference)."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_logits(model, image: torch.Tensor, num_classes: int, crop: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """Sliding-window inference as mmseg's: (1, 3, H, W) -> (1, K, H, W), each pixel's logits
    averaged over the windows that cover it. The windows (all of one size) go through the model
    as one batch."""
    _, _, height, width = image.shape
    windows = slide_windows(height, width, crop, stride)
    crops = torch.cat([image[..., y1:y2, x1:x2] for y1, y2, x1, x2 in windows])
    crop_logits = model.predict(crops)  # (N, K, h, w)
    logits = image.new_zeros((1, num_classes, height, width))
    counts = image.new_zeros((1, 1, height, width))
    for i, (y1, y2, x1, x2) in enumerate(windows):
        logits[..., y1:y2, x1:x2] += crop_logits[i]
        counts[..., y1:y2, x1:x2] += 1
    return logits / counts


def evaluate(model, dataset, device: torch.device, mode: str = "whole",
             crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (341, 341),
             num_workers: int = 0, progress: bool = False
             ) -> tuple[SegmentationMetrics, torch.Tensor]:
    """Metrics and the confusion matrix of ``model`` over every image of ``dataset``, scored
    as mmseg scores: the dataset gives each image resized to the test scale and its original
    labels; the logits (whole image or sliding windows) are resized bilinearly to the labels'
    size before the argmax. Images are read by ``num_workers`` DataLoader workers (pinned
    memory on CUDA), one image per batch (their sizes differ)."""
    metrics, cm, _ = evaluate_per_image(model, dataset, device, mode, crop, stride, num_workers,
                                        progress)
    return metrics, cm


@torch.no_grad()
def evaluate_per_image(model, dataset, device: torch.device, mode: str = "whole",
                       crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (341, 341),
                       num_workers: int = 0, progress: bool = False
                       ) -> tuple[SegmentationMetrics, torch.Tensor, PerImageCounts]:
    """:func:`evaluate`, and each image's counts (:class:`PerImageCounts`, images in the
    dataset's order); the confusion matrix is the sum of the images' matrices."""
    from tqdm import tqdm

    num_classes, ignore = dataset.meta.num_classes, dataset.meta.ignore_index
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    counts = torch.zeros(3, len(dataset), num_classes, dtype=torch.int64,
                         device=device)  # (3, N, K)
    loader = DataLoader(dataset, batch_size=1, num_workers=num_workers,
                        pin_memory=device.type == "cuda",
                        worker_init_fn=opencv_single_threaded if num_workers else None)
    model.eval()
    for index, sample in enumerate(tqdm(loader, disable=not progress, desc="evaluate",
                                        mininterval=2)):
        image = normalize(sample.image.to(device, non_blocking=True))  # (1, 3, h, w)
        label = sample.label[0].to(device, non_blocking=True).long()  # (H, W), as stored
        if mode == "slide":
            logits = slide_logits(model, image, num_classes, crop, stride)
        else:
            logits = model.predict(image)
        logits = resize_logits(logits, label.shape)  # (1, K, H, W)
        image_cm = confusion_matrix(logits.argmax(1)[0], label, num_classes, ignore)  # (K, K)
        cm += image_cm
        counts[:, index] = PerImageCounts.rows(image_cm)
    cm = cm.cpu()
    return SegmentationMetrics.from_confusion(cm), cm, PerImageCounts(*counts.cpu())
