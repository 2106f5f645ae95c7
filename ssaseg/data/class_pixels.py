"""Pixels per class of one split (the class frequency the report splits the delta IoU by).

    python -m ssaseg count-pixels --params params/analysis.yaml --dataset synthetic \
        --out results/analysis/synthetic/train_class_pixels.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssaseg.data.layout import read_manifest, read_meta
from ssaseg.data.transforms import class_counts


def split_class_pixels(root: str | Path, split: str = "train") -> list[int]:
    """Labelled pixels of each class over every label map of ``split`` (ignore excluded)."""
    root = Path(root)
    meta = read_meta(root)
    total = np.zeros(meta.num_classes, dtype=np.int64)
    for _, label_rel in read_manifest(root, split)["splits"][split]["items"]:
        counts = class_counts(np.asarray(Image.open(root / label_rel)))  # (256,)
        total += counts[: meta.num_classes]
    return total.tolist()
