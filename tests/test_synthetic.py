import hashlib

import numpy as np
from PIL import Image

from ssaseg.data import synthetic
from ssaseg.data.layout import read_manifest, read_meta
from ssaseg.data.prepare import prepare_dataset


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path):
    opts = dict(num_train=6, num_val=3, image_size=32)
    prepare_dataset("synthetic", tmp_path, tmp_path / "a", seed=3, **opts)
    prepare_dataset("synthetic", tmp_path, tmp_path / "b", seed=3, **opts)
    prepare_dataset("synthetic", tmp_path, tmp_path / "c", seed=4, **opts)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_meta_and_manifest(tmp_path):
    manifest = prepare_dataset("synthetic", tmp_path, tmp_path / "s", num_train=5, num_val=2,
                               image_size=32)
    meta = read_meta(tmp_path / "s")
    assert meta.classes == synthetic.CLASSES and meta.num_classes == 10
    assert meta.ignore_index == 255
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 5, "val": 2}
    assert read_manifest(tmp_path / "s") == manifest
    hist = np.zeros(11, dtype=np.int64)
    for image_rel, label_rel in manifest["splits"]["train"]["items"]:
        image = np.asarray(Image.open(tmp_path / "s" / image_rel))
        label = np.asarray(Image.open(tmp_path / "s" / label_rel))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert label.shape == (32, 32) and label.max() < 10
        hist[:10] += np.bincount(label.ravel(), minlength=10)
    assert hist.tolist() == manifest["splits"]["train"]["label_histogram"]


def test_classes_sit_at_typical_positions():
    rows = {c: [] for c in ("sky", "road", "car")}
    for i in range(40):
        _, label = synthetic.render(np.random.default_rng([0, 0, i]), 64, 0.0)
        for name in rows:
            ys = np.nonzero(label == synthetic.CLASSES.index(name))[0]
            if ys.size:
                rows[name].append(ys.mean() / 64)
    assert np.mean(rows["sky"]) < 0.3
    assert np.mean(rows["road"]) > 0.6 and np.mean(rows["car"]) > 0.6


def test_val_appearance_drifts_more_than_train():
    """The same scene rendered with the val shift strays further from its unshifted colours."""
    def mean_abs_drift(shift):
        drifts = []
        for i in range(30):
            clean, _ = synthetic.render(np.random.default_rng([1, 0, i]), 32, 0.0)
            shifted, _ = synthetic.render(np.random.default_rng([1, 0, i]), 32, shift)
            drifts.append(np.abs(shifted.astype(float) - clean.astype(float)).mean())
        return np.mean(drifts)

    train_shift = 0.08
    assert mean_abs_drift(train_shift * 2.5) > 1.8 * mean_abs_drift(train_shift) > 0


def test_class_shift_zero_leaves_the_bytes_and_shifts_classes_per_image(tmp_path):
    """class_shift 0 = the dataset without the knob; > 0 keeps the labels (same scenes) and
    moves each class's mean colour by a different offset in every image."""
    opts = dict(num_train=4, num_val=2, image_size=32, seed=2)
    prepare_dataset("synthetic", tmp_path, tmp_path / "plain", **opts)
    prepare_dataset("synthetic", tmp_path, tmp_path / "zero", class_shift=0.0, **opts)
    assert _digest(tmp_path / "plain") == _digest(tmp_path / "zero")

    def class_means(i, class_shift):
        image, label = synthetic.render(np.random.default_rng([2, 1, i]), 48, 0.0, class_shift,
                                        np.random.default_rng([2, 1, i, 1]))
        return label, {c: image[label == c].mean(0) for c in np.unique(label)}

    offsets = []
    for i in range(6):
        label0, clean = class_means(i, 0.0)
        label1, shifted = class_means(i, 0.2)
        assert np.array_equal(label0, label1)
        offsets.append({c: shifted[c] - clean[c] for c in clean})
    sky = [o[0] for o in offsets if 0 in o]
    assert np.mean([np.abs(o).mean() for o in sky]) > 10  # grey levels (0-255)
    assert np.std([o[2] for o in sky]) > 5  # each image its own offset
    first = offsets[0]
    assert len({round(float(v[2])) for v in first.values()}) > 1  # each class its own


def test_val_class_shift_applies_to_the_val_split_only(tmp_path):
    opts = dict(num_train=3, num_val=3, image_size=32, seed=1)
    prepare_dataset("synthetic", tmp_path, tmp_path / "a", **opts)
    prepare_dataset("synthetic", tmp_path, tmp_path / "b", val_class_shift=0.3, **opts)
    assert _digest(tmp_path / "a" / "train") == _digest(tmp_path / "b" / "train")
    assert _digest(tmp_path / "a" / "val" / "labels") == _digest(tmp_path / "b" / "val" / "labels")
    assert _digest(tmp_path / "a" / "val" / "images") != _digest(tmp_path / "b" / "val" / "images")
