"""Torch datasets over the common on-disk layout, and the deterministic training sampler.

Training batches are a pure function of (seed, iteration): the sample indices come from a
per-epoch permutation and every augmentation draws from a generator seeded by
(seed, iteration, position in batch). A run resumed from a checkpoint therefore sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ssaseg.data.layout import DatasetError, read_manifest, read_meta

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def normalize(image_uint8: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, H, W) float, ImageNet mean/std."""
    return (image_uint8.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _read_pair(root: Path, image_rel: str, label_rel: str, num_classes: int, ignore_index: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) uint8 image and (H, W) int64 label, checked."""
    try:
        image = np.asarray(Image.open(root / image_rel).convert("RGB"))
        label = np.asarray(Image.open(root / label_rel))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read {root / image_rel} or {root / label_rel}: {exc}; "
                           "re-run prepare (or `dvc pull`) to restore it") from exc
    if label.ndim != 2:
        raise DatasetError(f"{root / label_rel}: label map must be single-channel")
    if label.shape != image.shape[:2]:
        raise DatasetError(f"{root / label_rel}: label size {label.shape} differs from its image "
                           f"{root / image_rel} {image.shape[:2]}")
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(num_classes), ignore_index])
    if bad.size:
        raise DatasetError(f"{root / label_rel}: label values {bad.tolist()} outside "
                           f"[0, {num_classes}) and not the ignore index {ignore_index}")
    return (torch.from_numpy(image.copy()).permute(2, 0, 1),
            torch.from_numpy(label.astype(np.int64)))


class SegmentationDataset(Dataset):
    """Items of one split; ``__getitem__`` takes an index (eval) or (index, aug_seed) (train)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        train: bool = False,
        crop_size: tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.items = read_manifest(self.root, split)["splits"][split]["items"]
        self.train = train
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.base_size = base_size

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_rel, label_rel = self.items[index]
        return _read_pair(self.root, image_rel, label_rel, self.meta.num_classes,
                          self.meta.ignore_index)

    def __getitem__(self, key):
        if self.train:
            index, aug_seed = key
            image, label = self.load(index)
            image, label = self._augment(image, label, torch.Generator().manual_seed(aug_seed))
        else:
            image, label = self.load(key)
        return normalize(image), label

    def _augment(self, image: torch.Tensor, label: torch.Tensor, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random rescale, random crop (padding with ignore when too small), horizontal flip."""
        h, w = label.shape
        lo, hi = self.scale_range
        ratio = lo + (hi - lo) * float(torch.rand((), generator=gen))
        if self.base_size is not None:  # mmseg: scale to fit (long, short) first
            long_side, short_side = self.base_size
            ratio *= min(long_side / max(h, w), short_side / min(h, w))
        nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear",
                              align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
        ch, cw = self.crop_size
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=self.meta.ignore_index)
        top = int(torch.randint(0, image.shape[1] - ch + 1, (), generator=gen))
        left = int(torch.randint(0, image.shape[2] - cw + 1, (), generator=gen))
        image, label = image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if float(torch.rand((), generator=gen)) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.round().clamp(0, 255).to(torch.uint8), label


class TrainBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (index, aug_seed) for iterations [start, iters): a pure function of the seed.

    With ``world_size`` > 1 each rank yields its own contiguous share of every global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, iters: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.iters, self.rank, self.world_size = start, iters, rank, world_size
        self._order: tuple[int, torch.Tensor] = (-1, torch.empty(0))

    def __len__(self) -> int:
        return self.iters - self.start

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order[0] != epoch:  # one permutation per epoch, computed once
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.num_items, generator=gen))
        return self._order[1]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        first = iteration * self.batch_size
        positions = range(first, first + self.batch_size)
        per_rank = self.batch_size // self.world_size
        positions = positions[self.rank * per_rank:(self.rank + 1) * per_rank]
        out = []
        for pos in positions:
            epoch, offset = divmod(pos, self.num_items)
            index = int(self._epoch_order(epoch)[offset])
            out.append((index, (self.seed * 7_919 + pos) % (2**63)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.iters):
            yield self.batch(iteration)
