"""The common on-disk layout every prepared dataset shares (synthetic and real alike).

    data/<dataset>/
        meta.json                  name, class names, palette, ignore index
        <split>/images/<id>.<ext>  RGB images (PNG or JPEG)
        <split>/labels/<id>.png    8-bit single-channel label maps, values in [0, K) or ignore
        manifest.json              per split: item list, count, label histogram (written LAST:
                                   its presence means the dataset is complete)

``prepare`` steps write into a temporary directory (:func:`ssaseg.atomic_io.atomic_directory`)
and finish with :func:`write_manifest`, so a half-prepared dataset never looks complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ssaseg import atomic_io
from ssaseg.errors import InputError

META = "meta.json"
MANIFEST = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(InputError, ValueError):
    """A prepared dataset is missing, incomplete or inconsistent; the message says what to do."""


@dataclass(frozen=True)
class DatasetMeta:
    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.classes):
            raise DatasetError(
                f"{self.name}: {len(self.classes)} class names but {len(self.palette)} palette "
                "colours; give one colour per class"
            )
        if 0 <= self.ignore_index < len(self.classes):
            raise DatasetError(
                f"{self.name}: ignore_index {self.ignore_index} collides with a class id"
            )


def write_meta(root: Path, meta: DatasetMeta) -> None:
    atomic_io.write_json(root / META, asdict(meta))


def read_meta(root: str | Path) -> DatasetMeta:
    path = Path(root) / META
    if not path.is_file():
        raise DatasetError(f"{path} not found; run `python -m ssaseg prepare` for this dataset")
    return DatasetMeta(**json.loads(path.read_text()))


def split_items(root: Path, split: str) -> list[list[str]]:
    """(image, label) paths relative to ``root`` for every image of ``split``, sorted by id."""
    image_dir, label_dir = root / split / "images", root / split / "labels"
    items = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise DatasetError(f"label map {label} for image {image} is missing")
        items.append([str(image.relative_to(root)), str(label.relative_to(root))])
    return items


def label_histogram(label_paths: list[Path], num_classes: int, ignore_index: int) -> list[int]:
    """Pixel counts per class, then the ignore count last. Raises on values outside [0, K)."""
    hist = np.zeros(num_classes + 1, dtype=np.int64)
    for path in label_paths:
        label = np.asarray(Image.open(path))
        if label.ndim != 2:
            raise DatasetError(f"{path}: label map must be single-channel, got shape {label.shape}")
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [v for v in np.nonzero(counts)[0] if v >= num_classes and v != ignore_index]
        if bad:
            raise DatasetError(
                f"{path}: label values {bad} outside [0, {num_classes}) and not the ignore index "
                f"{ignore_index}"
            )
        hist[:num_classes] += counts[:num_classes]
        hist[num_classes] += counts[ignore_index]
    return hist.tolist()


def write_manifest(root: Path, splits: list[str]) -> dict:
    """Scan the prepared splits, check every label map, write manifest.json last."""
    meta = read_meta(root)
    manifest: dict = {"dataset": meta.name, "num_classes": meta.num_classes, "splits": {}}
    for split in splits:
        items = split_items(root, split)
        if not items:
            raise DatasetError(f"{root / split}: no images were prepared for split {split!r}")
        hist = label_histogram([root / lab for _, lab in items], meta.num_classes, meta.ignore_index)
        manifest["splits"][split] = {"count": len(items), "items": items, "label_histogram": hist}
    atomic_io.write_json(root / MANIFEST, manifest)
    return manifest


def read_manifest(root: str | Path, split: str | None = None, check_files: bool = True) -> dict:
    """Load the manifest and check that it matches what is on disk (counts, files present)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: {root} is not a completely prepared dataset; run "
            "`python -m ssaseg prepare` (or `dvc pull`) first"
        )
    manifest = json.loads(path.read_text())
    splits = [split] if split else list(manifest["splits"])
    for name in splits:
        if name not in manifest["splits"]:
            raise DatasetError(
                f"{path}: split {name!r} not prepared; prepared splits: {list(manifest['splits'])}"
            )
        entry = manifest["splits"][name]
        if len(entry["items"]) != entry["count"]:
            raise DatasetError(f"{path}: split {name!r} lists {len(entry['items'])} items, "
                               f"count says {entry['count']}; re-run prepare")
        if check_files:
            missing = [p for item in entry["items"] for p in item if not (root / p).is_file()]
            if missing:
                raise DatasetError(
                    f"{root}: {len(missing)} files listed in the manifest are missing "
                    f"(first: {missing[0]}); re-run prepare or `dvc pull`"
                )
    return manifest
