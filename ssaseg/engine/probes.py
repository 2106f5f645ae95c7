"""Mechanism probes on a trained checkpoint: does SSA do what it claims?

    python -m ssaseg probe --params params/analysis.yaml RUN     -> probes.csv, probes.json, tsne.png

Features are the head's output F at feature resolution (labels resized by nearest), in eval
mode, on the stored images (the test resize of the eval pipeline, no augmentation).

- Intra-class shift (the paper's premise), for any classifier: for each class present in a test
  image, the cosine distance 1 - cos(c_img, c_train) between that image's class centre (mean F
  over its ground-truth pixels) and the class centre over the whole training split.
- Prototype shift (SSA only): per (test image, class present), the cosine to the image's
  ground-truth class centre of the fixed prototype W[k] (the linear classifier's weight, which
  classifies F) and of SSA's adapted centre (the vector the pixels F + P are compared with,
  against the centre of F + P). SEPA's claim holds where the adapted one is closer (larger
  cosine). The same for the spatial prototypes: the fixed position basis E[k] and the adapted
  spatial prototype ``pos`` against the class's mean position feature P over its pixels.
- t-SNE (scikit-learn, seeded, cosine metric) of one test image's pixel features (F + P for
  SSA) with the fixed and the adapted prototypes of the classes present.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ssaseg.data.transforms import normalize
from ssaseg.models.classifiers.class_centers import class_sums
from ssaseg.models.losses import resize_labels


def class_centres(values: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image class means of values (B, C, h, w) over labels (B, h, w): (B, K, C) and
    pixel counts (B, K); a class without pixels has a zero mean."""
    sums, counts = class_sums(values, labels, num_classes, ignore_index)
    return sums / counts.clamp_min(1.0)[..., None], counts


def intra_class_shift(image_centres: torch.Tensor, present: torch.Tensor,
                      train_centres: torch.Tensor) -> torch.Tensor:
    """1 - cos(image centre, train centre): image_centres (N, K, C), present (N, K) bool,
    train_centres (K, C) -> (N, K), NaN where the class is absent."""
    cos = F.cosine_similarity(image_centres, train_centres[None].expand_as(image_centres), dim=-1)
    return torch.where(present, 1.0 - cos, torch.full_like(cos, float("nan")))


def prototype_cosines(fixed: torch.Tensor, adapted: torch.Tensor, centres: torch.Tensor,
                      present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(fixed, centre) and cos(adapted, centre), each (N, K), NaN where absent.
    fixed (K, C) or (N, K, C); adapted (N, K, C) or (K, C); centres (N, K, C)."""
    nan = torch.full(present.shape, float("nan"), dtype=centres.dtype)
    fixed = fixed.expand_as(centres)
    adapted = adapted.expand_as(centres)
    return (torch.where(present, F.cosine_similarity(fixed, centres, dim=-1), nan),
            torch.where(present, F.cosine_similarity(adapted, centres, dim=-1), nan))


@torch.no_grad()
def _features(model, dataset, device, index: int):
    """(F (1, C, h, w), labels at feature size (1, h, w)) of one image."""
    sample = dataset[index]
    image = normalize(sample.image[None].to(device))  # (1, 3, h, w)
    feature = model.head(model.backbone(image)).feature.float()  # (1, C, h', w')
    label = sample.label[None].to(device).long()  # (1, H, W)
    return feature, resize_labels(label, tuple(feature.shape[-2:]))


@torch.no_grad()
def train_class_centres(model, dataset, device) -> torch.Tensor:
    """(K, C) mean head feature of every class over the split's pixels (one image at a time)."""
    num_classes, ignore = dataset.meta.num_classes, dataset.meta.ignore_index
    total, count = None, None
    for index in range(len(dataset)):
        feature, labels = _features(model, dataset, device, index)
        sums, counts = class_sums(feature, labels, num_classes, ignore)  # (1, K, C), (1, K)
        total = sums[0] if total is None else total + sums[0]
        count = counts[0] if count is None else count + counts[0]
    return total / count.clamp_min(1.0)[:, None]


@torch.no_grad()
def probe(model, train_set, val_set, device) -> dict:
    """Every probe over the validation images: a dict of (N, K) arrays (NaN where a class is
    absent) — ``intra_class_shift`` and, for SSA, ``semantic_fixed`` / ``semantic_adapted``
    and ``spatial_fixed`` / ``spatial_adapted`` (cosines to the image's class centre)."""
    model.eval()
    num_classes, ignore = val_set.meta.num_classes, val_set.meta.ignore_index
    train = train_class_centres(model, train_set, device)  # (K, C)
    clf = model.classifier
    is_ssa = hasattr(clf, "student")
    rows: dict[str, list[torch.Tensor]] = {}
    for index in range(len(val_set)):
        feature, labels = _features(model, val_set, device, index)
        centres, counts = class_centres(feature, labels, num_classes, ignore)  # (1, K, C)
        present = counts > 0  # (1, K)
        out = {"intra_class_shift": intra_class_shift(centres, present, train)}
        if is_ssa:
            _, position, pixels, _, pos, adapted = clf.student(feature)
            pixel_centres, _ = class_centres(pixels, labels, num_classes, ignore)
            out["semantic_fixed"], out["semantic_adapted"] = prototype_cosines(
                clf.prototypes, adapted, pixel_centres, present)
            if position is not None and pos is not None and pos.dim() == 3:
                pos_centres, _ = class_centres(position, labels, num_classes, ignore)
                out["spatial_fixed"], out["spatial_adapted"] = prototype_cosines(
                    clf.position_basis, pos, pos_centres, present)
        for key, value in out.items():
            rows.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values).numpy() for key, values in rows.items()}


