"""Paired differences (ssaseg/statistics.py) against slow references and known answers, and the
per-image counts the image bootstrap resamples (ssaseg/engine/evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssaseg.data.dataset import Sample
from ssaseg.data.layout import DatasetMeta
from ssaseg.data.transforms import normalize
from ssaseg.engine.evaluate import PerImageCounts, confusion_matrix, evaluate_per_image
from ssaseg.statistics import (
    frequency_groups,
    image_bootstrap,
    miou_from_sums,
    seed_difference,
)


def slow_miou(intersection, union) -> float:
    """mIoU of (N, K) counts, a loop over classes."""
    ious = []
    for k in range(intersection.shape[1]):
        u = union[:, k].sum()
        if u > 0:
            ious.append(intersection[:, k].sum() / u)
    return float(np.mean(ious))


def slow_paired_bootstrap(ia, ua, ib, ub, n_resamples, seed):
    """Percentile interval of mIoU(b) - mIoU(a) over images drawn with replacement, in points."""
    rng = np.random.default_rng(seed)
    n = ia.shape[0]
    diffs = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, n)
        diffs.append(100 * (slow_miou(ib[idx], ub[idx]) - slow_miou(ia[idx], ua[idx])))
    return np.percentile(diffs, [2.5, 97.5])


def random_counts(rng, n, k, gain):
    union = rng.integers(20, 200, (n, k))
    union[rng.random((n, k)) < 0.2] = 0  # classes absent from some images
    a = np.floor(union * rng.uniform(0.3, 0.7, (n, k))).astype(np.int64)
    b = np.minimum(union, np.floor(union * rng.uniform(0.3 + gain, 0.7 + gain, (n, k)))).astype(
        np.int64)
    return a, union, b, union


def test_bootstrap_interval_matches_a_slow_reference():
    ia, ua, ib, ub = random_counts(np.random.default_rng(3), 30, 5, 0.05)
    ours = image_bootstrap(ia, ua, ib, ub, n_resamples=2000, method="percentile")
    low, high = slow_paired_bootstrap(ia, ua, ib, ub, 2000, seed=7)
    assert ours.estimate == pytest.approx(100 * (slow_miou(ib, ub) - slow_miou(ia, ua)))
    width = high - low
    # different random draws: the ends agree to Monte-Carlo error (a few % of the width)
    assert abs(ours.low - low) < 0.1 * width and abs(ours.high - high) < 0.1 * width
    bca = image_bootstrap(ia, ua, ib, ub, n_resamples=2000)
    assert abs(bca.low - low) < 0.2 * width and abs(bca.high - high) < 0.2 * width


def test_bootstrap_of_a_mean_has_the_normal_theory_interval():
    """One class, the same union in every image: mIoU(b) - mIoU(a) = mean(b_i - a_i) / U, so
    the bootstrap interval is that of a mean, ~ mean +- 1.96 sd / sqrt(N) for large N."""
    rng = np.random.default_rng(0)
    n, union = 400, 1000
    ia = rng.integers(300, 700, (n, 1))
    ib = np.clip(ia + rng.normal(20, 60, (n, 1)).round().astype(np.int64), 0, union)
    u = np.full((n, 1), union)
    d = 100 * (ib - ia)[:, 0] / union
    ours = image_bootstrap(ia, u, ib, u, n_resamples=4000, method="percentile")
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert ours.estimate == pytest.approx(d.mean())
    assert ours.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert ours.high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert ours.excludes_zero


def test_bootstrap_is_seeded_and_identical_classifiers_give_zero():
    ia, ua, ib, ub = random_counts(np.random.default_rng(1), 20, 4, 0.0)
    first, again = image_bootstrap(ia, ua, ib, ub, seed=5), image_bootstrap(ia, ua, ib, ub, seed=5)
    assert (first.low, first.high) == (again.low, again.high)
    other = image_bootstrap(ia, ua, ib, ub, seed=6)
    assert (other.low, other.high) != (first.low, first.high)
    same = image_bootstrap(ia, ua, ia, ua)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero


def test_seeds_of_the_bootstrap_average_the_per_seed_differences():
    rng = np.random.default_rng(2)
    runs = [random_counts(rng, 15, 3, g) for g in (0.0, 0.1)]
    stacked = [np.stack([r[i] for r in runs]) for i in range(4)]
    both = image_bootstrap(*stacked, n_resamples=500)
    singles = [image_bootstrap(*r, n_resamples=500).estimate for r in runs]
    assert both.estimate == pytest.approx(np.mean(singles))


def test_class_subset_restricts_the_mean():
    ia, ua, ib, ub = random_counts(np.random.default_rng(4), 10, 4, 0.1)
    mask = np.array([True, False, True, False])
    sub = image_bootstrap(ia, ua, ib, ub, classes=mask, n_resamples=200)
    expected = 100 * (slow_miou(ib[:, mask], ub[:, mask]) - slow_miou(ia[:, mask], ua[:, mask]))
    assert sub.estimate == pytest.approx(expected)


def test_seed_difference_is_the_t_interval():
    a = {0: 40.0, 1: 41.0, 2: 42.0}
    b = {0: 41.0, 1: 43.0, 2: 45.0, 7: 99.0}  # seed 7 has no pair: left out
    d = seed_difference(a, b)
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (d.estimate, d.sd, d.n) == (2.0, 1.0, 3)
    assert d.high - d.estimate == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert d.excludes_zero is False  # 2 - 2.484 < 0
    one = seed_difference({0: 1.0}, {0: 2.0})
    assert one.estimate == 1.0 and math.isnan(one.low) and one.format() == "+1.00 [–]"


def test_miou_from_sums_skips_classes_without_union():
    i = np.array([[1, 0, 2]])
    u = np.array([[2, 0, 4]])
    assert miou_from_sums(i, u)[0] == pytest.approx(0.5)


def test_frequency_groups_are_thirds_by_training_pixels():
    groups = frequency_groups(np.array([5, 100, 0, 50, 7, 1000]))
    assert groups["frequent"].tolist() == [False, True, False, False, False, True]
    assert groups["common"].tolist() == [False, False, False, True, True, False]
    assert groups["rare"].tolist() == [True, False, True, False, False, False]


class _Images(torch.utils.data.Dataset):
    """Five seeded label maps (with ignored pixels); the 'image' carries the label."""

    def __init__(self, k=4):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, k, (5, 12, 10), generator=g, dtype=torch.uint8)
        self.labels[:, :2] = 255
        self.meta = DatasetMeta("toy", [f"c{i}" for i in range(k)], [[0, 0, 0]] * k, 255)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        label = self.labels[i]
        image = torch.stack([label.float()] * 3, -1)  # (H, W, 3)
        return Sample(image, label, torch.tensor(label.shape))


class _NoisyModel(torch.nn.Module):
    """Logits from a fixed random field, so that predictions are partly wrong."""

    def predict(self, image):
        g = torch.Generator().manual_seed(int(image.sum().item() * 1000) % 2**31)
        return torch.randn(1, 4, *image.shape[-2:], generator=g)


def test_per_image_counts_sum_to_the_confusion_matrix():
    dataset = _Images()
    metrics, cm, counts = evaluate_per_image(_NoisyModel(), dataset, torch.device("cpu"))
    assert counts.intersection.shape == (5, 4)
    tp, gt, pred = cm.diagonal(), cm.sum(1), cm.sum(0)
    assert torch.equal(counts.intersection.sum(0), tp)
    assert torch.equal(counts.union.sum(0), gt + pred - tp)
    assert torch.equal(counts.label_pixels.sum(0), gt)
    # the per-image rows, one image at a time, as a slow reference
    for i in range(len(dataset)):
        image_cm = confusion_matrix(
            _NoisyModel().predict(normalize(dataset[i].image[None])).argmax(1)[0],
            dataset.labels[i].long(), 4, 255)
        assert counts.intersection[i].tolist() == image_cm.diagonal().tolist()
    expected = miou_from_sums(counts.intersection.sum(0).numpy(), counts.union.sum(0).numpy())
    assert metrics.miou == pytest.approx(float(expected))


def test_per_image_counts_round_trip(tmp_path):
    counts = PerImageCounts(*torch.randint(0, 9, (3, 4, 2)))
    counts.save(tmp_path / "c.npz")
    back = PerImageCounts.load(tmp_path / "c.npz")
    assert all(torch.equal(x, y) for x, y in zip(
        (counts.intersection, counts.union, counts.label_pixels),
        (back.intersection, back.union, back.label_pixels)))
