"""SSA: the Semantic and Spatial Adaptive pixel classifier (SSA-Seg, NeurIPS 2024,
arXiv 2405.06525), as one module that any decode head feeds.

Inference (the student): a coarse mask from the linear classifier guides two prototype
adaptations: SEPA moves each class's semantic prototype towards the soft class centre of this
image's features, SPPA builds a spatial prototype from a learnable class position basis and the
class's soft centre in a depthwise-conv position feature. Pixels are classified by the
temperature-scaled cosine between (feature + position feature) and the adapted prototypes.

Training adds a teacher of the same shape, fed ground-truth class centres, and eight loss terms,
each reported under its own name and already weighted (the total loss is their sum):

    ce                student logits, upsampled to the labels
    coarse_ce         the coarse mask (linear classifier), upsampled
    teacher_ce        teacher logits, upsampled
    response_distill  boundary- and category-aware distillation of the teacher's response
    dice              sigmoid Dice per (image, present class) on the upsampled student logits
    teacher_dice      the same on the teacher logits
    semantic_distill  class-relation matrix distillation, student ``sem`` vs teacher ``gt_sem``
    spatial_distill   soft cross-entropy, student ``pos`` vs teacher ``gt_pos`` (channel axis)

Defaults follow the reference CODE (github.com/xwmaxwma/SSAClassifier): semantic distillation
weight 10, spatial distillation weight 0.4, boundary width 3 (and a 6-pixel frame without
edges), temperature 15, smoothing 0.5, every other weight 1. The paper's appendix says
instead lambda = 1 for both distillation weights and a boundary width of 4: pass
``preset="paper"`` (one key in the params file) to take those values.

Differences from the reference, all deliberate: boundaries come from tensor ops instead of
Canny on the CPU (see :mod:`ssaseg.models.boundary`); logits are upsampled for the losses with
the project's single convention (bilinear, ``align_corners=False``, as the linear classifier
and inference do) where the reference uses ``align_corners=True`` for these terms; class means
are computed with scatters instead of Python loops; each of the three full-resolution maps
(student, coarse mask, teacher) is upsampled once and gives its cross-entropy and Dice from that
one tensor (:mod:`ssaseg.models.upsampled_losses`: values and gradients equal to those of
``segmentation_cross_entropy`` and ``dice_loss`` on the upsampled map, frozen in
tests/test_ssa_frozen.py). Reference details kept: W and E enter the
prototype MLPs undetached (only the absent-class fallbacks are detached copies), the teacher
trains the head through F and P, Dice counts ignored pixels as negatives, and the relation
matrices of semantic distillation detach their right-hand factor.

Example::

    clf = SSAClassifier(in_channels=256, num_classes=150)                  # reference code
    clf = SSAClassifier(in_channels=256, num_classes=150, preset="paper")  # paper appendix
    out = clf(feature, labels)        # training: out.losses has the eight terms
    total = sum(out.losses.values())
"""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.errors import ParameterError
from ssaseg.models.boundary import label_boundaries
from ssaseg.models.classifiers.base import ClassifierOutput
from ssaseg.models.classifiers.class_centers import (
    batch_class_means,
    image_class_means,
    soft_class_means,
    weighted_pixel_sums,
)
from ssaseg.models.classifiers.cosine import cosine_logits
from ssaseg.models.classifiers.linear import LinearClassifier
from ssaseg.models.distillation import (
    relation_distillation_loss,
    response_distillation_loss,
    soft_cross_entropy,
)
from ssaseg.models.losses import resize_labels
from ssaseg.models.mixed_precision import autocast_off
from ssaseg.models.upsampled_losses import (
    upsampled_cross_entropy,
    upsampled_cross_entropy_and_dice,
)

# Arguments whose value differs between the reference code (the defaults) and the paper.
PRESETS: dict[str, dict[str, float | int]] = {
    "code": {},
    "paper": {"semantic_distill_weight": 1.0, "spatial_distill_weight": 1.0, "boundary_width": 4},
}
POSITION_BASES = ("adaptive", "learned", "random")
TEACHER_INPUTS = ("labels", "coarse_mask")


