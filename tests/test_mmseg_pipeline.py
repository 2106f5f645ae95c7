"""Our training and test pipelines against mmsegmentation 1.2.2's own (the oracle).

Needs the optional extra ``conformance`` (mmsegmentation 1.2.2, mmengine, mmcv-lite); skipped
without it. mmcv-lite has no compiled ``mmcv.ops``: the few names mmseg imports from it are
stubbed by tests/mmcv_stub.py (none of them runs in these tests).

* training: with the same generator state (our per-sample RandomState copied into NumPy's global
  one, which mmseg's transforms draw from), mmseg's LoadImageFromFile -> LoadAnnotations ->
  RandomResize -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion ->
  PackSegInputs -> SegDataPreProcessor gives exactly our dataset item after ``normalize``: the
  same image bytes, labels, padding and normalised floats, and the same number of draws;
* test: mmseg's test pipeline + preprocessor give exactly our resized, normalised input, and an
  mmseg EncoderDecoder (whole and slide inference, logits resized to the original image) scored
  by mmseg's IoUMetric gives exactly our confusion counts and mIoU on a miniature dataset.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ssaseg.data.dataset import SegmentationDataset, augmentation_rng
from ssaseg.data.layout import DatasetMeta, write_manifest, write_meta
from ssaseg.data.transforms import MEAN_255, STD_255, EvalPipeline, TrainPipeline, normalize
from ssaseg.engine.evaluate import evaluate
from ssaseg.models.losses import resize_logits
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops
from tests.mmcv_stub import stub_mmcv_ext

pytest.importorskip("mmseg", reason="needs the optional extra `conformance` (mmsegmentation)")
# mmseg's and mmcv-lite's deprecation and missing-op notices
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NUM_CLASSES = 6
IGNORE = 255
CROP = (40, 48)  # (h, w)
TRAIN_SCALE = (96, 48)  # (long, short)
TEST_SCALE = (64, 40)
# (h, w) of the miniature images: larger and smaller than the crop after the random resize
SIZES = [(60, 90), (90, 50), (33, 41), (120, 100), (47, 47), (75, 130)]


@pytest.fixture(scope="module")
def mmseg():
    """mmseg's transforms, preprocessor, segmentor and metric, importable with mmcv-lite."""
    declare_missing_torchvision_ops()
    stub_mmcv_ext()
    from mmengine.registry import init_default_scope
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    from mmengine.config import ConfigDict
    from mmengine.dataset import Compose
    from mmseg.evaluation import IoUMetric
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.models.segmentors import EncoderDecoder
    from mmseg.registry import MODELS

    return types.SimpleNamespace(Compose=Compose, ConfigDict=ConfigDict, IoUMetric=IoUMetric,
                                 SegDataPreProcessor=SegDataPreProcessor,
                                 EncoderDecoder=EncoderDecoder, MODELS=MODELS)


def _label_map(gen: np.random.Generator, height: int, width: int, dominant: bool) -> np.ndarray:
    """Class 0 background, rectangles of the other classes and of the ignore index; with
    ``dominant`` the rectangles are small, so most crops hold one class above 75 %."""
    label = np.zeros((height, width), np.uint8)
    for value in [*range(1, NUM_CLASSES), IGNORE]:
        extent = 0.15 if dominant else 0.5
        h = max(1, int(height * extent * gen.random()))
        w = max(1, int(width * extent * gen.random()))
        y, x = gen.integers(0, height - h + 1), gen.integers(0, width - w + 1)
        label[y:y + h, x:x + w] = value
    return label


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    """A prepared dataset (our layout) with JPEG and PNG images of several sizes."""
    root = tmp_path_factory.mktemp("mini")
    gen = np.random.default_rng(0)
    write_meta(root, DatasetMeta(name="mini", classes=[f"c{i}" for i in range(NUM_CLASSES)],
                                 palette=[[i * 40, 255 - i * 40, i * 20] for i in range(NUM_CLASSES)],
                                 ignore_index=IGNORE))
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i, (height, width) in enumerate(SIZES):
            label = _label_map(gen, height, width, dominant=i % 2 == 0)
            colours = gen.integers(0, 256, (256, 3))
            image = colours[label] + gen.integers(-40, 41, (height, width, 3))
            image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
            suffix = "jpg" if i % 3 else "png"
            image.save(root / split / "images" / f"{i:03d}.{suffix}", quality=90)
            Image.fromarray(label).save(root / split / "labels" / f"{i:03d}.png")
    write_manifest(root, ["train", "val"])
    return root


