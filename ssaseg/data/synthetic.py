"""The embedded default dataset: street-like scenes generated deterministically from a seed.

Ten classes, each with a base colour and an oriented stripe texture; classes that share a colour
(sky/water, grass/tree, road/building) differ by texture and by position, and every class has a
typical place in the frame (sky on top, road at the bottom centre, cars on the road, signs in the
middle band, ...), which a spatially aware classifier can use.

Every image also gets an appearance shift (per-channel colour cast, brightness, noise). The
validation split draws stronger shifts than the training split (``val_shift_scale``), so test
pixels drift away from the prototypes learnt in training: the effect SSA adapts to.

``class_shift`` adds a per-image, per-class appearance shift: each image draws, for every
class, its own offset of the base colour (N(0, class_shift) per channel), of the stripe
amplitude (x exp(N(0, class_shift))) and of the stripe period (x exp(N(0, class_shift / 2))),
so that a class looks different in every image: the intra-class shift SSA's premise is about.
Those draws come from a generator of their own, (seed, split, index, 1): at ``class_shift`` 0
the images are byte for byte those without the knob, and at any strength the scenes (labels)
and the global shift stay those of strength 0 (a sweep over the strength changes only the
class appearance).

Same seed and options, same bytes: each image has its own generator seeded from
(seed, split, index), and PNG files are written without timestamps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssaseg.atomic_io import atomic_directory
from ssaseg.data.layout import DatasetMeta, write_manifest, write_meta
from ssaseg.errors import ParameterError

CLASSES = [
    "sky", "building", "tree", "grass", "sand", "water", "road", "car", "person", "sign",
]
PALETTE = [
    [70, 130, 180], [70, 70, 70], [107, 142, 35], [152, 251, 152], [220, 200, 140],
    [0, 80, 200], [128, 64, 128], [0, 0, 142], [220, 20, 60], [220, 220, 0],
]
IGNORE_INDEX = 255
SPLIT_IDS = {"train": 0, "val": 1}

# base colour (RGB, 0-1), stripe period (px), stripe angle (rad), stripe amplitude
_TEXTURES = np.array(
    [
        # r,    g,    b,   period, angle, amp
        [0.45, 0.65, 0.90, 16.0, 0.00, 0.04],  # sky: blue, almost flat
        [0.50, 0.50, 0.52, 4.0, 1.57, 0.18],  # building: grey, fine vertical stripes
        [0.25, 0.55, 0.20, 3.0, 0.78, 0.20],  # tree: green, fine diagonal texture
        [0.30, 0.60, 0.25, 9.0, 0.00, 0.10],  # grass: green, coarse horizontal
        [0.80, 0.72, 0.50, 6.0, 0.40, 0.08],  # sand: beige
        [0.30, 0.50, 0.85, 5.0, 0.10, 0.15],  # water: blue, ripples
        [0.45, 0.45, 0.48, 12.0, 1.20, 0.05],  # road: grey, smooth
        [0.70, 0.15, 0.15, 2.5, 0.00, 0.10],  # car: red
        [0.85, 0.60, 0.45, 3.5, 1.57, 0.12],  # person: skin/cloth
        [0.90, 0.85, 0.15, 8.0, 0.78, 0.06],  # sign: yellow
    ],
    dtype=np.float32,
)


def _texture(cls: int, yy: np.ndarray, xx: np.ndarray, phase: float,
             textures: np.ndarray = _TEXTURES) -> np.ndarray:
    """(H, W, 3) texture of class ``cls`` (``textures``: this image's class statistics)."""
    r, g, b, period, angle, amp = textures[cls]
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return np.stack([r, g, b]).astype(np.float32)[None, None, :] + amp * wave[..., None]


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """(H, W) label map of one random scene, classes at their typical positions."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.zeros((h, w), dtype=np.uint8)  # sky everywhere, then paint over it
    horizon = int(h * rng.uniform(0.35, 0.5))
    ground = CLASSES.index(rng.choice(["grass", "sand"]))
    label[horizon:] = ground
    if rng.random() < 0.5:  # a water band just below the horizon
        top = horizon + int(h * rng.uniform(0.02, 0.08))
        label[top : top + int(h * rng.uniform(0.08, 0.15))] = CLASSES.index("water")
    # road: a trapezoid widening towards the bottom centre
    centre = w * rng.uniform(0.4, 0.6)
    half_width = (yy - horizon) / max(h - horizon, 1) * w * rng.uniform(0.25, 0.4)
    label[(yy > horizon + 0.15 * h) & (np.abs(xx - centre) < half_width)] = CLASSES.index("road")
    for _ in range(rng.integers(1, 4)):  # buildings stand on the horizon
        x0 = rng.uniform(0, w * 0.85)
        bw, bh = w * rng.uniform(0.1, 0.25), h * rng.uniform(0.15, 0.35)
        label[(xx >= x0) & (xx < x0 + bw) & (yy >= horizon - bh) & (yy < horizon)] = 1
    for _ in range(rng.integers(1, 3)):  # tree canopies near the horizon
        cx, cy, rad = rng.uniform(0, w), horizon - h * rng.uniform(0.0, 0.1), h * rng.uniform(0.06, 0.12)
        label[(xx - cx) ** 2 + (yy - cy) ** 2 < rad**2] = CLASSES.index("tree")
    for _ in range(rng.integers(0, 3)):  # cars on the road, low in the frame
        cy = h * rng.uniform(0.7, 0.9)
        cx = centre + rng.uniform(-0.15, 0.15) * w
        cw, ch = w * rng.uniform(0.1, 0.16), h * rng.uniform(0.06, 0.1)
        label[(np.abs(xx - cx) < cw / 2) & (np.abs(yy - cy) < ch / 2)] = CLASSES.index("car")
    for _ in range(rng.integers(0, 3)):  # people at the road side: thin upright ellipses
        cy, cx = h * rng.uniform(0.65, 0.85), rng.choice([rng.uniform(0.05, 0.3), rng.uniform(0.7, 0.95)]) * w
        ry, rx = h * rng.uniform(0.06, 0.1), w * rng.uniform(0.015, 0.03)
        label[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = CLASSES.index("person")
    if rng.random() < 0.6:  # a sign: a diamond in the middle band
        cy, cx, rad = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.1, 0.9), h * rng.uniform(0.04, 0.07)
        label[np.abs(xx - cx) + np.abs(yy - cy) < rad] = CLASSES.index("sign")
    return label


def shifted_textures(rng: np.random.Generator, class_shift: float) -> np.ndarray:
    """One image's class statistics (K, 6): every class's colour, amplitude and period
    offset by its own draw (see the module docstring); the base table at 0."""
    if class_shift == 0:
        return _TEXTURES
    k = len(CLASSES)
    out = _TEXTURES.copy()
    out[:, :3] += class_shift * rng.normal(0.0, 1.0, size=(k, 3))  # colour offset
    out[:, 5] *= np.exp(class_shift * rng.normal(0.0, 1.0, size=k))  # stripe amplitude
    out[:, 3] *= np.exp(0.5 * class_shift * rng.normal(0.0, 1.0, size=k))  # stripe period
    return out.astype(np.float32)


def render(
    rng: np.random.Generator, size: int, shift: float, class_shift: float = 0.0,
    class_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W, 3), label uint8 (H, W)) pair; ``shift`` scales the global
    appearance shift, ``class_shift`` the per-class one (drawn from ``class_rng``)."""
    label = _scene(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=len(CLASSES))
    if class_shift and class_rng is None:
        raise ValueError("class_shift > 0 needs its own generator (class_rng)")
    textures = shifted_textures(class_rng, class_shift)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for cls in np.unique(label):  # at most 10 classes per image; generation, not a hot path
        mask = label == cls
        image[mask] = _texture(int(cls), yy, xx, phases[cls], textures)[mask]
    cast = 1.0 + shift * rng.normal(0.0, 1.0, size=3)  # per-channel colour cast
    brightness = shift * rng.normal(0.0, 0.5)
    noise = shift * abs(rng.normal(0.0, 0.3)) * rng.normal(0.0, 1.0, size=image.shape)
    image = image * cast[None, None, :] + brightness + noise
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8), label


