"""Paired differences between two classifiers, with 95 % intervals, two ways.

Across seeds (:func:`seed_difference`): the runs of the two classifiers with the same seed form
a pair; the differences d_s of their mIoU give mean, sd (n - 1) and the t-interval
mean +- t(0.975, n - 1) * sd / sqrt(n). It answers "would another training run give the same
gain?"; with 3 seeds the t quantile is 4.30, so only a large gain excludes zero.

Across test images (:func:`image_bootstrap`): the two classifiers were scored on the same test
images. A resample draws N of the N images with replacement (the same draw for both
classifiers: paired), sums each classifier's per-image intersections and unions over the drawn
images (:class:`ssaseg.engine.evaluate.PerImageCounts`), computes the dataset mIoU from those
sums exactly as the evaluation does (classes with a zero union left out), and takes the
difference. With several seeds each resample averages the difference over the seeds (the same
images for every seed). It answers "would another test set of the same kind give the same gain?"
and is blind to training noise; the seed interval is blind to test-set noise. Neither is the
other.

The bootstrap is ``scipy.stats.bootstrap`` (``paired=True``, BCa by default, seeded), fed a
vectorised mIoU statistic; ``classes`` restricts the mean to a subset of classes (the delta of
frequent / common / rare classes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Difference:
    """b - a (in the unit of the inputs): the estimate and its interval; ``n`` = pairs
    (seeds) or images; ``sd`` only for the seed difference."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    sd: float = math.nan

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}

    def format(self, digits: int = 2) -> str:
        """``+1.23 [0.45, 2.01]*`` (``*`` = the interval excludes zero); ``+1.23 [–]`` without
        an interval (one seed)."""
        if math.isnan(self.estimate):
            return "–"
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{self.estimate:+.{digits}f} [–]"
        star = "*" if self.excludes_zero else ""
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{star}"


def seed_difference(a: dict[int, float], b: dict[int, float],
                    confidence: float = CONFIDENCE) -> Difference:
    """Paired over the seeds both have: mean of b[s] - a[s], sd and t-interval (NaN interval
    with fewer than two pairs)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    d = np.array([b[s] - a[s] for s in seeds], dtype=np.float64)
    if len(d) == 0:
        return Difference(math.nan, math.nan, math.nan, 0, "seeds: t-interval")
    mean = float(d.mean())
    if len(d) < 2:
        return Difference(mean, math.nan, math.nan, 1, "seeds: t-interval")
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return Difference(mean, mean - half, mean + half, len(d), "seeds: t-interval", sd)


def miou_from_sums(intersection: np.ndarray, union: np.ndarray,
                   classes: np.ndarray | None = None) -> np.ndarray:
    """mIoU over the class axis (second to last) of summed counts (..., K): classes with a zero
    union left out, as :class:`ssaseg.engine.evaluate.SegmentationMetrics`; ``classes`` (K,)
    bool keeps only those classes. NaN where no class is left."""
    iou = np.where(union > 0, intersection / np.maximum(union, 1), np.nan)  # (..., K)
    if classes is not None:
        iou = np.where(classes, iou, np.nan)
    valid = ~np.isnan(iou)
    total = np.where(valid, iou, 0.0).sum(-1)
    count = valid.sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _image_weights(index: np.ndarray, n_images: int) -> np.ndarray:
    """Resampled image indices (..., n) -> how often each image was drawn (..., N)."""
    flat = index.reshape(-1, index.shape[-1])  # (R, n)
    weights = np.zeros((flat.shape[0], n_images))
    np.add.at(weights, (np.arange(flat.shape[0])[:, None], flat), 1.0)
    return weights.reshape(*index.shape[:-1], n_images)


def image_bootstrap(a_intersection: np.ndarray, a_union: np.ndarray,
                    b_intersection: np.ndarray, b_union: np.ndarray,
                    classes: np.ndarray | None = None, n_resamples: int = N_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
                    method: str = "BCa", scale: float = 100.0) -> Difference:
    """Paired bootstrap over test images of mIoU(b) - mIoU(a), times ``scale`` (100: in mIoU
    points). Counts are (N, K) for one seed or (S, N, K) for S seeds on the same N images.

    What scipy resamples is the image index (0..N-1), the one sample; the statistic turns a
    draw into per-image weights and both classifiers' sums use the same weights, which is what
    ``paired=True`` does inside scipy (it resamples an index too), without its layout of the
    resampled count arrays. A degenerate case (every resample gives the same difference, where
    BCa is undefined) returns that difference as both ends of the interval."""
    import warnings

    from scipy import stats

    arrays = [np.asarray(x, dtype=np.float64) for x in (a_intersection, a_union,
                                                         b_intersection, b_union)]
    if arrays[0].ndim == 2:
        arrays = [x[None] for x in arrays]  # (1, N, K)
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1:
        raise ValueError(f"per-image counts of different shapes: {sorted(shapes)}")
    counts = np.stack(arrays)  # (4, S, N, K)
    n_images = counts.shape[2]

    def statistic(index, axis=-1):
        weights = _image_weights(np.asarray(index), n_images)  # (..., N)
        sums = np.einsum("...n,csnk->...csk", weights, counts)  # (..., 4, S, K)
        diff = (miou_from_sums(sums[..., 2, :, :], sums[..., 3, :, :], classes)
                - miou_from_sums(sums[..., 0, :, :], sums[..., 1, :, :], classes))  # (..., S)
        return diff.mean(-1) * scale  # (...,)

    everything = np.arange(n_images)
    estimate = float(statistic(everything))
    method_name = f"images: paired {method} bootstrap, {n_resamples} resamples, seed {seed}"
    if n_images < 2 or math.isnan(estimate):
        return Difference(estimate, math.nan, math.nan, n_images, method_name)
    batch = max(1, int(2e7 // counts.size))  # bounded memory: batch x 4 x S x K sums
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        res = stats.bootstrap((everything,), statistic, n_resamples=n_resamples,
                              vectorized=True, confidence_level=confidence, method=method,
                              batch=batch, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        distribution = res.bootstrap_distribution
        if np.nanmax(distribution) - np.nanmin(distribution) < 1e-9:
            low = high = float(np.nanmin(distribution))
    return Difference(estimate, low, high, n_images, method_name)


def frequency_groups(train_pixels: np.ndarray, names: tuple[str, ...] = ("frequent", "common",
                                                                           "rare")
                     ) -> dict[str, np.ndarray]:
    """Classes split by their share of the training pixels into len(names) groups of (nearly)
    equal class count, most frequent first: name -> (K,) bool. Classes without training
    pixels go to the last group."""
    train_pixels = np.asarray(train_pixels, dtype=np.float64)
    order = np.argsort(-train_pixels, kind="stable")  # most frequent first
    groups = np.array_split(order, len(names))
    out = {}
    for name, members in zip(names, groups):
        mask = np.zeros(len(train_pixels), dtype=bool)
        mask[members] = True
        out[name] = mask
    return out
