"""Mask2Former's set-prediction loss for semantic segmentation (Cheng et al., CVPR 2022; the
detectron2 code facebookresearch/Mask2Former mask2former/modeling/{matcher,criterion}.py and
mmdet 3.3's Mask2FormerHead agree on every number here).

Targets: per image, one binary mask per class present in its label map (ignored pixels are in
no mask). For each decoder stage separately:

1. Matching. Per image, the same ``num_points`` uniform random points are read from every
   predicted mask and every target mask (bilinear). Cost of query q for target t:
   ``class_weight * -p_q(class_t) + mask_weight * BCE + dice_weight * Dice`` (BCE and Dice over
   the points, sigmoid of the mask logits); the Hungarian assignment
   (``scipy.optimize.linear_sum_assignment``) gives each target one query.
2. Losses. Class: cross-entropy over K + 1 classes for every query, matched queries against
   their target's class, the others against "no object", weighted per class (``no_object_weight``
   for "no object", 1 otherwise) and normalised by the sum of the weights. Masks, for matched
   pairs only: ``num_points`` points per mask, 75 % of them the most uncertain (logit nearest 0)
   of 3x as many uniform candidates, the rest uniform; mean BCE over the points and Dice
   (``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)``), each summed over the masks and divided by
   the number of targets in the batch (averaged over DDP ranks, at least 1).

The stage losses are summed over all stages (deep supervision) and reported as three terms,
each already weighted: ``mask_class_ce``, ``mask_bce``, ``mask_dice``. Everything runs in fp32.
Vectorised over images and masks; only the assignment itself (a combinatorial solve on a
Q x G cost matrix) runs per image, on the CPU, as in both references.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from ssaseg.models.heads.base import MaskPredictions
from ssaseg.models.mixed_precision import autocast_off
from ssaseg.models.point_sampling import point_sample, sample_label_masks, uncertain_points


def semantic_targets(labels: torch.Tensor, num_classes: int,
                     ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, class) pairs present in (B, H, W) labels, sorted by image then class:
    two (G,) int64 tensors. Each pair is one target mask ``labels[image] == class``."""
    batch = labels.shape[0]
    flat = labels.reshape(batch, -1)
    bins = torch.where(flat == ignore_index, num_classes, flat).clamp(0, num_classes)
    present = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, bins, True)
    images, classes = present[:, :num_classes].nonzero(as_tuple=True)
    return images, classes


def _mask_costs(point_logits: torch.Tensor, point_targets: torch.Tensor) -> torch.Tensor:
    """BCE and Dice costs of every (query, target) pair of each image.
    point_logits (B, Q, P), point_targets (B, G, P) -> (bce (B, Q, G), dice (B, Q, G))."""
    points = point_logits.shape[-1]
    positive = F.softplus(-point_logits)  # BCE against 1
    negative = F.softplus(point_logits)  # BCE against 0
    bce = (torch.bmm(positive, point_targets.transpose(1, 2))
           + torch.bmm(negative, (1 - point_targets).transpose(1, 2))) / points
    prob = point_logits.sigmoid()
    numerator = 2 * torch.bmm(prob, point_targets.transpose(1, 2))
    denominator = prob.sum(-1)[:, :, None] + point_targets.sum(-1)[:, None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, predictions: MaskPredictions,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """predictions: every stage's (B, Q, K+1) class and (B, Q, h, w) mask logits; labels
        (B, H, W). Returns the three weighted terms, summed over stages."""
        device_type = labels.device.type
        with autocast_off(device_type):
            images, classes = semantic_targets(labels, self.num_classes, self.ignore_index)
            num_targets = torch.tensor(float(images.numel()), device=labels.device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(num_targets)
                num_targets = num_targets / dist.get_world_size()
            num_targets = num_targets.clamp_min(1.0)
            totals = {"mask_class_ce": 0.0, "mask_bce": 0.0, "mask_dice": 0.0}
            for class_logits, mask_logits in zip(predictions.class_logits,
                                                 predictions.mask_logits):
                stage = self._stage_losses(class_logits.float(), mask_logits.float(), labels,
                                           images, classes, num_targets)
                totals = {k: totals[k] + v for k, v in stage.items()}
        return totals

    @torch.no_grad()
    def match(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
              images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hungarian matching of one stage. Returns (matched queries' flat indices b * Q + q,
        matched targets' indices into ``images``/``classes``), ordered by image, then query."""
        batch, queries = class_logits.shape[:2]
        counts = torch.bincount(images, minlength=batch)  # targets per image
        if images.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=labels.device)
            return empty, empty
        width = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts  # first target of each image
        rank = torch.arange(images.numel(), device=labels.device) - starts[images]
        points = torch.rand(batch, self.num_points, 2, device=labels.device)  # per image
        point_logits = point_sample(mask_logits, points)  # (B, Q, P)
        # targets laid out per image, padded to the most targets of any image
        point_targets = mask_logits.new_zeros(batch, width, self.num_points)
        point_targets[images, rank] = sample_label_masks(labels, images, classes, points[images])
        target_classes = classes.new_zeros(batch, width)
        target_classes[images, rank] = classes
        prob = class_logits.softmax(-1)  # (B, Q, K+1)
        class_cost = -prob.gather(2, target_classes[:, None, :].expand(-1, queries, -1))
        bce, dice = _mask_costs(point_logits, point_targets)
        cost = (self.mask_weight * bce + self.class_weight * class_cost
                + self.dice_weight * dice).cpu().numpy()  # (B, Q, G_max)
        query_index, target_index = [], []
        counts_cpu, starts_cpu = counts.tolist(), starts.tolist()
        for b in range(batch):  # the assignment is a per-image combinatorial solve
            if counts_cpu[b] == 0:
                continue
            rows, cols = linear_sum_assignment(cost[b, :, :counts_cpu[b]])
            query_index.append(b * queries + rows)
            target_index.append(starts_cpu[b] + cols)
        return (torch.as_tensor(np.concatenate(query_index), device=labels.device),
                torch.as_tensor(np.concatenate(target_index), device=labels.device))

    def _stage_losses(self, class_logits, mask_logits, labels, images, classes, num_targets):
        batch, queries = class_logits.shape[:2]
        query_index, target_index = self.match(class_logits, mask_logits, labels, images,
                                                classes)
        target = torch.full((batch * queries,), self.num_classes, dtype=torch.long,
                            device=labels.device)
        target[query_index] = classes[target_index]
        class_ce = F.cross_entropy(class_logits.reshape(batch * queries, -1), target,
                                   weight=self.class_weights)
        if query_index.numel() == 0:
            zero = mask_logits.sum() * 0.0
            return {"mask_class_ce": self.class_weight * class_ce, "mask_bce": zero,
                    "mask_dice": zero}
        masks = mask_logits.flatten(0, 1)[query_index][:, None]  # (M, 1, h, w)
        with torch.no_grad():
            points = uncertain_points(masks, self.num_points, self.oversample_ratio,
                                      self.importance_sample_ratio)  # (M, P, 2)
            point_targets = sample_label_masks(labels, images[target_index],
                                               classes[target_index], points)  # (M, P)
        point_logits = point_sample(masks, points)[:, 0]  # (M, P)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none")
        prob = point_logits.sigmoid()
        dice = 1 - (2 * (prob * point_targets).sum(-1) + 1) / (
            prob.sum(-1) + point_targets.sum(-1) + 1)
        return {
            "mask_class_ce": self.class_weight * class_ce,
            "mask_bce": self.mask_weight * bce.mean(-1).sum() / num_targets,
            "mask_dice": self.dice_weight * dice.sum() / num_targets,
        }
