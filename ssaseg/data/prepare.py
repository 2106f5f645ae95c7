"""Prepare a dataset into the common on-disk layout (see :mod:`ssaseg.data.layout`).

Each preparer is ``prepare(raw_dir, out_dir, **options)``: it reads downloaded archives from
``raw_dir`` (ignored by ``synthetic``) and writes ``out_dir`` atomically, manifest last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ssaseg.data import ade20k, cityscapes, coco_stuff, pascal_context, synthetic
from ssaseg.errors import UnknownNameError

PREPARERS: dict[str, Callable[..., dict]] = {
    "synthetic": synthetic.prepare,
    "ade20k": ade20k.prepare,
    "coco_stuff10k": coco_stuff.prepare,
    "pascal_context59": pascal_context.prepare,
    "cityscapes": cityscapes.prepare,
}


def prepare_dataset(name: str, raw_dir: str | Path, out_dir: str | Path, **options) -> dict:
    """Prepare dataset ``name``; returns its manifest."""
    if name not in PREPARERS:
        raise UnknownNameError(f"unknown dataset {name!r}; known datasets: "
                               f"{', '.join(sorted(PREPARERS))}")
    return PREPARERS[name](Path(raw_dir), Path(out_dir), **options)