def _prototype_mlp(channels: int) -> nn.Sequential:
    """Linear(2C -> C/2, no bias) -> ReLU -> Linear(C/2 -> C): (..., 2C) -> (..., C)."""
    return nn.Sequential(
        nn.Linear(2 * channels, channels // 2, bias=False),
        nn.ReLU(inplace=True),
        nn.Linear(channels // 2, channels),
    )


class SSAClassifier(nn.Module):
    """Semantic and Spatial Adaptive classifier; see the module docstring.

    Args:
        in_channels: C, channels of the head's feature map.
        num_classes: K.
        ignore_index: label value of unlabelled pixels.
        dropout: dropout (2-D) before the coarse linear classifier only.
        preset: "code" (the defaults below) or "paper": every argument that is still at its
            code default and that the paper states differently takes the paper's value
            (``semantic_distill_weight`` = ``spatial_distill_weight`` = 1, ``boundary_width`` 4).
        temperature: scale t of the cosine logits (student and teacher).
        relation_temperature: scale inside the class-relation softmax of semantic distillation.
        *_weight: the weight of each loss term (see the module docstring for the names).
        distill_smoothing: share of the teacher's softmax in the response-distillation target
            (the rest is the one-hot label).
        dice_smooth: additive smoothing of the Dice ratio.
        boundary_width: side of the dilation window around label edges (response distillation).
        boundary_margin: label edges this close to the image border are not boundaries.
        use_sepa: False = ablation without SEPA: the semantic prototypes are the linear
            classifier's weights, unadapted (no semantic MLPs, no semantic distillation).
        use_sppa: False = ablation without SPPA: no position feature, no position basis, no
            position MLPs (no position parameters at all), no spatial distillation.
        position_basis: "adaptive" (SPPA as published: learnable basis E adapted by the
            coarse mask), "learned" (E alone, learnable, no adaptation) or "random" (E alone,
            a fixed random buffer). The last two have no position MLPs and no spatial
            distillation (nothing to distil).
        response_distill, semantic_distill, spatial_distill: False drops that distillation term
            (it is neither computed nor reported).
        teacher_input: "labels" (the teacher sees ground-truth class centres) or "coarse_mask"
            (self-distillation: centres from the argmax of the coarse mask, no labels).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ignore_index: int = 255,
        dropout: float = 0.1,
        *,
        preset: str = "code",
        temperature: float = 15.0,
        relation_temperature: float = 15.0,
        ce_weight: float = 1.0,
        coarse_ce_weight: float = 1.0,
        teacher_ce_weight: float = 1.0,
        response_distill_weight: float = 1.0,
        dice_weight: float = 1.0,
        teacher_dice_weight: float = 1.0,
        semantic_distill_weight: float = 10.0,
        spatial_distill_weight: float = 0.4,
        distill_smoothing: float = 0.5,
        dice_smooth: float = 1.0,
        boundary_width: int = 3,
        boundary_margin: int = 6,
        use_sepa: bool = True,
        use_sppa: bool = True,
        position_basis: str = "adaptive",
        response_distill: bool = True,
        semantic_distill: bool = True,
        spatial_distill: bool = True,
        teacher_input: str = "labels",
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ParameterError(f"preset: unknown value {preset!r}; known: {', '.join(PRESETS)}")
        code_defaults = {"semantic_distill_weight": 10.0, "spatial_distill_weight": 0.4,
                         "boundary_width": 3}
        given = {"semantic_distill_weight": semantic_distill_weight,
                 "spatial_distill_weight": spatial_distill_weight,
                 "boundary_width": boundary_width}
        for key, value in PRESETS[preset].items():
            if given[key] == code_defaults[key]:
                given[key] = value
        semantic_distill_weight = float(given["semantic_distill_weight"])
        spatial_distill_weight = float(given["spatial_distill_weight"])
        boundary_width = int(given["boundary_width"])

        if position_basis not in POSITION_BASES:
            raise ParameterError(f"position_basis: unknown value {position_basis!r}; "
                             f"known: {', '.join(POSITION_BASES)}")
        if teacher_input not in TEACHER_INPUTS:
            raise ParameterError(f"teacher_input: unknown value {teacher_input!r}; "
                             f"known: {', '.join(TEACHER_INPUTS)}")
        if not (use_sepa or use_sppa):
            raise ParameterError("use_sepa and use_sppa are both false: that is the `linear` "
                             "classifier; keep at least one adaptation")
        if boundary_width < 1:
            raise ParameterError(f"boundary_width must be >= 1, got {boundary_width}")
        if boundary_margin < 0:
            raise ParameterError(f"boundary_margin must be >= 0, got {boundary_margin}")
        if not 0.0 <= distill_smoothing <= 1.0:
            raise ParameterError(f"distill_smoothing must be in [0, 1], got {distill_smoothing}")
        if in_channels < 2:
            raise ValueError(f"in_channels must be >= 2 (the MLPs halve it), got {in_channels}")

        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.preset = preset
        self.temperature = temperature
        self.relation_temperature = relation_temperature
        self.weights = {
            "ce": ce_weight,
            "coarse_ce": coarse_ce_weight,
            "teacher_ce": teacher_ce_weight,
            "response_distill": response_distill_weight,
            "dice": dice_weight,
            "teacher_dice": teacher_dice_weight,
            "semantic_distill": semantic_distill_weight,
            "spatial_distill": spatial_distill_weight,
        }
        self.distill_smoothing = distill_smoothing
        self.dice_smooth = dice_smooth
        self.boundary_width = boundary_width
        self.boundary_margin = boundary_margin
        self.use_sepa = use_sepa
        self.use_sppa = use_sppa
        self.position_basis_kind = position_basis if use_sppa else None
        self.adapt_position = use_sppa and position_basis == "adaptive"
        self.response_distill = response_distill
        self.semantic_distill = semantic_distill and use_sepa
        self.spatial_distill = spatial_distill and self.adapt_position
        self.teacher_input = teacher_input

        channels = in_channels
        # the vanilla classifier: its output is the coarse mask, its weight W the fixed prototypes
        self.coarse = LinearClassifier(in_channels, num_classes, ignore_index, dropout)
        if use_sepa:
            self.sem_mlp = _prototype_mlp(channels)
            self.teacher_sem_mlp = _prototype_mlp(channels)
        if use_sppa:
            # CPVT-style conditional position encoding
            self.position_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
            basis = torch.randn(num_classes, channels)  # like nn.Embedding's N(0, 1)
            if position_basis == "random":
                self.register_buffer("position_basis", basis)
            else:
                self.position_basis = nn.Parameter(basis)
            if self.adapt_position:
                self.pos_mlp = _prototype_mlp(channels)
                self.teacher_pos_mlp = _prototype_mlp(channels)
        self.center_proj = nn.Linear(channels, channels, bias=False)
        self.teacher_center_proj = nn.Linear(channels, channels, bias=False)

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters the student path uses: all but the training-only teacher's (what the
        published "+SSA" parameter counts include)."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher_")]

    @property
    def prototypes(self) -> torch.Tensor:
        """W, the linear classifier's weight as (K, C) prototypes (bias ignored)."""
        return self.coarse.conv.weight.flatten(1)

    def forward(
        self, feature: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ClassifierOutput:
        """feature (B, C, h, w) before dropout; labels (B, H, W) in training."""
        batch = feature.shape[0]
        with_teacher = self.training and labels is not None
        # no autograd and no teacher: intermediate buffers may be overwritten in place
        in_place = not (torch.is_grad_enabled() or with_teacher)
        coarse, position, pixels, sem, pos, centers = self.student(feature, in_place)
        weight = self.prototypes  # (K, C)

        if not with_teacher:
            return ClassifierOutput(cosine_logits(pixels, [centers], self.temperature)[0])

        # teacher: the same construction from ground-truth (or coarse-mask) class centres
        small_labels = resize_labels(labels, tuple(feature.shape[-2:]))  # (B, h, w)
        if self.teacher_input == "coarse_mask":
            guide = coarse.detach().argmax(1)  # (B, h, w), every pixel assigned
        else:
            guide = small_labels
        if self.use_sepa:
            gt_sem_centers = batch_class_means(
                feature, guide, self.num_classes, self.ignore_index, fallback=weight.detach()
            )  # (K, C)
            gt_sem = self.teacher_sem_mlp(torch.cat([gt_sem_centers, weight], -1))  # (K, C)
        else:
            gt_sem = weight
        gt_pos = None
        if self.adapt_position:
            basis = self.position_basis  # (K, C)
            gt_pos_centers = image_class_means(
                position, guide, self.num_classes, self.ignore_index, fallback=basis.detach()
            )  # (B, K, C)
            gt_pos = self.teacher_pos_mlp(
                torch.cat([gt_pos_centers, basis.expand(batch, -1, -1)], -1)
            )  # (B, K, C)
        elif self.use_sppa:
            gt_pos = self.position_basis  # (K, C)
        gt_centers = self.teacher_center_proj(gt_sem if gt_pos is None else gt_sem + gt_pos)
        # student and teacher against the same pixels in one call: (B, K, h, w) each
        logits, teacher_logits = cosine_logits(pixels, [centers, gt_centers], self.temperature)

        losses = self._losses(
            coarse, logits, teacher_logits, labels, small_labels, sem, gt_sem, pos, gt_pos
        )
        return ClassifierOutput(logits, losses)

    def student(self, feature: torch.Tensor, in_place: bool = False) -> tuple:
        """The student path on feature (B, C, h, w): (coarse mask (B, K, h, w), position
        feature P (B, C, h, w) or None, the classified pixels F + P (B, C, h, w), semantic
        prototypes ``sem`` (B, K, C) (or W (K, C) without SEPA), spatial prototypes ``pos``
        (B, K, C) (the basis (K, C) when not adaptive, None without SPPA), and the centres the
        pixels are compared with (B, K, C) or (K, C)). ``in_place``: P's buffer becomes F + P
        (no autograd, P not needed afterwards)."""
        batch = feature.shape[0]
        coarse = self.coarse(feature).logits  # (B, K, h, w), dropout inside in training
        weight = self.prototypes  # (K, C)
        flat_coarse = coarse.flatten(2)  # (B, K, hw)
        if self.use_sppa:
            position = self.position_conv(feature)  # (B, C, h, w)
            pos = self._student_position(flat_coarse, position)  # (B, K, C) or (K, C)
            pixels = position.add_(feature) if in_place else feature + position  # (B, C, h, w)
        else:
            position, pos = None, None
            pixels = feature
        if self.use_sepa:
            sem_centers = soft_class_means(feature.flatten(2), flat_coarse.softmax(1))  # (B, K, C)
            sem = self.sem_mlp(torch.cat([sem_centers, weight.expand(batch, -1, -1)], -1))
        else:
            sem = weight  # (K, C), the fixed prototypes
        centers = self.center_proj(sem if pos is None else sem + pos)  # (B, K, C) or (K, C)
        return coarse, position, pixels, sem, pos, centers

    def _student_position(self, flat_coarse: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """SPPA: (B, K, C) spatial prototypes (or the (K, C) basis alone when not adaptive)."""
        basis = self.position_basis  # (K, C)
        if not self.adapt_position:
            return basis
        batch = position.shape[0]
        spatial_attention = flat_coarse.softmax(-1)  # (B, K, hw), over positions
        pos_centers = weighted_pixel_sums(spatial_attention, position.flatten(2))  # (B, K, C)
        return self.pos_mlp(torch.cat([basis.expand(batch, -1, -1), pos_centers], -1))

    def _losses(
        self,
        coarse: torch.Tensor,
        logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor,
        small_labels: torch.Tensor,
        sem: torch.Tensor,
        gt_sem: torch.Tensor,
        pos: torch.Tensor | None,
        gt_pos: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """All terms in fp32 (autocast off), each multiplied by its weight."""
        with autocast_off(logits.device.type):
            logits, teacher_logits = logits.float(), teacher_logits.float()  # (B, K, h, w)
            ignore = self.ignore_index
            # each full-resolution map (student, coarse, teacher) is upsampled tile by tile
            # inside its loss, cross-entropy and Dice from the same tiles
            ce, dice = upsampled_cross_entropy_and_dice(logits, labels, ignore, self.dice_smooth)
            teacher_ce, teacher_dice = upsampled_cross_entropy_and_dice(
                teacher_logits, labels, ignore, self.dice_smooth)
            terms = {
                "ce": ce,
                "coarse_ce": upsampled_cross_entropy(coarse.float(), labels, ignore),
                "teacher_ce": teacher_ce,
            }
            if self.response_distill:
                boundary = label_boundaries(small_labels, self.boundary_width, self.boundary_margin)
                terms["response_distill"] = response_distillation_loss(
                    logits, teacher_logits.detach(), small_labels, boundary, ignore,
                    self.distill_smoothing,
                )
            terms["dice"] = dice
            terms["teacher_dice"] = teacher_dice
            if self.semantic_distill:
                terms["semantic_distill"] = relation_distillation_loss(
                    sem, gt_sem.detach(), self.relation_temperature
                )
            if self.spatial_distill:
                assert pos is not None and gt_pos is not None
                terms["spatial_distill"] = soft_cross_entropy(pos, gt_pos.detach(), dim=-1)
            return {name: self.weights[name] * value for name, value in terms.items()}
