"""mmsegmentation's training and test pipelines, written on OpenCV and NumPy.

What mmsegmentation 1.2.2 (with mmcv 2.1) does to an image between the file and the model, step
for step and number for number, because every published figure we compare against was trained
and scored that way (mmseg 0.x, which the SSA-Seg reference code uses, does the same arithmetic):

    training  (mmseg configs/_base_/datasets/<dataset>.py, train_pipeline)
        RandomResize(scale, ratio_range, keep_ratio=True)   random_resize
        RandomCrop(crop_size, cat_max_ratio=0.75)           random_crop
        RandomFlip(prob=0.5)                                random_flip
        PhotoMetricDistortion()                             photometric_distortion
        SegDataPreProcessor: normalise, pad to the crop     normalize (on the device)
    test      (test_pipeline; the model's test_cfg)
        Resize(scale, keep_ratio=True) [ResizeToMultiple]   EvalPipeline
        whole or sliding-window inference, logits resized to the original size: engine/evaluate.py

Arrays here are (H, W, 3) uint8 RGB images and (H, W) uint8 label maps. mmseg holds images in
BGR; every step below is channel-symmetric or uses OpenCV's RGB twin of mmseg's BGR conversion,
so the values are the same (tests/test_mmseg_pipeline.py checks that against mmseg itself).

Random draws: each random step takes a ``numpy.random.RandomState`` and calls it exactly as
mmseg's transforms call NumPy's global generator (same methods, same order), so one generator
state gives mmseg's augmentation exactly. Where mmseg converts to float32 per pixel and back
(brightness, contrast, saturation, hue), we apply the same float32 arithmetic to the 256 possible
values once and look the pixels up (``cv2.LUT``): the same numbers, several times faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

# mmseg's SegDataPreProcessor: ImageNet mean / std on the 0-255 scale (RGB)
MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)

# cat_max_ratio: mmseg's RandomCrop re-draws at most this many times (then keeps the last draw)
CROP_REDRAWS = 10


def class_counts(label: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel counts of each value of a uint8 label map (OpenCV's histogram, exact
    below 2**24 pixels per value; NumPy's bincount beyond)."""
    if label.size >= 2**24:
        return np.bincount(label.ravel(), minlength=256)
    hist = cv2.calcHist([np.ascontiguousarray(label)], [0], None, [256], [0, 256])
    return hist.reshape(-1).astype(np.int64)  # (256, 1) in OpenCV 4, (256,) in 5


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(new_h, new_w) of a keep-ratio resize into ``scale`` = (long side, short side), the
    largest size that fits both: mmcv.rescale_size, including its rounding (``int(x + 0.5)``)."""
    long_side, short_side = max(scale), min(scale)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def resize_keep_ratio(image: np.ndarray, scale: tuple[int, int], nearest: bool = False
                      ) -> np.ndarray:
    """mmcv.imrescale: keep-ratio resize into ``scale`` (long, short); bilinear (images) or
    nearest (label maps), by OpenCV as mmcv's default 'cv2' backend."""
    new_h, new_w = rescale_size(image.shape[0], image.shape[1], scale)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def resize_to_multiple(image: np.ndarray, divisor: int) -> np.ndarray:
    """mmseg's ResizeToMultiple: bilinear resize up to the next multiple of ``divisor``."""
    height, width = image.shape[:2]
    new_h, new_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    if (new_h, new_w) == (height, width):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def random_resize(image: np.ndarray, label: np.ndarray, scale: tuple[int, int] | None,
                  ratio_range: tuple[float, float], rng: np.random.RandomState
                  ) -> tuple[np.ndarray, np.ndarray]:
    """mmcv's RandomResize(scale, ratio_range, keep_ratio=True): the scale times a uniform ratio,
    each side truncated to an integer, then a keep-ratio resize into it. ``scale`` None: the
    image's own (long, short) size (a rescale by the ratio alone)."""
    if scale is None:
        scale = (max(image.shape[:2]), min(image.shape[:2]))
    low, high = ratio_range
    ratio = rng.random_sample() * (high - low) + low
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return resize_keep_ratio(image, target), resize_keep_ratio(label, target, nearest=True)


