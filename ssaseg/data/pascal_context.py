"""PASCAL-Context with 59 classes: VOC2010 images + the context annotations of the PASCAL in
Detail release (``trainval_merged.json``, the file the published baselines convert).

Inputs::

    VOCtrainval_03-May-2010.tar   VOCdevkit/VOC2010/JPEGImages/<yyyy>_<nnnnnn>.jpg
    trainval_merged.json          {"images": [{"image_id", "file_name", "height", "width",
                                               "phase": "train" | "val"}, ...],
                                   "annos_segmentation": [{"image_id", "category_id",
                                               "segmentation": COCO RLE {"size": [h, w],
                                               "counts": str | [int]}}, ...], ...}

An image's class map is its annotations painted in file order (a later one wins), 0 where
none is. Category ids are those of the 459-class PASCAL-Context label list; the 59 evaluated
classes are the ids in :data:`CONTEXT59_IDS`, renumbered 0..58 in increasing id order (which
is the alphabetical order of :data:`ssaseg.data.catalog.PASCAL_CONTEXT59_CLASSES`); 0
(background) becomes 255 (ignore). Any other id is an error: the Detail release holds only
these (mmsegmentation's converter asserts the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssaseg.data import archive as ar
from ssaseg.data.catalog import get_dataset
from ssaseg.data.layout import DatasetError, read_manifest

NAME = "pascal_context59"
IMAGES_ARCHIVE = "VOCtrainval_03-May-2010.tar"
ANNOTATIONS = "trainval_merged.json"
CONTEXT59_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105,
    113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454,
    458,
)  # fmt: skip
LUT = ar.lookup_table({0: 255, **{raw: k for k, raw in enumerate(CONTEXT59_IDS)}}, size=1024)


def rle_counts_from_string(text: str) -> list[int]:
    """Decode the compressed COCO RLE string (LEB128-like, 5 bits per character, offset 48;
    from the third run on, each run is stored as a difference to the run two before)."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("RLE string ends in the middle of a number")
            c = ord(text[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(segmentation: dict, source: str) -> np.ndarray:
    """A COCO RLE (compressed string or list of run lengths) as a boolean (h, w) mask."""
    try:
        height, width = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        runs = rle_counts_from_string(counts) if isinstance(counts, str) else list(counts)
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{source}: malformed RLE segmentation ({err})") from err
    runs_arr = np.asarray(runs, dtype=np.int64)
    if (runs_arr < 0).any() or int(runs_arr.sum()) != height * width:
        raise DatasetError(
            f"{source}: RLE runs cover {int(runs_arr.sum())} pixels, the mask has "
            f"{height}x{width}={height * width}"
        )
    values = np.arange(len(runs_arr)) % 2  # runs alternate 0, 1, 0, ... starting with 0
    flat = np.repeat(values.astype(bool), runs_arr)
    return flat.reshape(width, height).T  # RLE is column-major


def class_map(image: dict, annotations: list[dict], source: str) -> np.ndarray:
    height, width = int(image["height"]), int(image["width"])
    mask = np.zeros((height, width), dtype=np.int64)
    for ann in annotations:
        where = f"{source} (annotation {ann.get('id', '?')})"
        m = decode_rle(ann["segmentation"], where)
        if m.shape != mask.shape:
            raise DatasetError(
                f"{where}: mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image entry says "
                f"{width}x{height}"
            )
        mask[m] = int(ann["category_id"])
    return mask


def load_annotations(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(
            f"{path} not found; run `python -m ssaseg download --dataset {NAME}` first"
        )
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(
            f"{path} is not valid JSON ({err}); it is truncated or corrupt: delete it and "
            "run the download step again"
        ) from err
    for key in ("images", "annos_segmentation"):
        if key not in data:
            raise DatasetError(f"{path}: no {key!r} list; this is not trainval_merged.json")
    return data


def prepare(raw_dir: Path, out_dir: Path, *, check_counts: bool = True) -> dict:
    """Convert the VOC2010 tar + ``trainval_merged.json`` in ``raw_dir`` to the common layout
    in ``out_dir`` (phase train -> train, val -> val)."""
    info = get_dataset(NAME)
    raw_dir = Path(raw_dir)
    data = load_annotations(raw_dir / ANNOTATIONS)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annos_segmentation"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    allowed = f"0 (background) or one of the 59 context ids {CONTEXT59_IDS[:3]}..."
    counts: dict[str, int] = {}
    with ar.open_archive(raw_dir, info, IMAGES_ARCHIVE) as archive, \
            ar.prepared_dataset(out_dir, info) as root:
        base = None
        for split, phase in info.splits:
            images = sorted(
                (img for img in data["images"] if img.get("phase") == phase),
                key=lambda img: img["file_name"],
            )
            if not images:
                raise DatasetError(f"{ANNOTATIONS}: no images with phase {phase!r}")
            for image in images:  # a file name becomes an output file name: no folders
                ar.plain_name(str(image["file_name"]), ANNOTATIONS, "file_name")
            if base is None:
                base = archive.find_root(f"VOC2010/JPEGImages/{images[0]['file_name']}")
            writer = ar.SplitWriter(root, split)
            for image in ar.progress(images, len(images), f"{NAME} {split}"):
                file_name = image["file_name"]
                item = ar.stem(file_name)
                source = f"{ANNOTATIONS}:{file_name}"
                raw = class_map(image, by_image.get(image["image_id"], []), source)
                label = ar.convert_labels(raw, LUT, source, allowed)
                image_name = f"{base}VOC2010/JPEGImages/{file_name}"
                writer.add(item, archive.read(image_name), ".jpg", label,
                           f"{IMAGES_ARCHIVE}:{image_name}", source)
            counts[split] = writer.count
        ar.check_counts(info, counts, check_counts)
    return read_manifest(out_dir, check_files=False)
