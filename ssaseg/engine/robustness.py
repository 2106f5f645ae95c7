"""Evaluation under distribution shift: a sweep of the synthetic dataset's per-class appearance
shift, and the standard common corruptions (the ``imagecorruptions`` package, severities 1-5).

    python -m ssaseg evaluate-shift       --params params/analysis.yaml RUN   -> shift_sweep.json
    python -m ssaseg evaluate-corruptions --params params/analysis.yaml RUN   -> corruptions.json

Shift sweep: the trained model is scored on the validation split generated again at each
strength of ``analysis.shift_sweep`` (``val_class_shift``; the same scenes and global shift,
only the class appearance differs), with the per-image counts the image bootstrap resamples.

Corruptions: each validation image is corrupted before the test resize; image ``i`` under
corruption ``c`` at severity ``s`` is drawn from the seed (seed, c, s, i), through NumPy's
global generator for the corruptions that use it and the ``seed`` argument of those that take
one (glass_blur, impulse_noise): the same seed, the same corrupted bytes.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ssaseg.data.dataset import Sample, SegmentationDataset
from ssaseg.engine.evaluate import PerImageCounts, evaluate_per_image
from ssaseg.errors import UnavailableError, UnknownNameError

CORRUPTIONS_EXTRA = "pip install 'ssaseg[analysis]' (imagecorruptions-imaug)"


def corruption_names(names: list[str]) -> list[str]:
    """``["all"]`` (or ``["common"]``, ...: a subset name of imagecorruptions) -> the names;
    otherwise the names, each checked."""
    try:
        from imagecorruptions import get_corruption_names
    except ImportError as exc:  # an optional extra
        raise UnavailableError(f"analysis.corruptions needs the imagecorruptions package: "
                               f"{CORRUPTIONS_EXTRA}") from exc
    known = get_corruption_names("all")
    out: list[str] = []
    for name in names:
        if name in ("all", "common", "validation", "noise", "blur", "weather", "digital"):
            out += [n for n in get_corruption_names(name) if n not in out]
        elif name in known:
            out.append(name)
        else:
            raise UnknownNameError(f"analysis.corruptions: unknown corruption {name!r}; known: "
                           f"{', '.join(known)} (or all, common, validation)")
    return out


def _corruption_seed(seed: int, name: str, severity: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity, index])
               .generate_state(1)[0])


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same size, corrupted; deterministic in ``seed``. NumPy's global
    generator is restored afterwards."""
    from imagecorruptions import corrupt
    from imagecorruptions import corruption_dict

    kwargs = {"seed": seed} if "seed" in inspect.signature(corruption_dict[name]).parameters else {}
    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        out = corrupt(np.ascontiguousarray(image), severity=severity, corruption_name=name,
                      **kwargs)
    finally:
        np.random.set_state(state)
    return out[: image.shape[0], : image.shape[1]]  # a few corruptions pad odd sizes


class CorruptedImages(Dataset):
    """A validation dataset whose images are corrupted (before the test resize)."""

    def __init__(self, dataset: SegmentationDataset, name: str, severity: int, seed: int = 0):
        self.dataset, self.name, self.severity, self.seed = dataset, name, severity, seed
        self.meta = dataset.meta

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        image, label = self.dataset.load(index)
        image = corrupt_image(image, self.name, self.severity,
                              _corruption_seed(self.seed, self.name, self.severity, index))
        image = self.dataset.eval_pipeline(image)
        return Sample(torch.from_numpy(np.ascontiguousarray(image)),
                      torch.from_numpy(label.astype(self.dataset._label_dtype, copy=False)),
                      torch.tensor(image.shape[:2], dtype=torch.int64))


def evaluate_corruptions(model, dataset: SegmentationDataset, device: torch.device,
                         names: list[str], severities: list[int], seed: int = 0,
                         **eval_kwargs) -> list[dict]:
    """mIoU (and pixel accuracy) for every (corruption, severity): one row each."""
    rows = []
    for name in names:
        for severity in severities:
            metrics, _, _ = evaluate_per_image(model, CorruptedImages(dataset, name, severity,
                                                                       seed), device,
                                               **eval_kwargs)
            rows.append({"corruption": name, "severity": severity, "miou": metrics.miou,
                         "pixel_accuracy": metrics.pixel_accuracy})
    return rows


@contextlib.contextmanager
def shifted_validation_set(options: dict, strength: float):
    """The synthetic validation split generated again at ``val_class_shift = strength`` (the
    rest of ``options`` as prepared), in a temporary directory: yields its root."""
    from ssaseg.data.synthetic import prepare

    opts = {**options, "val_class_shift": strength, "num_train": 1}
    with tempfile.TemporaryDirectory(prefix="ssaseg-shift-") as tmp:
        root = Path(tmp) / "synthetic"
        prepare(Path(tmp), root, **opts)
        yield root


def evaluate_shift_sweep(model, options: dict, strengths: list[float], device: torch.device,
                         eval_pipeline=None, **eval_kwargs
                         ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(rows: strength, mIoU, pixel accuracy; per-image counts stacked over the strengths,
    intersection and union (len(strengths), N, K))."""
    rows, inter, union = [], [], []
    for strength in strengths:
        with shifted_validation_set(options, strength) as root:
            dataset = SegmentationDataset(root, "val", eval_pipeline=eval_pipeline)
            metrics, _, counts = evaluate_per_image(model, dataset, device, **eval_kwargs)
        counts: PerImageCounts
        rows.append({"strength": strength, "miou": metrics.miou,
                     "pixel_accuracy": metrics.pixel_accuracy})
        inter.append(counts.intersection.numpy())
        union.append(counts.union.numpy())
    return rows, {"strengths": np.asarray(strengths, dtype=np.float64),
                  "intersection": np.stack(inter), "union": np.stack(union)}