def prepare(
    raw_dir: Path,
    out_dir: Path,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 40,
    image_size: int = 64,
    train_shift: float = 0.08,
    val_shift_scale: float = 2.5,
    class_shift: float = 0.0,
    val_class_shift: float | None = None,
) -> dict:
    """Generate the dataset into ``out_dir`` (``raw_dir`` is unused: nothing to download).
    ``class_shift``: the per-image, per-class appearance shift of the training split and, unless
    ``val_class_shift`` is given, of the validation split."""
    counts = {"train": num_train, "val": num_val}
    for key, value in counts.items():
        if value < 1:
            raise ParameterError(f"synthetic: num_{key} must be >= 1, got {value}")
    if image_size < 16:
        raise ParameterError(f"synthetic: image_size must be >= 16, got {image_size}")
    class_shifts = {"train": class_shift,
                    "val": class_shift if val_class_shift is None else val_class_shift}
    for split, value in class_shifts.items():
        if value < 0:
            raise ParameterError(f"synthetic: the class shift of {split} must be >= 0, "
                                 f"got {value}")
    with atomic_directory(out_dir) as tmp:
        write_meta(tmp, DatasetMeta("synthetic", CLASSES, PALETTE, IGNORE_INDEX))
        for split, count in counts.items():
            shift = train_shift * (val_shift_scale if split == "val" else 1.0)
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "labels").mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
                class_rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 1])
                image, label = render(rng, image_size, shift, class_shifts[split], class_rng)
                Image.fromarray(image).save(tmp / split / "images" / f"{index:05d}.png")
                Image.fromarray(label).save(tmp / split / "labels" / f"{index:05d}.png")
        manifest = write_manifest(tmp, list(counts))
    return manifest