def _sample_path(root, dataset, index):
    image_rel, label_rel = dataset.items[index]
    return {"img_path": str(root / image_rel), "seg_map_path": str(root / label_rel),
            "reduce_zero_label": False, "seg_fields": []}


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cat_max_ratio,photometric", [(0.75, True), (1.0, False)])
def test_training_pipeline_equals_mmseg_for_the_same_draws(mmseg, mini_root, cat_max_ratio,
                                                          photometric):
    pipeline = TrainPipeline(crop_size=CROP, ratio_range=(0.5, 2.0), scale=TRAIN_SCALE,
                             cat_max_ratio=cat_max_ratio, photometric=photometric,
                             ignore_index=IGNORE)
    ours = SegmentationDataset(mini_root, "train", train=True, train_pipeline=pipeline)
    theirs = mmseg.Compose([
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type="RandomResize", scale=TRAIN_SCALE, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=CROP, cat_max_ratio=cat_max_ratio),
        dict(type="RandomFlip", prob=0.5),
        *([dict(type="PhotoMetricDistortion")] if photometric else []),
        dict(type="PackSegInputs"),
    ])
    preprocessor = mmseg.SegDataPreProcessor(mean=list(MEAN_255), std=list(STD_255),
                                             bgr_to_rgb=True, pad_val=0, seg_pad_val=IGNORE,
                                             size=CROP)
    packed, samples = [], []
    for index in range(len(ours)):
        for seed in range(12):
            aug_seed = 1000 * index + seed
            rng = augmentation_rng(aug_seed)
            np.random.set_state(rng.get_state())
            packed.append(theirs(_sample_path(mini_root, ours, index)))
            sample = ours[(index, aug_seed)]
            samples.append(sample)
            # the same draws, down to the count: both generators end in the same state
            pipeline(*ours.load(index), rng)
            assert np.array_equal(rng.get_state()[1], np.random.get_state()[1])
            assert rng.get_state()[2] == np.random.get_state()[2]

            mm_image = packed[-1]["inputs"].flip(0).permute(1, 2, 0)  # (3, h, w) BGR -> RGB HWC
            mm_label = packed[-1]["data_samples"].gt_sem_seg.data[0]
            height, width = mm_image.shape[:2]
            assert tuple(sample.valid_size.tolist()) == (height, width)
            assert torch.equal(sample.image[:height, :width], mm_image)
            assert torch.equal(sample.label[:height, :width].long(), mm_label)
            assert not sample.image[height:].any() and not sample.image[:, width:].any()
            assert (sample.label[height:] == IGNORE).all()
            assert (sample.label[:, width:] == IGNORE).all()
    assert any(s.valid_size.tolist() != list(CROP) for s in samples)  # padding was exercised

    batch = preprocessor({"inputs": [p["inputs"] for p in packed],
                          "data_samples": [p["data_samples"] for p in packed]}, training=True)
    images = normalize(torch.stack([s.image for s in samples]),
                       torch.stack([s.valid_size for s in samples]))
    assert torch.equal(images, batch["inputs"])
    labels = torch.stack([s.label for s in samples]).long()
    assert torch.equal(labels, torch.stack([d.gt_sem_seg.data[0] for d in batch["data_samples"]]))


def test_cat_max_ratio_redraws_crops_that_one_class_dominates(mini_root):
    """The re-draw is active: other crops than without it, and fewer of them with one class at
    75 % or more (here 23 of 48 instead of 42: a crop still is when none of its 11 draws was
    better, as in the small-object images of this dataset)."""
    def crops(cat_max_ratio):
        pipeline = TrainPipeline(crop_size=(16, 16), ratio_range=(1.0, 1.0), scale=None,
                                 cat_max_ratio=cat_max_ratio, photometric=False)
        ds = SegmentationDataset(mini_root, "train", train=True, train_pipeline=pipeline)
        return [ds[(index, seed)].label for index in range(len(ds)) for seed in range(8)]

    def dominant_share(label):
        counts = torch.bincount(label[label != IGNORE].long(), minlength=NUM_CLASSES)
        return (counts.max() / counts.sum()).item() if (counts > 0).sum() > 1 else 1.0

    free, redrawn = crops(1.0), crops(0.75)
    assert any(not torch.equal(a, b) for a, b in zip(free, redrawn))
    dominated_free = sum(dominant_share(c) >= 0.75 for c in free)
    dominated_redrawn = sum(dominant_share(c) >= 0.75 for c in redrawn)
    assert dominated_free > 10 and dominated_redrawn < 0.75 * dominated_free


