"""Cityscapes, fine annotations (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``;
downloading them needs a login, see the catalog entry).

Archive layouts::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (+ _color,
        _instanceIds .png and _polygons.json, unused here)

``labelIds`` use the 34 Cityscapes label ids 0..33 (license plate, id -1, is stored as 255);
the 19 evaluated classes get train ids 0..18 (:data:`LABEL_TO_TRAIN`), every other id -> 255.
Ids above 33 (other than 255) are an error. The test split has no public labels: skipped.
Item ids drop the ``_leftImg8bit`` suffix (``aachen_000000_000019``).
"""

from __future__ import annotations

from pathlib import Path

from ssaseg.data import archive as ar
from ssaseg.data.catalog import get_dataset
from ssaseg.data.layout import DatasetError, read_manifest

NAME = "cityscapes"
IMAGES_ARCHIVE = "leftImg8bit_trainvaltest.zip"
LABELS_ARCHIVE = "gtFine_trainvaltest.zip"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
# label id -> train id for the 19 evaluated classes (cityscapesScripts helpers/labels.py)
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LUT = ar.lookup_table({**{i: 255 for i in range(34)}, 255: 255, **LABEL_TO_TRAIN})


def prepare(raw_dir: Path, out_dir: Path, *, check_counts: bool = True) -> dict:
    """Convert the two Cityscapes zips in ``raw_dir`` (labelIds -> 19 trainIds) to the common
    layout in ``out_dir``."""
    info = get_dataset(NAME)
    counts: dict[str, int] = {}
    with ar.open_archive(raw_dir, info, IMAGES_ARCHIVE) as images_zip, \
            ar.open_archive(raw_dir, info, LABELS_ARCHIVE) as labels_zip, \
            ar.prepared_dataset(out_dir, info) as root:
        for split, original in info.splits:
            images = [n for n in images_zip.listdir(f"leftImg8bit/{original}")
                      if n.endswith(IMAGE_SUFFIX)]
            if not images:
                raise DatasetError(
                    f"{IMAGES_ARCHIVE}: no *{IMAGE_SUFFIX} under leftImg8bit/{original}/; is "
                    "this the official leftImg8bit_trainvaltest.zip?"
                )
            writer = ar.SplitWriter(root, split)
            for image_name in ar.progress(images, len(images), f"{NAME} {split}"):
                city_dir, file_name = image_name.rsplit("/", 1)
                item = file_name[: -len(IMAGE_SUFFIX)]
                label_name = f"gtFine/{original}/{city_dir.rsplit('/', 1)[-1]}/{item}{LABEL_SUFFIX}"
                source = f"{LABELS_ARCHIVE}:{label_name}"
                raw = ar.decode_label_png(labels_zip.read(label_name), source)
                label = ar.convert_labels(raw, LUT, source, "Cityscapes label ids 0..33 or 255")
                writer.add(item, images_zip.read(image_name), ".png", label,
                           f"{IMAGES_ARCHIVE}:{image_name}", source)
            counts[split] = writer.count
        ar.check_counts(info, counts, check_counts)
    return read_manifest(out_dir, check_files=False)
