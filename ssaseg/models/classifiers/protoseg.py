"""ProtoSeg's nonparametric classifier: nearest of M sub-class prototypes per class.

ProtoSeg, "Rethinking Semantic Segmentation: A Prototype View", CVPR 2022 (arXiv 2203.15102),
reference code github.com/tfzhou/ProtoSeg. Written from DESIGN.md ("The ProtoSeg classifier").

    embedding  e = l2(LayerNorm(l2(proj(dropout(F)))))       proj = 1x1 conv, ReLU, 1x1 conv
    similarity s[k, m] = cos(e, prototype[k, m])             prototypes (K, M, C), unit norm
    logits     LayerNorm_K(max_m s[k, m])

The dropout (Dropout2d, 0.1) is the one at the end of the reference's head; DESIGN.md's
embedding starts at the projection, so set ``dropout=0`` for exactly that.

The prototypes are a buffer: saved in and restored from ``state_dict``, never trained by
gradient. In training (labels resized to the feature map by nearest) each class's pixels are
clustered onto its M prototypes with Sinkhorn-Knopp (all classes at once, see
:mod:`ssaseg.models.classifiers.sinkhorn`); the plan's argmax is each pixel's prototype, the
target of the pixel-prototype contrast (PPC) and distance (PPD) losses. The correctly classified
pixels then pull the prototypes they are assigned to (a hard Gumbel sample of the plan by
default, as in the reference; or its argmax) with a momentum update; under DDP the prototypes
are averaged across ranks afterwards, so every rank holds the same ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssaseg.errors import ParameterError
from ssaseg.models.classifiers.base import ClassifierOutput
from ssaseg.models.classifiers.sinkhorn import HARD_ASSIGNMENTS, hard_assign, sinkhorn_knopp
from ssaseg.models.losses import class_weight_buffer, resize_labels, segmentation_cross_entropy

IGNORE_TARGET = -100  # prototype targets of unlabelled pixels (any index >= 0 is a prototype)


def prototype_contrast_loss(similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PPC: cross-entropy over the raw cosine similarities (N, K*M) to every prototype, no
    temperature, against the (N,) index of each pixel's own prototype (IGNORE_TARGET: skipped)."""
    if not bool((target != IGNORE_TARGET).any()):
        return similarity.sum() * 0.0
    return F.cross_entropy(similarity.float(), target, ignore_index=IGNORE_TARGET)