# ----------------------------------------------------------------------------- test


class _Backbone(nn.Module):
    """A tiny stride-4 feature extractor (one conv), registered as an mmseg backbone."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 5, stride=4, padding=2)

    def forward(self, x):
        return (torch.tanh(self.conv(x)),)


class _Ours(nn.Module):
    """Our side of the comparison: the same backbone and classifier conv behind our
    ``predict`` contract (logits resized to the input by ssaseg's resize_logits)."""

    def __init__(self, mm_model) -> None:
        super().__init__()
        self.backbone, self.conv_seg = mm_model.backbone, mm_model.decode_head.conv_seg

    @torch.no_grad()
    def predict(self, images):
        return resize_logits(self.conv_seg(self.backbone(images)[0]), images.shape[-2:])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_eval_pipeline_and_miou_equal_mmseg(mmseg, mini_root, mode):
    mmseg.MODELS.register_module("SsasegTinyBackbone", module=_Backbone, force=True)
    slide = dict(crop_size=(24, 32), stride=(16, 20))
    mm_model = mmseg.EncoderDecoder(
        backbone=dict(type="SsasegTinyBackbone"),
        decode_head=dict(type="FCNHead", in_channels=8, channels=8, num_convs=0,
                         concat_input=False, dropout_ratio=0.0, num_classes=NUM_CLASSES,
                         align_corners=False),
        data_preprocessor=dict(type="SegDataPreProcessor", mean=list(MEAN_255),
                               std=list(STD_255), bgr_to_rgb=True, pad_val=0, seg_pad_val=IGNORE),
        test_cfg=mmseg.ConfigDict(mode=mode, **(slide if mode == "slide" else {})),
    ).eval()
    pipeline = mmseg.Compose([
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=TEST_SCALE, keep_ratio=True),
        dict(type="ResizeToMultiple", size_divisor=8),
        dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type="PackSegInputs"),
    ])
    ours = SegmentationDataset(mini_root, "val",
                               eval_pipeline=EvalPipeline(scale=TEST_SCALE, size_divisor=8))
    metric = mmseg.IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ours.meta.classes}
    for index in range(len(ours)):
        batch = {k: [v] for k, v in pipeline(_sample_path(mini_root, ours, index)).items()}
        data = mm_model.data_preprocessor(batch, False)
        sample = ours[index]
        assert torch.equal(normalize(sample.image[None]), data["inputs"])  # the resized input
        assert torch.equal(sample.label.long(), data["data_samples"][0].gt_sem_seg.data[0])
        with torch.no_grad():
            outputs = mm_model.predict(data["inputs"], data["data_samples"])
        metric.process(batch, [o.to_dict() for o in outputs])
    assert len({tuple(s.image.shape) for s in (ours[i] for i in range(len(ours)))}) > 3

    metrics, cm = evaluate(_Ours(mm_model), ours, torch.device("cpu"), mode,
                           slide["crop_size"], slide["stride"])
    intersect, union, pred, label = (torch.stack(r).sum(0) for r in zip(*metric.results))
    cm = cm.double()
    assert torch.equal(cm.diag(), intersect.double())
    assert torch.equal(cm.sum(0), pred.double())
    assert torch.equal(cm.sum(1), label.double())
    assert torch.equal(cm.sum(0) + cm.sum(1) - cm.diag(), union.double())
    summary = metric.compute_metrics(metric.results)
    assert summary["mIoU"] == round(100 * metrics.miou, 2)
    assert summary["aAcc"] == round(100 * metrics.pixel_accuracy, 2)
    assert 0 < metrics.miou < 1
