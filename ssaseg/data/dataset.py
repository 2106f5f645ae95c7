"""Torch datasets over the common on-disk layout, and the deterministic training sampler.

Training batches are a pure function of (seed, iteration): the sample indices come from a
per-epoch permutation and every augmentation draws from a generator seeded by
(seed, iteration, position in batch). A run resumed from a checkpoint therefore sees exactly the
batches an uninterrupted run would have seen.

Items are uint8 (the DataLoader moves a quarter of the bytes float32 would take); the training
loop and evaluation normalise them on the device (:func:`ssaseg.data.transforms.normalize`), as
mmseg's data preprocessor does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ssaseg.data.layout import DatasetError, read_manifest, read_meta
from ssaseg.data.transforms import EvalPipeline, TrainPipeline, class_counts
from ssaseg.errors import ParameterError


class Sample(NamedTuple):
    """One item (the DataLoader stacks each field over the batch).

    image: (H, W, 3) uint8 RGB, augmented or test-resized, zero-padded to the crop in training;
        :func:`ssaseg.data.transforms.normalize` turns a batch of them into the model's
        (B, 3, H, W) input on the device
    label: (H, W) uint8 (int64 where the ignore index exceeds 255; ``.long()`` on the device);
        in training the augmented labels padded with the ignore index, in evaluation the
        ORIGINAL labels (the logits are resized to them, as mmseg scores)
    valid_size: (2,) int64 (h, w) of the image inside the padding
    """

    image: torch.Tensor
    label: torch.Tensor
    valid_size: torch.Tensor


def opencv_single_threaded(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: OpenCV without its own thread pool in the workers (as
    mmengine sets it), since the workers are the parallelism."""
    cv2.setNumThreads(0)


def augmentation_rng(aug_seed: int) -> np.random.RandomState:
    """The generator of one training sample's augmentation draws (a legacy RandomState: the
    transforms call it exactly as mmseg calls NumPy's global one; any 64-bit seed)."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(aug_seed)))


def _read_pair(root: Path, image_rel: str, label_rel: str, num_classes: int, ignore_index: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image and (H, W) uint8 label map, checked.

    The image is decoded by OpenCV like mmseg's LoadImageFromFile (its default 'cv2' backend,
    which also applies a JPEG's EXIF orientation), the label by Pillow like its LoadAnnotations.
    """
    image = cv2.imread(str(root / image_rel), cv2.IMREAD_COLOR)
    try:
        label = np.array(Image.open(root / label_rel))  # writable: it becomes a tensor
    except (OSError, UnidentifiedImageError) as exc:
        label, error = None, exc
    else:
        error = None
    if image is None or label is None:
        raise DatasetError(f"cannot read {root / image_rel} or {root / label_rel}"
                           f"{f': {error}' if error else ''}; re-run prepare (or `dvc pull`) to "
                           "restore it")
    if label.ndim != 2:
        raise DatasetError(f"{root / label_rel}: label map must be single-channel")
    if label.shape != image.shape[:2]:
        raise DatasetError(f"{root / label_rel}: label size {label.shape} differs from its image "
                           f"{root / image_rel} {image.shape[:2]}")
    counts = class_counts(label)
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != ignore_index]
    if bad:
        raise DatasetError(f"{root / label_rel}: label values {bad} outside "
                           f"[0, {num_classes}) and not the ignore index {ignore_index}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), label.astype(np.uint8, copy=False)


class SegmentationDataset(Dataset):
    """Items of one split; ``__getitem__`` takes an index (eval) or (index, aug_seed) (train).

    Training items go through ``train_pipeline`` (mmseg's augmentation), evaluation items
    through ``eval_pipeline`` (mmseg's test resize; their labels stay as stored).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        train: bool = False,
        train_pipeline: TrainPipeline | None = None,
        eval_pipeline: EvalPipeline | None = None,
    ) -> None:
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.items = read_manifest(self.root, split)["splits"][split]["items"]
        self.train = train
        if train and train_pipeline is None:
            raise ValueError("a training dataset needs its train_pipeline")
        self.train_pipeline = train_pipeline
        self.eval_pipeline = eval_pipeline or EvalPipeline()

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored (H, W, 3) uint8 RGB image and (H, W) uint8 labels of item ``index``."""
        image_rel, label_rel = self.items[index]
        return _read_pair(self.root, image_rel, label_rel, self.meta.num_classes,
                          self.meta.ignore_index)

    def __getitem__(self, key) -> Sample:
        if self.train:
            index, aug_seed = key
            image, label = self.load(index)
            image, label = self.train_pipeline(image, label, augmentation_rng(aug_seed))
            return self._padded(image, label, self.train_pipeline.crop_size)
        image, label = self.load(key)
        image = self.eval_pipeline(image)
        return Sample(torch.from_numpy(np.ascontiguousarray(image)),
                      torch.from_numpy(label.astype(self._label_dtype, copy=False)),
                      torch.tensor(image.shape[:2], dtype=torch.int64))

    @property
    def _label_dtype(self) -> type:
        return np.uint8 if self.meta.ignore_index <= 255 else np.int64

    def _padded(self, image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> Sample:
        """Image and labels at the top left of a (h, w) = ``size`` canvas: image 0 there (the
        normalisation zeroes it again after the mean is subtracted, as mmseg pads), labels the
        ignore index."""
        height, width = label.shape
        valid = torch.tensor((height, width), dtype=torch.int64)
        if (height, width) == tuple(size):
            return Sample(torch.from_numpy(np.ascontiguousarray(image)),
                          torch.from_numpy(label.astype(self._label_dtype)), valid)
        canvas = np.zeros((*size, 3), dtype=np.uint8)
        canvas[:height, :width] = image
        labels = np.full(size, self.meta.ignore_index, dtype=self._label_dtype)
        labels[:height, :width] = label
        return Sample(torch.from_numpy(canvas), torch.from_numpy(labels), valid)


class TrainBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (index, aug_seed) for iterations [start, iters): a pure function of the seed.

    With ``world_size`` > 1 each rank yields its own contiguous share of every global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, iters: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ParameterError(f"train.batch_size {batch_size} is not divisible by {world_size} "
                                 "processes; make it a multiple of train.gpus")
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
