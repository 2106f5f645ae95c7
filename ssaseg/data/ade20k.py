"""ADE20K (the SceneParsing challenge release, ``ADEChallengeData2016.zip``).

Archive layout::

    ADEChallengeData2016/
        images/{training,validation}/ADE_{train,val}_%08d.jpg
        annotations/{training,validation}/ADE_{train,val}_%08d.png   values 0..150
        objectInfo150.txt, sceneCategories.txt

Label 0 is "other objects" and is not evaluated: reduce-zero-label maps 0 -> 255 (ignore)
and k -> k - 1 for k = 1..150. Any other value is an error.
"""

from __future__ import annotations

from pathlib import Path

from ssaseg.data import archive as ar
from ssaseg.data.catalog import get_dataset
from ssaseg.data.layout import DatasetError, read_manifest

NAME = "ade20k"
ARCHIVE = "ADEChallengeData2016.zip"
LUT = ar.lookup_table({0: 255, **{k: k - 1 for k in range(1, 151)}})


def prepare(raw_dir: Path, out_dir: Path, *, check_counts: bool = True) -> dict:
    """Convert ``raw_dir/ADEChallengeData2016.zip`` into the common layout in ``out_dir``.

    ``check_counts=False`` accepts an archive with fewer images than the official release
    (a deliberate subset); by default that is an error.
    """
    info = get_dataset(NAME)
    counts: dict[str, int] = {}
    with ar.open_archive(raw_dir, info, ARCHIVE) as archive, \
            ar.prepared_dataset(out_dir, info) as root:
        base = archive.find_prefix("images/training/")
        for split, original in info.splits:
            images = [n for n in archive.listdir(f"{base}images/{original}")
                      if n.lower().endswith(".jpg")]
            if not images:
                raise DatasetError(f"{ARCHIVE}: no images under {base}images/{original}/")
            writer = ar.SplitWriter(root, split)
            for image_name in ar.progress(images, len(images), f"{NAME} {split}"):
                item = ar.stem(image_name)
                label_name = f"{base}annotations/{original}/{item}.png"
                source = f"{ARCHIVE}:{label_name}"
                raw = ar.decode_label_png(archive.read(label_name), source)
                label = ar.convert_labels(raw, LUT, source, "0..150 (0 = other, ignored)")
                writer.add(item, archive.read(image_name), ".jpg", label,
                           f"{ARCHIVE}:{image_name}", source)
            counts[split] = writer.count
        ar.check_counts(info, counts, check_counts)
    return read_manifest(out_dir, check_files=False)
