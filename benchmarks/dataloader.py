"""Training-pipeline throughput: ssaseg's data loading against mmsegmentation's, on the same files.

Writes ``--images`` ADE20K-sized JPEG images (the common ADE20K shapes, 512 px short side and
up) with PNG label maps of 150 classes, generated from a seed, in ssaseg's dataset layout. Then
reads them through

* ssaseg: ``SegmentationDataset`` with ADE20K's recipe (params/ade20k.yaml: 2048x512 x 0.5-2.0,
  512x512 crops with cat_max_ratio 0.75, flip, PhotoMetricDistortion) and the training sampler;
* mmseg 1.2.2: ``BaseSegDataset`` with its own ADE20K ``train_pipeline``
  (configs/_base_/datasets/ade20k.py, reduce_zero_label off: the labels are stored reduced);

each through a torch DataLoader with ONE worker process (OpenCV single-threaded in it, as
mmengine sets it), batch 4, in the main process nothing but the loop. Per round each loader
starts a fresh worker, delivers one batch (not timed: start-up), then ``--batches`` timed ones;
the two alternate round by round (the order flips every round), so both see the same machine
load. Reported: images per second of each (median over rounds) and the median per-round ratio.
Both loaders deliver uint8 images; normalisation and padding happen later on the device (mmseg's
data preprocessor, ssaseg's ``normalize``), outside this measurement.

    python -m benchmarks.dataloader                          # 64 images, 5 rounds x 40 batches
    python -m benchmarks.dataloader --images 24 --rounds 3 --batches 10
Needs the optional extra ``conformance`` (mmsegmentation 1.2.2, mmengine, mmcv-lite).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from ssaseg.data.dataset import SegmentationDataset, TrainBatches, opencv_single_threaded
from ssaseg.data.layout import DatasetMeta, write_manifest, write_meta
from ssaseg.data.transforms import TrainPipeline
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

# (h, w) of frequent ADE20K training images
ADE_SHAPES = [(512, 683), (683, 512), (512, 512), (512, 768), (768, 1024), (1024, 768)]
NUM_CLASSES = 150
BATCH = 4


def write_images(root: Path, count: int, seed: int = 0) -> None:
    """``count`` image/label pairs in ssaseg's layout (split train): blocky regions of up to 20
    classes, each region a class colour with a smooth shading and some noise (JPEG quality 90)."""
    gen = np.random.default_rng(seed)
    write_meta(root, DatasetMeta(name="ade_sized", classes=[f"c{i}" for i in range(NUM_CLASSES)],
                                 palette=[[i, i, i] for i in range(NUM_CLASSES)]))
    images, labels = root / "train" / "images", root / "train" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    colours = gen.integers(0, 256, (NUM_CLASSES, 3))
    for i in range(count):
        height, width = ADE_SHAPES[i % len(ADE_SHAPES)]
        classes = gen.choice(NUM_CLASSES, size=20, replace=False)
        cells = classes[gen.integers(0, 20, (height // 64 + 1, width // 64 + 1))]
        label = np.kron(cells, np.ones((64, 64), np.int64))[:height, :width].astype(np.uint8)
        label[gen.random(label.shape) < 0.002] = 255
        yy, xx = np.mgrid[0:height, 0:width]
        shade = 40 * np.sin(yy / 37.0 + i)[..., None] * np.cos(xx / 53.0)[..., None]
        image = colours[label % NUM_CLASSES] + shade + gen.normal(0, 8, (height, width, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"{i:05d}.jpg",
                                                                      quality=90)
        Image.fromarray(label).save(labels / f"{i:05d}.png")
    write_manifest(root, ["train"])


def ours(root: Path, batches: int, seed: int) -> DataLoader:
    pipeline = TrainPipeline(crop_size=(512, 512), ratio_range=(0.5, 2.0), scale=(2048, 512),
                             cat_max_ratio=0.75, photometric=True)
    dataset = SegmentationDataset(root, "train", train=True, train_pipeline=pipeline)
    sampler = TrainBatches(len(dataset), BATCH, seed, 0, batches + 1)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=1,
                      worker_init_fn=opencv_single_threaded)


def _mmseg_modules():
    """mmseg's dataset and collate function, importable with mmcv-lite (``mmcv.ops`` stubbed:
    none of its names runs here)."""
    declare_missing_torchvision_ops()
    try:
        import mmcv.ops  # noqa: F401
    except ImportError:
        ops = types.ModuleType("mmcv.ops")

        def missing(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *a, **k: (_ for _ in ()).throw(RuntimeError(f"mmcv.ops.{name} stub"))

        ops.__getattr__ = missing
        sys.modules["mmcv.ops"] = ops
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.datasets import BaseSegDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    return BaseSegDataset, pseudo_collate


def theirs(root: Path, batches: int, seed: int) -> DataLoader:
    BaseSegDataset, pseudo_collate = _mmseg_modules()
    pipeline = [  # mmseg 1.2.2 configs/_base_/datasets/ade20k.py train_pipeline
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    dataset = BaseSegDataset(
        data_root=str(root), data_prefix=dict(img_path="train/images", seg_map_path="train/labels"),
        img_suffix=".jpg", seg_map_suffix=".png", pipeline=pipeline,
        metainfo=dict(classes=[f"c{i}" for i in range(NUM_CLASSES)],
                      palette=[[i, i, i] for i in range(NUM_CLASSES)]))
    sampler = RandomSampler(dataset, num_samples=(batches + 1) * BATCH,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=1,
                      collate_fn=pseudo_collate, worker_init_fn=opencv_single_threaded)


def images_per_second(loader: DataLoader, batches: int) -> float:
    """One untimed batch (worker start-up), then ``batches`` timed ones."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator  # the worker exits
    return batches * BATCH / elapsed


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="timed batches of 4 per round")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where to write the images (default: a temporary directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import mmseg
    except ImportError:
        print("needs mmsegmentation: pip install -e '.[conformance]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.data_dir or Path(tmp)) / "ade_sized"
        if not (root / "manifest.json").is_file():
            write_images(root, args.images)
        print(f"{time.strftime('%Y-%m-%d %H:%M')}  {machine()}")
        print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, NumPy {np.__version__}, "
              f"mmseg {mmseg.__version__}; {args.images} images, 1 worker, batch {BATCH}, "
              f"512x512 crops, {args.batches} timed batches per round")
        rates: dict[str, list[float]] = {"ssaseg": [], "mmseg": []}
        builders = {"ssaseg": ours, "mmseg": theirs}
        for round_ in range(args.rounds):
            order = ["ssaseg", "mmseg"] if round_ % 2 == 0 else ["mmseg", "ssaseg"]
            for name in order:
                rates[name].append(images_per_second(builders[name](root, args.batches, round_),
                                                     args.batches))
            print(f"round {round_ + 1}: ssaseg {rates['ssaseg'][-1]:6.1f} img/s   "
                  f"mmseg {rates['mmseg'][-1]:6.1f} img/s   "
                  f"ratio {rates['ssaseg'][-1] / rates['mmseg'][-1]:.2f}x", flush=True)
        ratios = [a / b for a, b in zip(rates["ssaseg"], rates["mmseg"])]
        print(f"median: ssaseg {statistics.median(rates['ssaseg']):.1f} img/s, mmseg "
              f"{statistics.median(rates['mmseg']):.1f} img/s, ssaseg/mmseg "
              f"{statistics.median(ratios):.2f}x (per-round {min(ratios):.2f}-{max(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