def random_crop(image: np.ndarray, label: np.ndarray, crop_size: tuple[int, int],
                cat_max_ratio: float, ignore_index: int, rng: np.random.RandomState
                ) -> tuple[np.ndarray, np.ndarray]:
    """mmseg's RandomCrop: a uniformly placed (h, w) crop (smaller where the image is). With
    ``cat_max_ratio`` < 1 the crop is re-drawn, up to 10 times, while it holds fewer than two
    classes or one class covers ``cat_max_ratio`` or more of its labelled pixels (the ignore
    index not counted); the last draw stands."""
    crop_h, crop_w = crop_size
    margin_h = max(image.shape[0] - crop_h, 0)
    margin_w = max(image.shape[1] - crop_w, 0)

    def draw() -> tuple[int, int]:
        return rng.randint(0, margin_h + 1), rng.randint(0, margin_w + 1)

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(CROP_REDRAWS):
            counts = class_counts(label[top:top + crop_h, left:left + crop_w])
            if 0 <= ignore_index < counts.size:
                counts[ignore_index] = 0
            present = counts[counts > 0]
            if present.size > 1 and present.max() / present.sum() < cat_max_ratio:
                break
            top, left = draw()
    return (image[top:top + crop_h, left:left + crop_w],
            label[top:top + crop_h, left:left + crop_w])


def random_flip(image: np.ndarray, label: np.ndarray, prob: float, rng: np.random.RandomState
                ) -> tuple[np.ndarray, np.ndarray]:
    """mmcv's RandomFlip(prob) (horizontal). mmcv draws ``np.random.choice(['horizontal',
    None], p=[prob, 1 - prob])``: one uniform draw u, flipped when u < prob / (prob + (1 - prob))
    (choice's normalised cumulative probability)."""
    if rng.random_sample() < prob / (prob + (1.0 - prob)):
        return cv2.flip(image, 1), cv2.flip(label, 1)
    return image, label


def _affine_lut(alpha: float = 1, beta: float = 0) -> np.ndarray:
    """mmseg's PhotoMetricDistortion.convert (float32 times alpha plus beta, clipped to [0, 255],
    truncated to uint8) for each of the 256 uint8 values."""
    values = np.arange(256, dtype=np.float32) * alpha + beta
    return np.clip(values, 0, 255).astype(np.uint8)


