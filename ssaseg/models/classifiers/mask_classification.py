"""Pixel classifiers for a mask-classification head (Mask2Former): ``linear`` and ``ssa``.

A mask-classification head does not end in a per-pixel feature map that a 1x1 conv classifies:
it predicts Q masks, each with a class distribution over K classes + "no object"
(:class:`ssaseg.models.heads.base.MaskPredictions`), and the per-pixel embedding the masks are
dot products with. The classifier turns those into per-pixel class scores and adds its losses.

``linear`` -- Mask2Former as published, the baseline row. There is no 1x1-conv classifier to
keep: ``linear`` here means Mask2Former's own semantic inference,
``S[k, p] = sum_q softmax(class_q)[k] * sigmoid(mask_q[p])`` (the "no object" column dropped),
and its set-prediction loss (:mod:`ssaseg.models.set_criterion`: Hungarian matching, class
cross-entropy with the no-object weight, mask BCE and Dice on sampled points, every decoder
stage). Inference upsamples the final stage's mask logits to the input size before the sigmoid
and the sum, as detectron2 and mmsegmentation do; ``S`` (not a logit: its argmax is the
prediction) is the output.

``ssa`` -- Mask2Former + SSA, the design behind the SSA-Seg authors' answer to their reviewers
(ADE20K, R50, 160k: 47.2 -> 48.5 mIoU; they described no more than "embedding SSA into
Mask2Former's classifier", so the details below are ours). SSA is the one SSA module of the
project (:class:`ssaseg.models.classifiers.ssa.SSAClassifier`), unchanged, with two inputs
taken from Mask2Former:
* its pixel features F are the pixel decoder's per-pixel embedding (stride 4, 256 channels: the
  highest-resolution mask features, the map the masks themselves are computed from);
* its coarse mask M is Mask2Former's semantic inference at that resolution, as logits:
  ``M = log S`` (clamped at 1e-6). SSA only ever uses M through softmaxes, so the class
  attention of SEPA (softmax over classes) is exactly S normalised per pixel, and the spatial
  attention of SPPA (softmax over positions) is S normalised per class. SSA's own 1x1 conv is
  not evaluated; its weight W remains SSA's fixed class prototypes (the SEPA MLP input and the
  teacher's fallback for absent classes), learned through them; it has no bias.
SSA's adapted output (temperature-scaled cosine logits) is the final per-pixel prediction. The
loss is Mask2Former's set-prediction loss (it keeps training the queries whose masks form M) plus
SSA's own eight terms, with SSA's ``coarse_ce`` now the cross-entropy of the normalised semantic
inference. ``protoseg`` is not defined for mask classification: ProtoSeg replaces a per-pixel
softmax classifier, which Mask2Former does not have.

How SSA receives M: SSAClassifier computes its coarse mask by calling its ``coarse`` submodule;
here that submodule is :class:`GivenCoarseLogits`, which hands back the M set just before the
call. (A ``coarse_logits=`` argument of ``SSAClassifier.forward`` would do the same without the
stand-in; ssa.py is left untouched here.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.errors import UnknownNameError
from ssaseg.models.classifiers.base import ClassifierOutput
from ssaseg.models.classifiers.linear import PointwiseConv2d
from ssaseg.models.classifiers.ssa import SSAClassifier
from ssaseg.models.heads.base import MaskPredictions
from ssaseg.models.set_criterion import SetCriterion

COARSE_EPS = 1e-6


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, Q, K+1) class logits and (B, Q, h, w) mask logits -> (B, K, h, w) class scores."""
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, mask_logits.sigmoid())


def _upsampled_semantic_inference(predictions: MaskPredictions, size) -> torch.Tensor:
    masks = F.interpolate(predictions.mask_logits[-1].float(), size=size, mode="bilinear",
                          align_corners=False)
    return semantic_inference(predictions.class_logits[-1].float(), masks)


