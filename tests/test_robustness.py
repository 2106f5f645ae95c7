"""Evaluation under shift: corruptions deterministic under a seed, the shift sweep at strength 0
equal to the plain evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssaseg.data.dataset import SegmentationDataset
from ssaseg.data.prepare import prepare_dataset
from ssaseg.engine.evaluate import evaluate_per_image
from ssaseg.engine.robustness import (
    CorruptedImages,
    corrupt_image,
    corruption_names,
    evaluate_shift_sweep,
)

pytest.importorskip("imagecorruptions")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    opts = dict(num_train=2, num_val=3, image_size=32, seed=0)
    prepare_dataset("synthetic", root.parent, root, **opts)
    return root, opts


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "fog",
                                  "jpeg_compression", "frost"])
def test_corruptions_are_deterministic_under_a_seed(name):
    image = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = corrupt_image(image, name, 5, seed=7)
    b = corrupt_image(image, name, 5, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # the global generator restored
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, image)
    if name in ("gaussian_noise", "impulse_noise", "glass_blur"):  # random draws: seed matters
        assert not np.array_equal(a, corrupt_image(image, name, 5, seed=8))


def test_corrupted_dataset_is_the_same_on_every_read(dataset):
    root, _ = dataset
    base = SegmentationDataset(root, "val")
    corrupted = CorruptedImages(base, "shot_noise", 3, seed=0)
    first, again = corrupted[1], corrupted[1]
    assert torch.equal(first.image, again.image) and torch.equal(first.label, base[1].label)
    assert not torch.equal(first.image, base[1].image)


def test_corruption_names_expand_and_reject():
    assert len(corruption_names(["all"])) == 19
    assert corruption_names(["fog", "fog"]) == ["fog", "fog"]
    with pytest.raises(KeyError, match="unknown corruption 'rain'"):
        corruption_names(["rain"])


def test_shift_sweep_at_zero_is_the_plain_evaluation_and_grows_the_shift(dataset):
    from ssaseg.models.zoo import build_segmentor

    root, opts = dataset
    torch.manual_seed(0)
    model = build_segmentor("fcn_resnet18", "linear", 10).eval()
    plain, _, counts = evaluate_per_image(model, SegmentationDataset(root, "val"),
                                          torch.device("cpu"))
    rows, swept = evaluate_shift_sweep(model, opts, [0.0, 0.5], torch.device("cpu"))
    assert rows[0]["miou"] == pytest.approx(plain.miou)
    assert np.array_equal(swept["intersection"][0], counts.intersection.numpy())
    assert swept["union"].shape == (2, 3, 10)
