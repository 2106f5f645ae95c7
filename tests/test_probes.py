"""Mechanism probes (ssaseg/engine/probes.py) on a hand-built case with known answers: a
'classifier' whose adapted prototype sits exactly on the class centre."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssaseg.data.dataset import Sample
from ssaseg.data.layout import DatasetMeta
from ssaseg.data.transforms import MEAN_255, STD_255
from ssaseg.engine.probes import intra_class_shift, probe, prototype_cosines, tsne_embedding
from ssaseg.models.classifiers.class_centers import soft_class_means

K = 3


class _Scenes(torch.utils.data.Dataset):
    """Label maps with three classes; a pixel of class k has ``level`` in channel k, 0
    elsewhere, so that its (normalised) feature is a known vector."""

    def __init__(self, level: int, n: int = 4, absent: int | None = None):
        g = torch.Generator().manual_seed(level)
        self.labels = torch.randint(0, K, (n, 16, 16), generator=g, dtype=torch.uint8)
        if absent is not None:
            self.labels[self.labels == absent] = (absent + 1) % K
        self.labels[:, 0] = 255
        self.level = level
        self.meta = DatasetMeta("toy", ["a", "b", "c"], [[0, 0, 0]] * K, 255)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        label = self.labels[i]
        onehot = F.one_hot(label.long().clamp(max=K - 1), K)  # (H, W, 3)
        image = (onehot * self.level).to(torch.uint8)
        return Sample(image, label, torch.tensor(label.shape))


def feature_of(level: int, k: int) -> torch.Tensor:
    """The normalised feature of a class-k pixel at ``level``."""
    raw = torch.zeros(3)
    raw[k] = level
    return (raw - torch.tensor(MEAN_255)) / torch.tensor(STD_255)


class _AdaptsExactly(torch.nn.Module):
    """SSA's interface: its adapted centres are the soft class means of the pixels under a
    coarse mask that is exact (the feature's argmax channel is the class), i.e. the class
    centres; its fixed prototypes are the unit vectors."""

    prototypes = torch.eye(K)

    def student(self, feature):
        coarse = F.one_hot(feature.argmax(1), K).permute(0, 3, 1, 2).float() * 50.0
        centres = soft_class_means(feature.flatten(2), coarse.flatten(2).softmax(1))
        return coarse, None, feature, centres, None, centres


def toy_model():
    return SimpleNamespace(backbone=lambda x: x, head=lambda x: SimpleNamespace(feature=x),
                           classifier=_AdaptsExactly(), eval=lambda: None)


def test_intra_class_shift_and_prototype_cosines_have_the_known_values():
    train, val = _Scenes(255), _Scenes(128, absent=2)
    out = probe(toy_model(), train, val, torch.device("cpu"))
    shift = out["intra_class_shift"]  # (N, K)
    assert np.isnan(shift[:, 2]).all()  # class 2 is absent from every val image
    for k in (0, 1):
        expected = 1 - F.cosine_similarity(feature_of(128, k), feature_of(255, k), dim=0)
        assert shift[:, k] == pytest.approx(np.full(len(val), float(expected)), abs=1e-5)
    # the adapted prototype sits on the image's class centre: cosine 1; the fixed one is e_k
    assert out["semantic_adapted"][:, :2] == pytest.approx(np.ones((len(val), 2)), abs=1e-5)
    for k in (0, 1):
        fixed = F.cosine_similarity(torch.eye(K)[k], feature_of(128, k), dim=0)
        assert out["semantic_fixed"][:, k] == pytest.approx(np.full(len(val), float(fixed)),
                                                            abs=1e-5)
    assert "spatial_fixed" not in out  # no position prototypes in this classifier


def test_no_shift_on_the_training_images():
    train = _Scenes(255)
    out = probe(toy_model(), train, train, torch.device("cpu"))
    assert np.nanmax(out["intra_class_shift"]) == pytest.approx(0.0, abs=1e-6)


def test_cosine_helpers_on_vectors():
    centres = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, K=2, C=2)
    present = torch.tensor([[True, False]])
    shift = intra_class_shift(centres, present, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert shift[0, 0] == pytest.approx(1 - 1 / math.sqrt(2)) and torch.isnan(shift[0, 1])
    fixed, adapted = prototype_cosines(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), centres,
                                       centres, present)
    assert fixed[0, 0] == pytest.approx(0.0) and adapted[0, 0] == pytest.approx(1.0)


def test_tsne_is_seeded_and_embeds_pixels_and_both_prototypes():
    pytest.importorskip("sklearn")
    val = _Scenes(200)
    first = tsne_embedding(toy_model(), val, torch.device("cpu"), 0, seed=3, max_pixels=80)
    again = tsne_embedding(toy_model(), val, torch.device("cpu"), 0, seed=3, max_pixels=80)
    assert np.allclose(first["xy"], again["xy"])
    roles = list(first["role"])
    assert roles.count("pixel") == 80 and roles.count("fixed") == roles.count("adapted") == K
    assert first["xy"].shape == (80 + 2 * K, 2)