def prototype_density_loss(similarity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PPD: mean of (1 - cosine to the pixel's own prototype)^2 over the labelled pixels."""
    labelled = target != IGNORE_TARGET
    if not bool(labelled.any()):
        return similarity.sum() * 0.0
    own = similarity.gather(1, target.clamp(min=0)[:, None])[:, 0][labelled]
    return (1.0 - own.float()).pow(2).mean()


class ProtoSegClassifier(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ignore_index: int = 255,
        num_prototypes: int = 10,
        sinkhorn_iters: int = 3,
        sinkhorn_epsilon: float = 0.05,
        momentum: float = 0.999,
        ppc_weight: float = 0.01,
        ppd_weight: float = 0.001,
        gumbel_tau: float = 0.5,
        hard_assignment: str = "gumbel",
        dropout: float = 0.1,
        loss_weight: float = 1.0,
        prototype_init_std: float = 0.02,
        class_weight: list[float] | None = None,
    ) -> None:
        """``class_weight``: per-class weights of the segmentation cross-entropy only (PPC and
        PPD stay unweighted), as ProtoSeg's PixelPrototypeCELoss applies its ``ce_weight``."""
        super().__init__()
        for key, value, ok, rule in (
            ("num_prototypes", num_prototypes, num_prototypes >= 1, "at least 1"),
            ("sinkhorn_iters", sinkhorn_iters, sinkhorn_iters >= 1, "at least 1"),
            ("sinkhorn_epsilon", sinkhorn_epsilon, sinkhorn_epsilon > 0, "positive"),
            ("momentum", momentum, 0.0 <= momentum <= 1.0, "in [0, 1]"),
            ("ppc_weight", ppc_weight, ppc_weight >= 0, "non-negative"),
            ("ppd_weight", ppd_weight, ppd_weight >= 0, "non-negative"),
            ("gumbel_tau", gumbel_tau, gumbel_tau > 0, "positive"),
            ("hard_assignment", hard_assignment, hard_assignment in HARD_ASSIGNMENTS,
             "one of " + ", ".join(HARD_ASSIGNMENTS)),
            ("dropout", dropout, 0.0 <= dropout < 1.0, "in [0, 1)"),
            ("prototype_init_std", prototype_init_std, prototype_init_std > 0, "positive"),
        ):
            if not ok:
                raise ParameterError(f"protoseg classifier: {key} must be {rule}, got {value!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_prototypes = num_prototypes
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.momentum = momentum
        self.ppc_weight = ppc_weight
        self.ppd_weight = ppd_weight
        self.gumbel_tau = gumbel_tau
        self.hard_assignment = hard_assignment
        self.loss_weight = loss_weight

        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, in_channels, kernel_size=1),
        )
        self.feature_norm = nn.LayerNorm(in_channels)
        self.class_norm = nn.LayerNorm(num_classes)
        prototypes = torch.empty(num_classes, num_prototypes, in_channels)
        nn.init.trunc_normal_(prototypes, std=prototype_init_std)
        self.register_buffer("prototypes", F.normalize(prototypes, dim=-1))
        class_weight_buffer(self, "protoseg", class_weight, num_classes)

    def embed(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) head feature -> (B*h*w, C) unit-norm embeddings, pixels in (b, y, x)."""
        x = F.normalize(self.projection(self.dropout(feature)), dim=1)
        x = x.permute(0, 2, 3, 1).flatten(0, 2)
        return F.normalize(self.feature_norm(x), dim=-1)

    def forward(
        self, feature: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ClassifierOutput:
        batch, _, height, width = feature.shape
        embedding = self.embed(feature)  # (N, C)
        # a fresh tensor: the in-place update below must not touch what autograd saved
        prototypes = F.normalize(self.prototypes, dim=-1).flatten(0, 1)  # (K*M, C)
        similarity = embedding @ prototypes.to(embedding.dtype).t()  # (N, K*M), k-major
        # max (its backward scatters into the argmax) rather than amax (a masked copy of all K*M)
        scores = similarity.unflatten(1, (self.num_classes, self.num_prototypes)).max(dim=2)[0]
        seg = self.class_norm(scores)  # (N, K)
        # contiguous NCHW: upsampled channels-last logits would be copied again by the loss
        logits = seg.unflatten(0, (batch, height, width)).permute(0, 3, 1, 2).contiguous()
        if labels is None or not self.training:
            return ClassifierOutput(logits)

        losses = {
            "ce": self.loss_weight * segmentation_cross_entropy(logits, labels, self.ignore_index,
                                                                self.class_weight)
        }
        target = resize_labels(labels, (height, width)).flatten()  # (N,)
        with torch.no_grad():
            valid = (target != self.ignore_index).nonzero()[:, 0]
            classes = target[valid]
            own = similarity.detach().unflatten(1, (self.num_classes, self.num_prototypes))
            own = own[valid, classes]  # (V, M): each pixel against its own class's prototypes
            prototype, update_index = self.cluster(own, classes)
            correct = seg.detach()[valid].argmax(dim=1) == classes
            self.update_prototypes(embedding.detach()[valid], classes, update_index, correct)
            # targets reach K*M - 1, past ignore_index, so unlabelled pixels get IGNORE_TARGET
            ppc_target = torch.full_like(target, IGNORE_TARGET)
            ppc_target[valid] = classes * self.num_prototypes + prototype
        losses["ppc"] = self.ppc_weight * prototype_contrast_loss(similarity, ppc_target)
        losses["ppd"] = self.ppd_weight * prototype_density_loss(similarity, ppc_target)
        return ClassifierOutput(logits, losses)

    @torch.no_grad()
    def cluster(
        self, similarity: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Assign labelled pixels to their class's prototypes, all classes at once.

        similarity: (N, M) cosine of each pixel to the M prototypes of its class; target: (N,)
        its class. Returns (N,) prototype indices in [0, M): the argmax of the Sinkhorn plan
        (the PPC/PPD target is class * M + this), and the one the pixel updates, a hard sample of
        the plan per ``hard_assignment``.
        """
        plan = sinkhorn_knopp(
            similarity, target, self.num_classes, self.sinkhorn_iters, self.sinkhorn_epsilon
        )
        return plan.argmax(dim=1), hard_assign(plan, self.hard_assignment, self.gumbel_tau)

    @torch.no_grad()
    def update_prototypes(
        self,
        embedding: torch.Tensor,
        target: torch.Tensor,
        assignment: torch.Tensor,
        correct: torch.Tensor,
    ) -> None:
        """Momentum update from the correctly classified pixels, then DDP averaging.

        embedding (N, C) unit norm; target (N,) class; assignment (N,) prototype in [0, M);
        correct (N,) bool. Each prototype with at least one correct pixel assigned moves to
        l2(momentum * old + (1 - momentum) * l2(sum of those pixels' embeddings)); the others
        keep their exact values (on one rank).
        """
        num_slots = self.num_classes * self.num_prototypes
        slot = (target * self.num_prototypes + assignment)[correct]
        pulled = embedding.new_zeros(num_slots, embedding.shape[1], dtype=torch.float32)
        pulled.index_add_(0, slot, embedding[correct].float())
        updated = torch.bincount(slot, minlength=num_slots) > 0
        protos = self.prototypes.flatten(0, 1).clone()  # (K*M, C)
        moved = self.momentum * protos[updated] + (1.0 - self.momentum) * F.normalize(
            pulled[updated], dim=-1
        ).to(protos.dtype)
        protos[updated] = F.normalize(moved, dim=-1)

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # one collective: the prototypes and a flag "updated on this rank", summed
            packed = torch.cat([protos, updated[:, None].to(protos.dtype)], dim=1)
            dist.all_reduce(packed)
            packed /= dist.get_world_size()
            mean, anywhere = packed[:, :-1], packed[:, -1] > 0
            protos = torch.where(anywhere[:, None], F.normalize(mean, dim=-1), mean)
        self.prototypes.copy_(protos.view_as(self.prototypes))
