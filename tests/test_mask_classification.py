"""Mask2Former's classifiers and set criterion without mmdet: point sampling of label masks,
matching costs against a per-pair reference, the Hungarian matching on a planted solution, the
`linear` and `ssa` classifiers end to end (forward, losses, backward, predict), what SSA is fed,
and the classifiers that are not defined for mask classification."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssaseg.config import ConfigError, validate_params
from ssaseg.models.classifiers.mask_classification import (
    MaskClassificationSSA,
    semantic_inference,
)
from ssaseg.models.heads.base import MaskPredictions
from ssaseg.models.point_sampling import point_sample, sample_label_masks
from ssaseg.models.set_criterion import SetCriterion, _mask_costs, semantic_targets
from ssaseg.models.zoo import build_segmentor
from tests.conftest import tiny_batch

NUM_CLASSES = 5


def test_label_masks_sampled_without_building_them_equal_point_sample():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 9, 11), generator=g)
    labels[0, :2] = 255
    images = torch.tensor([0, 0, 1, 1, 1])
    classes = torch.tensor([1, 3, 0, 2, 3])
    points = torch.rand(5, 40, 2, generator=g) * 1.2 - 0.1  # some outside the map
    masks = (labels[images] == classes[:, None, None]).float()[:, None]  # (N, 1, H, W)
    expected = point_sample(masks, points)[:, 0]
    torch.testing.assert_close(sample_label_masks(labels, images, classes, points), expected)


def test_semantic_targets_are_the_present_classes_per_image():
    labels = torch.tensor([[[0, 2], [255, 2]], [[1, 1], [1, 255]]])
    images, classes = semantic_targets(labels, num_classes=3, ignore_index=255)
    assert images.tolist() == [0, 0, 1] and classes.tolist() == [0, 2, 1]


def test_mask_costs_match_a_per_pair_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 30, generator=g, dtype=torch.float64)
    targets = (torch.rand(2, 3, 30, generator=g) > 0.5).double()
    bce, dice = _mask_costs(logits, targets)
    for b in range(2):
        for q in range(4):
            for t in range(3):
                x, y = logits[b, q], targets[b, t]
                ref_bce = F.binary_cross_entropy_with_logits(x, y)
                p = x.sigmoid()
                ref_dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
                torch.testing.assert_close(bce[b, q, t], ref_bce)
                torch.testing.assert_close(dice[b, q, t], ref_dice)


def _planted(batch=2, queries=6, size=16):
    """Labels with 3 classes per image and predictions whose query perm[k] predicts target k
    (its class and mask, sharply); every other query predicts "no object"."""
    g = torch.Generator().manual_seed(2)
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, :, size // 3:] = 2
    labels[:, size // 2:, :] = 4
    labels[1] += 0  # same layout, different queries below
    class_logits = torch.full((batch, queries, NUM_CLASSES + 1), -8.0)
    class_logits[..., -1] = 8.0
    mask_logits = torch.full((batch, queries, size, size), -8.0)
    images, classes = semantic_targets(labels, NUM_CLASSES, 255)
    perms = [torch.randperm(queries, generator=g)[:3] for _ in range(batch)]
    expected = {}
    for n, (b, k) in enumerate(zip(images.tolist(), classes.tolist())):
        q = int(perms[b][sum(1 for i in images[:n].tolist() if i == b)])
        class_logits[b, q] = -8.0
        class_logits[b, q, k] = 8.0
        mask_logits[b, q] = torch.where(labels[b] == k, 8.0, -8.0)
        expected[n] = b * queries + q
    return labels, class_logits, mask_logits, images, classes, expected


def test_matching_finds_the_planted_assignment():
    labels, class_logits, mask_logits, images, classes, expected = _planted()
    criterion = SetCriterion(NUM_CLASSES, num_points=200)
    torch.manual_seed(0)
    queries, targets = criterion.match(class_logits, mask_logits, labels, images, classes)
    assert dict(zip(targets.tolist(), queries.tolist())) == expected
    assert queries.tolist() == sorted(queries.tolist())  # ordered by image, then query


def test_perfect_predictions_cost_less_than_shuffled_ones():
    labels, class_logits, mask_logits, *_ = _planted()
    criterion = SetCriterion(NUM_CLASSES, num_points=200)
    torch.manual_seed(0)
    good = criterion(MaskPredictions([class_logits], [mask_logits]), labels)
    shuffled = torch.roll(mask_logits, 1, dims=-1)
    torch.manual_seed(0)
    bad = criterion(MaskPredictions([class_logits], [shuffled]), labels)
    assert set(good) == {"mask_class_ce", "mask_bce", "mask_dice"}
    assert good["mask_class_ce"] < 0.01  # (the mask terms stay > 0: 75 % of the points sit
    # on mask edges, where bilinear reading gives soft targets)
    assert bad["mask_bce"] > good["mask_bce"] and bad["mask_dice"] > good["mask_dice"]
    # an image set without any labelled pixel: only the class loss, still differentiable
    empty = criterion(MaskPredictions([class_logits], [mask_logits]),
                      torch.full_like(labels, 255))
    assert float(empty["mask_bce"]) == 0.0 and empty["mask_class_ce"] > 0


@pytest.fixture
def tiny_mask2former(monkeypatch):
    """The same code as mask2former_r50 at a fraction of its size (ResNet-18, 64 channels,
    10 queries, 1 encoder and 3 decoder layers, 500 points)."""
    from ssaseg.models.zoo import MODELS, ModelSpec

    spec = ModelSpec(
        backbone="timm",
        backbone_kwargs=dict(model_name="resnet18", out_indices=(1, 2, 3, 4),
                             freeze_bn_stats=True, freeze_bn_affine=True),
        head="mask2former",
        head_kwargs=dict(channels=64, mask_channels=64, num_queries=10, encoder_layers=1,
                         encoder_ffn_channels=128, decoder_layers=3, decoder_ffn_channels=128,
                         num_heads=4, num_groups=8),
        mask_classification=True, criterion_kwargs=dict(num_points=500),
    )
    monkeypatch.setitem(MODELS, "tiny_mask2former", spec)
    return "tiny_mask2former"


def _train_and_predict(model: str, classifier: str) -> None:
    torch.manual_seed(0)
    seg = build_segmentor(model, classifier, num_classes=NUM_CLASSES).train()
    images, labels = tiny_batch(NUM_CLASSES)
    out = seg(images, labels)
    assert {"mask_class_ce", "mask_bce", "mask_dice"} <= set(out.losses)
    if classifier == "ssa":
        assert {"ce", "coarse_ce", "teacher_ce", "dice"} <= set(out.losses)
    assert torch.isfinite(out.total_loss)
    out.total_loss.backward()
    unused = [n for n, p in seg.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    frozen = [n for n, p in seg.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(".bn" in n or "downsample.1" in n for n in frozen)  # frozen BN only
    seg.eval()
    scores = seg.predict(images)
    assert scores.shape == (2, NUM_CLASSES, 64, 64) and torch.isfinite(scores).all()
    if classifier == "linear":  # Mask2Former's scores: sums of probability products
        assert (scores >= 0).all() and (scores <= 10).all()


@pytest.mark.parametrize("classifier", ["linear", "ssa"])
def test_mask_classification_trains_and_predicts(tiny_mask2former, classifier):
    _train_and_predict(tiny_mask2former, classifier)


def test_mask2former_r50_training_step():
    """The zoo model itself, once (~3 s on an idle 2-core machine)."""
    _train_and_predict("mask2former_r50", "ssa")


def test_ssa_gets_the_log_semantic_inference_as_coarse_mask(monkeypatch):
    """SSA's class attention (softmax over classes of its coarse mask) is exactly Mask2Former's
    semantic inference normalised per pixel."""
    torch.manual_seed(0)
    clf = MaskClassificationSSA(in_channels=16, num_classes=NUM_CLASSES).eval()
    feature = torch.randn(2, 16, 8, 8)
    predictions = MaskPredictions([torch.randn(2, 7, NUM_CLASSES + 1)], [torch.randn(2, 7, 8, 8)])
    seen = {}
    original = clf.ssa.coarse.forward

    def spy(feature_in, labels=None):
        out = original(feature_in, labels)
        seen["coarse"] = out.logits
        return out

    monkeypatch.setattr(clf.ssa.coarse, "forward", spy)
    with torch.no_grad():
        out = clf(feature, predictions)
    scores = semantic_inference(predictions.class_logits[-1], predictions.mask_logits[-1])
    torch.testing.assert_close(seen["coarse"].softmax(1), scores / scores.sum(1, keepdim=True))
    assert out.logits.shape == (2, NUM_CLASSES, 8, 8)
    assert clf.ssa.coarse.given is None  # not kept after the call
    assert clf.ssa.coarse.conv.bias is None  # W only: nothing would train a bias


def test_classifiers_not_defined_for_mask_classification_are_refused():
    with torch.device("meta"), pytest.raises(KeyError, match="mask-classification"):
        build_segmentor("mask2former_r50", "protoseg", num_classes=NUM_CLASSES)
    base = {"name": "t", "datasets": {"synthetic": {}}, "models": ["mask2former_r50"]}
    with pytest.raises(ConfigError, match="protoseg"):
        validate_params({**base, "classifiers": {"linear": {}, "protoseg": {}}})
    with pytest.raises(ConfigError, match="no parameters"):
        validate_params({**base, "classifiers": {"linear": {"dropout": 0.2}}})
    validate_params({**base, "classifiers": {"linear": {}, "ssa": {"preset": "paper"}}})


def test_mask2former_optimiser_groups():
    """The reference's: backbone at 0.1x the head's lr (lr 1e-5, head_lr_mult 10), no weight
    decay on the query and level embeddings nor on norms; frozen BatchNorm not optimised."""
    from ssaseg.config import OptimizerConfig
    from ssaseg.engine.optim import build_optimizer

    with torch.device("meta"):
        seg = build_segmentor("mask2former_r50", "linear", num_classes=NUM_CLASSES)
    cfg = OptimizerConfig(name="adamw", lr=1e-5, weight_decay=0.05, momentum=0.9,
                          betas=(0.9, 0.999), head_lr_mult=10.0, norm_weight_decay=0.0)
    optimizer = build_optimizer(seg, cfg)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(seg.named_parameters())
    for name in ("head.decoder.query_feat.weight", "head.decoder.query_embed.weight",
                 "head.decoder.level_embed.weight", "head.decoder.post_norm.weight"):
        assert group_of[id(params[name])]["weight_decay"] == 0.0, name
    head = group_of[id(params["head.decoder.class_embed.weight"])]
    assert (head["lr"], head["weight_decay"]) == (1e-4, 0.05)
    backbone = group_of[id(params["backbone.model.layer1.0.conv1.weight"])]
    assert (backbone["lr"], backbone["weight_decay"]) == (1e-5, 0.05)
    assert id(params["backbone.model.bn1.weight"]) not in group_of  # frozen
