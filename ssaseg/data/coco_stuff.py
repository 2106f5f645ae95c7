"""COCO-Stuff-10K v1.1 (``cocostuff-10k-v1.1.zip``).

Archive layout::

    images/COCO_train2014_%012d.jpg                 10,000 images
    annotations/COCO_train2014_%012d.mat            MATLAB (v5) files, field ``S``: label map
    imageLists/train.txt, test.txt, all.txt         the official 9,000 / 1,000 split (ids)

``S`` holds 0 = unlabeled, 1..91 = COCO thing ids, 92..182 = stuff ids. Eleven thing ids were
never annotated in COCO (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91), so 171 ids remain; they
are renumbered contiguously in increasing order (1 -> 0 "person", ..., 182 -> 170 "wood") and
0 becomes 255 (ignore). An id outside that set is an error. Our ``val`` split is the official
``test`` list (what the published COCO-Stuff-10K numbers are measured on).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ssaseg.data import archive as ar
from ssaseg.data.catalog import get_dataset
from ssaseg.data.layout import DatasetError, read_manifest

NAME = "coco_stuff10k"
ARCHIVE = "cocostuff-10k-v1.1.zip"
UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
VALID_IDS = tuple(i for i in range(1, 183) if i not in UNUSED_THING_IDS)
# S is stored as uint16/double in the .mat files: a table over 16-bit values.
LUT = ar.lookup_table({0: 255, **{raw: k for k, raw in enumerate(VALID_IDS)}}, size=1 << 16)


def read_mat_labels(data: bytes, source: str) -> np.ndarray:
    """The ``S`` label map of a COCO-Stuff .mat file, as an integer array."""
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(data), variable_names=["S"])
    except Exception as err:  # scipy raises several types for bad files
        raise DatasetError(f"{source}: not a readable MATLAB file ({err})") from err
    if "S" not in mat:
        raise DatasetError(f"{source}: no label map 'S' in the .mat file")
    labels = np.asarray(mat["S"])
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise DatasetError(f"{source}: label map 'S' holds non-integer values")
    return labels.astype(np.int64)


def _read_list(archive: ar.ArchiveReader, name: str) -> list[str]:
    """The image ids of a list file; each must be a plain file name (it names output files)."""
    text = archive.read(name).decode("utf-8", errors="strict")
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    ids = [i[: -len(".jpg")] if i.endswith(".jpg") else i for i in ids]
    return [ar.plain_name(i, f"{ARCHIVE}:{name}", "image id") for i in ids]


def prepare(raw_dir: Path, out_dir: Path, *, check_counts: bool = True) -> dict:
    """Convert ``raw_dir/cocostuff-10k-v1.1.zip`` into the common layout in ``out_dir``,
    with the official 10k split (``imageLists/train.txt`` -> train, ``test.txt`` -> val)."""
    info = get_dataset(NAME)
    counts: dict[str, int] = {}
    allowed = f"0 (unlabeled) or one of the 171 COCO-Stuff ids 1..182 except {UNUSED_THING_IDS}"
    with ar.open_archive(raw_dir, info, ARCHIVE) as archive, \
            ar.prepared_dataset(out_dir, info) as root:
        base = archive.find_root("imageLists/train.txt")
        seen: dict[str, str] = {}
        for split, original in info.splits:
            ids = _read_list(archive, f"{base}imageLists/{original}.txt")
            if not ids:
                raise DatasetError(f"{ARCHIVE}: imageLists/{original}.txt is empty")
            for item in ids:
                if item in seen:
                    raise DatasetError(
                        f"{ARCHIVE}: {item} is in both imageLists/{seen[item]}.txt and "
                        f"imageLists/{original}.txt"
                    )
                seen[item] = original
            writer = ar.SplitWriter(root, split)
            for item in ar.progress(ids, len(ids), f"{NAME} {split}"):
                image_name = f"{base}images/{item}.jpg"
                label_name = f"{base}annotations/{item}.mat"
                source = f"{ARCHIVE}:{label_name}"
                raw = read_mat_labels(archive.read(label_name), source)
                label = ar.convert_labels(raw, LUT, source, allowed)
                writer.add(item, archive.read(image_name), ".jpg", label,
                           f"{ARCHIVE}:{image_name}", source)
            counts[split] = writer.count
        ar.check_counts(info, counts, check_counts)
    return read_manifest(out_dir, check_files=False)
