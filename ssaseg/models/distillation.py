"""SSA's online multi-domain distillation losses (response, semantic, spatial), in fp32.

Each function returns the unweighted loss; the caller detaches the teacher's tensors it passes
in (the functions do so too, so a teacher never receives gradient from here).
Shapes: B images, K classes, C channels, h x w pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssaseg.models.mixed_precision import autocast_off


def _l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over all other axes of -sum_dim softmax(teacher) * log_softmax(student)."""
    target = F.softmax(teacher.detach().float(), dim=dim)
    return -(target * F.log_softmax(student.float(), dim=dim)).sum(dim).mean()


def response_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    boundary: torch.Tensor,
    ignore_index: int,
    smoothing: float = 0.5,
) -> torch.Tensor:
    """Boundary- and category-aware response distillation.

    student, teacher: (B, K, h, w) logits; labels: (B, h, w); boundary: (B, h, w) bool.
    Per pixel: soft cross-entropy of the student against
    ``smoothing * softmax(teacher) + (1 - smoothing) * one_hot(label)``, weighted by the
    teacher's entropy. For every class present in ``labels``: the entropy-weighted mean over its
    boundary pixels and over its interior pixels (0 for an empty part), averaged; the result is
    the mean over the present classes (0, attached, when no pixel is labelled).

    Everything except the student's log-softmax is a constant (the teacher is detached, the
    weights come from the teacher's entropy), so the loss is computed as ONE soft cross-entropy
    ``-sum(log_softmax(student) * T)`` with a no-grad target T that already carries the
    one-hot part, the per-pixel weight and the per-class normalisation: the same value and
    gradient as the per-class means, for the cost of a single pass over (B, K, h, w).
    """
    num_classes = student.shape[1]
    is_ignored = labels == ignore_index  # (B, h, w)
    safe_labels = torch.where(is_ignored, 0, labels)[:, None]  # (B, 1, h, w)
    with torch.no_grad():
        q = F.softmax(teacher.detach().float(), dim=1)  # (B, K, h, w)
        entropy = -(q.add(1e-12).log_().mul_(q)).sum(1)  # (B, h, w)
        entropy.masked_fill_(is_ignored, 0.0)
        # bin 2k: class k interior, 2k + 1: class k boundary, 2K: ignored pixels (discarded)
        bins = torch.where(is_ignored, 2 * num_classes, 2 * labels + boundary.long()).flatten()
        weight = entropy.new_zeros(2 * num_classes + 1).scatter_add_(0, bins, entropy.flatten())
        counts = torch.bincount(bins, minlength=2 * num_classes + 1)[:-1].view(num_classes, 2)
        num_present = (counts.sum(1) > 0).sum().clamp_min(1)
        # pixel coefficient: entropy / (its part's entropy sum) / 2 parts / present classes
        coef = entropy / ((weight[bins].view_as(entropy) + 1e-12) * 2 * num_present)
        target = q.mul_(smoothing * coef[:, None])  # (B, K, h, w), reuses q's memory
        target.scatter_add_(1, safe_labels, ((1 - smoothing) * coef)[:, None])
    log_p = F.log_softmax(student.float(), dim=1)  # (B, K, h, w)
    return -(log_p * target).sum()


def relation_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 15.0
) -> torch.Tensor:
    """Semantic-domain distillation through the class-to-class relation matrices.

    student: (B, K, C) prototypes; teacher: (B, K, C) or (K, C). R = row-softmax of
    ``temperature * cos(proto_i, proto_j)``, where (as in the reference) the right-hand factor
    proto_j is detached. Penalises the off-diagonal entries where the student's relation
    exceeds the teacher's: mean over (b, i) of sum_j relu(R_s - R_t)[b, i, j], j != i.
    """
    with autocast_off(student.device.type):  # the matmuls too stay fp32
        student = _l2_normalize(student.float(), dim=-1)  # (B, K, C)
        teacher = _l2_normalize(teacher.detach().float(), dim=-1)  # (B, K, C) or (K, C)
        r_student = F.softmax(temperature * student @ student.detach().transpose(-1, -2), -1)
        r_teacher = F.softmax(temperature * teacher @ teacher.transpose(-1, -2), dim=-1)
    excess = F.relu(r_student - r_teacher)  # (B, K, K)
    excess = excess * (1 - torch.eye(excess.shape[-1], device=excess.device, dtype=excess.dtype))
    return excess.sum(-1).mean()