@torch.no_grad()
def tsne_embedding(model, dataset, device, index: int, seed: int = 0, max_pixels: int = 600
                   ) -> dict:
    """2-D t-SNE (cosine metric, seeded) of one image's pixel features (F + P for SSA, F
    otherwise; at most ``max_pixels``, drawn with the seed) together with the fixed and, for
    SSA, the adapted prototypes of the classes present. Returns the points and their roles."""
    from sklearn.manifold import TSNE

    model.eval()
    feature, labels = _features(model, dataset, device, index)
    clf = model.classifier
    if hasattr(clf, "student"):
        _, _, pixels, _, _, adapted = clf.student(feature)
        fixed = clf.prototypes  # (K, C)
        adapted = adapted[0] if adapted.dim() == 3 else adapted  # (K, C)
    else:
        pixels, adapted = feature, None
        weight = getattr(clf, "conv", None)
        fixed = weight.weight.flatten(1) if weight is not None else None
    flat = pixels[0].flatten(1).T  # (hw, C)
    flat_labels = labels[0].flatten()  # (hw,)
    keep = flat_labels != dataset.meta.ignore_index
    flat, flat_labels = flat[keep], flat_labels[keep]
    rng = np.random.default_rng(seed)
    if len(flat) > max_pixels:
        chosen = torch.from_numpy(np.sort(rng.choice(len(flat), max_pixels, replace=False)))
        flat, flat_labels = flat[chosen], flat_labels[chosen]
    classes = torch.unique(flat_labels)
    parts, roles = [flat], ["pixel"] * len(flat)
    part_labels = [flat_labels]
    for name, protos in (("fixed", fixed), ("adapted", adapted)):
        if protos is not None:
            parts.append(protos[classes])
            part_labels.append(classes)
            roles += [name] * len(classes)
    points = torch.cat(parts).cpu().numpy().astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 4)))
    embedding = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                     random_state=seed).fit_transform(points)
    return {"xy": embedding, "label": torch.cat(part_labels).cpu().numpy(),
            "role": np.array(roles)}


def tsne_plot(embedding: dict, class_names: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssaseg.report import _png

    xy, label, role = embedding["xy"], embedding["label"], embedding["role"]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for k in np.unique(label):
        colour = cmap(int(k) % 20)
        pixel = (label == k) & (role == "pixel")
        ax.scatter(xy[pixel, 0], xy[pixel, 1], s=6, color=colour, alpha=0.5,
                   label=class_names[int(k)])
        for name, marker in (("fixed", "X"), ("adapted", "*")):
            mask = (label == k) & (role == name)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=160, marker=marker, color=colour,
                       edgecolor="black", linewidth=0.8)
        fixed, adapted = (label == k) & (role == "fixed"), (label == k) & (role == "adapted")
        if fixed.any() and adapted.any():
            ax.annotate("", xy=xy[adapted][0], xytext=xy[fixed][0],
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2})
    ax.set_title(title + "\nX = fixed prototype, * = adapted (SSA), arrow fixed -> adapted",
                 fontsize=8)
    ax.legend(fontsize=6, markerscale=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    data = _png(fig)
    plt.close(fig)
    return data