def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut`` on every value of a uint8 image. Where the table is a saturated integer offset
    (brightness, nearly always) OpenCV's saturating add / subtract gives the same values about
    ten times faster than the table look-up."""
    offset = int(lut[128]) - 128
    if np.array_equal(lut, np.clip(np.arange(256) + offset, 0, 255)):
        # a 4-tuple: every channel (OpenCV 4 reads a bare number as (n, 0, 0, 0))
        if offset >= 0:
            return cv2.add(image, (offset,) * 4)
        return cv2.subtract(image, (-offset,) * 4)
    return cv2.LUT(image, lut)


def _lut_on_channel(image: np.ndarray, channel: int, lut: np.ndarray) -> np.ndarray:
    """``lut`` applied to one channel of a 3-channel uint8 image, the others unchanged."""
    planes = list(cv2.split(image))
    planes[channel] = cv2.LUT(planes[channel], lut)
    return cv2.merge(planes)


def photometric_distortion(image: np.ndarray, rng: np.random.RandomState,
                           brightness_delta: int = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
    """mmseg's PhotoMetricDistortion, each step with probability 0.5, in its order: brightness
    (+ U(-32, 32)); contrast (x U(0.5, 1.5)) here when a coin says so; saturation (HSV channel
    S x U(0.5, 1.5)); hue (H + an integer in [-18, 18), modulo 180); otherwise contrast last.
    Saturation and hue each convert to OpenCV's 8-bit HSV and back, as mmseg does (so two
    lossy round trips when both apply)."""
    image = np.ascontiguousarray(image)
    if rng.randint(2):  # brightness
        image = _apply_lut(image, _affine_lut(beta=rng.uniform(-brightness_delta, brightness_delta)))
    contrast_first = rng.randint(2) == 1  # mmseg's `mode`

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.randint(2):
            return _apply_lut(img, _affine_lut(alpha=rng.uniform(*contrast_range)))
        return img

    if contrast_first:
        image = contrast(image)
    if rng.randint(2):  # saturation
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv = _lut_on_channel(hsv, 1, _affine_lut(alpha=rng.uniform(*saturation_range)))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.randint(2):  # hue
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        shift = rng.randint(-hue_delta, hue_delta)
        hue_lut = ((np.arange(256) + shift) % 180).astype(np.uint8)
        image = cv2.cvtColor(_lut_on_channel(hsv, 0, hue_lut), cv2.COLOR_HSV2RGB)
    if not contrast_first:
        image = contrast(image)
    return image


@dataclass(frozen=True)
class TrainPipeline:
    """The training augmentation of one dataset (its params: ``datasets.<name>``)."""

    crop_size: tuple[int, int]  # (h, w)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    scale: tuple[int, int] | None = None  # (long, short) before the ratio; None = as stored
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    @classmethod
    def from_config(cls, dataset, ignore_index: int) -> TrainPipeline:
        """From a run's :class:`ssaseg.config.DatasetConfig` (``datasets.<name>`` of the params)."""
        return cls(crop_size=tuple(dataset.crop_size), ratio_range=tuple(dataset.scale_range),
                   scale=tuple(dataset.base_size) if dataset.base_size else None,
                   cat_max_ratio=dataset.cat_max_ratio,
                   photometric=dataset.photometric_distortion, ignore_index=ignore_index)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.RandomState
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) uint8 labels -> a crop of at most ``crop_size``
        (padding to it is :func:`normalize`'s, as in mmseg, where the data preprocessor pads)."""
        image, label = random_resize(image, label, self.scale, self.ratio_range, rng)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio,
                                   self.ignore_index, rng)
        image, label = random_flip(image, label, self.flip_prob, rng)
        if self.photometric:
            image = photometric_distortion(image, rng)
        return image, label


@dataclass(frozen=True)
class EvalPipeline:
    """The test-time resize of one dataset (``datasets.<name>.eval``); labels stay as stored."""

    scale: tuple[int, int] | None = None  # (long, short); None = as stored
    size_divisor: int | None = None  # mmseg's ResizeToMultiple after the resize

    @classmethod
    def from_config(cls, evaluate) -> EvalPipeline:
        """From a run's :class:`ssaseg.config.EvalConfig` (``datasets.<name>.eval``)."""
        return cls(scale=tuple(evaluate.scale) if evaluate.scale else None,
                   size_divisor=evaluate.size_divisor)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.scale is not None:
            image = resize_keep_ratio(image, self.scale)
        if self.size_divisor is not None:
            image = resize_to_multiple(image, self.size_divisor)
        return image


def normalize(images: torch.Tensor, valid_sizes: torch.Tensor | None = None) -> torch.Tensor:
    """mmseg's SegDataPreProcessor on a batch: (B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32
    ``(x - mean) / std`` (0-255 scale), then 0 outside each image's valid top-left
    ``valid_sizes`` (B, 2) = (h, w) region: mmseg pads the normalised image with 0 (and the
    labels with 255, which the dataset does) to the crop size at the bottom and right. The
    channels move first here, on the device, rather than per image in the data workers."""
    mean = images.new_tensor(MEAN_255, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(STD_255, dtype=torch.float32).view(1, 3, 1, 1)
    out = ((images.permute(0, 3, 1, 2).float() - mean) / std).contiguous()
    if valid_sizes is None:
        return out
    height, width = out.shape[-2:]
    if bool((valid_sizes[:, 0] >= height).all() and (valid_sizes[:, 1] >= width).all()):
        return out  # (checked where the sizes are, the CPU in training: no device sync)
    valid_sizes = valid_sizes.to(images.device)
    rows = torch.arange(height, device=images.device) < valid_sizes[:, :1]  # (B, H)
    cols = torch.arange(width, device=images.device) < valid_sizes[:, 1:]  # (B, W)
    inside = rows[:, None, :, None] & cols[:, None, None, :]  # (B, 1, H, W)
    return torch.where(inside, out, out.new_zeros(()))