class MaskClassificationLinear(nn.Module):
    """``linear`` for a mask-classification head: Mask2Former's semantic inference and set loss.
    No parameters. ``criterion``: keyword arguments of :class:`SetCriterion`."""

    def __init__(self, in_channels: int, num_classes: int, ignore_index: int = 255,
                 criterion: dict | None = None) -> None:
        super().__init__()
        self.criterion = SetCriterion(num_classes, ignore_index, **(criterion or {}))

    def forward(self, feature: torch.Tensor, predictions: MaskPredictions,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        logits = semantic_inference(predictions.class_logits[-1], predictions.mask_logits[-1])
        losses = self.criterion(predictions, labels) if self.training and labels is not None else {}
        return ClassifierOutput(logits, losses)

    @torch.no_grad()
    def predict(self, feature: torch.Tensor, predictions: MaskPredictions, size) -> torch.Tensor:
        """(B, K, H, W) fp32 scores at ``size`` from masks upsampled before the sigmoid."""
        return _upsampled_semantic_inference(predictions, size)


class GivenCoarseLogits(nn.Module):
    """Stands in for SSA's linear classifier: returns the coarse logits set in ``given`` and
    keeps SSA's class prototypes W as ``conv.weight`` (no bias: nothing would train it)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = PointwiseConv2d(in_channels, num_classes, bias=False)
        nn.init.normal_(self.conv.weight, std=0.01)
        self.given: torch.Tensor | None = None

    def forward(self, feature: torch.Tensor,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        if self.given is None:
            raise RuntimeError("GivenCoarseLogits called without coarse logits: it only runs "
                               "inside MaskClassificationSSA")
        return ClassifierOutput(self.given)


class MaskClassificationSSA(nn.Module):
    """``ssa`` for a mask-classification head (see the module docstring). ``ssa_params`` are
    :class:`SSAClassifier`'s (the params file's ``classifiers.ssa``); ``criterion`` the
    :class:`SetCriterion`'s."""

    def __init__(self, in_channels: int, num_classes: int, ignore_index: int = 255,
                 criterion: dict | None = None, **ssa_params) -> None:
        super().__init__()
        self.criterion = SetCriterion(num_classes, ignore_index, **(criterion or {}))
        self.ssa = SSAClassifier(in_channels, num_classes, ignore_index, **ssa_params)
        self.ssa.coarse = GivenCoarseLogits(in_channels, num_classes)

    def inference_parameters(self) -> list[nn.Parameter]:
        return self.ssa.inference_parameters()

    def coarse_logits(self, predictions: MaskPredictions) -> torch.Tensor:
        """M = log of the final stage's semantic inference, (B, K, h, w)."""
        scores = semantic_inference(predictions.class_logits[-1].float(),
                                    predictions.mask_logits[-1].float())
        return scores.clamp_min(COARSE_EPS).log()

    def forward(self, feature: torch.Tensor, predictions: MaskPredictions,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        self.ssa.coarse.given = self.coarse_logits(predictions).to(feature.dtype)
        try:
            out = self.ssa(feature, labels)
        finally:
            self.ssa.coarse.given = None
        losses = dict(out.losses)
        if self.training and labels is not None:
            losses.update(self.criterion(predictions, labels))
        return ClassifierOutput(out.logits, losses)

    @torch.no_grad()
    def predict(self, feature: torch.Tensor, predictions: MaskPredictions, size) -> torch.Tensor:
        logits = self(feature, predictions).logits.float()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


MASK_CLASSIFIERS = {"linear": MaskClassificationLinear, "ssa": MaskClassificationSSA}


def build_mask_classifier(name: str, in_channels: int, num_classes: int, ignore_index: int,
                          criterion: dict | None = None, **params) -> nn.Module:
    if name not in MASK_CLASSIFIERS:
        known = ", ".join(sorted(MASK_CLASSIFIERS))
        raise UnknownNameError(f"classifier {name!r} is not defined for a mask-classification head "
                       f"(Mask2Former); known there: {known}")
    return MASK_CLASSIFIERS[name](in_channels, num_classes, ignore_index, criterion=criterion,
                                  **params)
