"""Sinkhorn-Knopp online clustering, batched over independent groups.

ProtoSeg assigns the pixels of each class to that class's M prototypes with a balanced
(equipartitioned) transport plan. The classes are independent problems of different sizes; here
they are solved together: every pixel row carries its group (class) index, and the sums over a
group's pixels are segment sums (``index_add``), so there is no loop over classes or pixels.

For one group with N pixels and scores s (N, M) the plan is what the reference computes:

    Q = exp(s / epsilon);  Q /= Q.sum()
    repeat `iterations` times:
        Q /= Q.sum(over pixels) * M    # every prototype receives 1/M of the mass
        Q /= Q.sum(over prototypes) * N   # every pixel gives 1/N of the mass
    plan = Q * N                       # rows sum to one

Here only the pixel and prototype scalings of exp(s / epsilon) are iterated, in fp32; when
s / epsilon spans too much for fp32's exp, the same steps run in the log domain.
"""

from __future__ import annotations

import math

import torch

HARD_ASSIGNMENTS = ("gumbel", "argmax")


def segment_logsumexp(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log(sum(exp(values[i]))) over the rows i of each group: (N, M) -> (num_groups, M).

    Groups without rows get -inf.
    """
    index = groups[:, None].expand_as(values)
    peak = values.new_full((num_groups, values.shape[1]), -math.inf)
    peak = peak.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = values.new_zeros(num_groups, values.shape[1])
    total.index_add_(0, groups, (values - peak[groups]).exp())
    return peak + total.log()


# The linear domain keeps exp(s / epsilon - group max) in fp32: with a spread of s / epsilon up to
# 60 its entries stay above e^-60 ~ 1e-26, far from underflow even after the scalings; past it,
# the log domain takes over.
LINEAR_DOMAIN_MAX_SPREAD = 60.0


def sinkhorn_knopp(
    scores: torch.Tensor,
    groups: torch.Tensor | None = None,
    num_groups: int | None = None,
    iterations: int = 3,
    epsilon: float = 0.05,
    log_domain: bool | None = None,
) -> torch.Tensor:
    """Balanced soft assignment of rows to columns, solved independently per group.

    scores: (N, M) similarities of each row (pixel) to the M columns (prototypes) of its group.
    groups: (N,) int64 group (class) index of each row, in [0, num_groups); None = one group.
    log_domain: None picks the linear domain (fast) when the scores' spread / epsilon is small
    enough for fp32 (cosines and epsilon >= 1/30), else the log domain; both give the same plan.
    Returns the transport plan (N, M), fp32: every row sums to one, and within a group every
    column receives (close to, after few iterations) the same total, N_group / M.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, M), got shape {tuple(scores.shape)}")
    num_rows, num_cols = scores.shape
    if groups is None:
        groups = torch.zeros(num_rows, dtype=torch.long, device=scores.device)
        num_groups = 1
    elif num_groups is None:
        num_groups = int(groups.max()) + 1 if num_rows else 0
    if num_rows == 0:
        return scores.new_zeros(0, num_cols, dtype=torch.float32)
    scores = scores.float()
    rows = torch.bincount(groups, minlength=num_groups).float()[groups]  # N_group of each row
    if log_domain is None:
        spread = float(scores.max() - scores.min()) / epsilon
        log_domain = spread > LINEAR_DOMAIN_MAX_SPREAD
    if log_domain:
        return _sinkhorn_log(scores / epsilon, groups, num_groups, iterations, rows)
    return _sinkhorn_linear(scores / epsilon, groups, num_groups, iterations, rows)


def _sinkhorn_linear(
    logits: torch.Tensor, groups: torch.Tensor, num_groups: int, iterations: int, rows: torch.Tensor
) -> torch.Tensor:
    """Plan = diag(u) Q diag(v_group): only the scalings u (N,) and v (G, M) are iterated.

    Q = exp(logits - max of the group) (a factor per group cancels in the normalisations). With
    A = sum over a group's rows of u * Q, the prototype step is v = 1 / (M * A); the pixel step
    u = 1 / (N_group * sum_m Q * v). The reference's first step, dividing Q by its total, is a
    factor per group too: u starts at one.
    """
    num_rows, num_cols = logits.shape
    peak = logits.new_full((num_groups,), -math.inf)
    peak = peak.scatter_reduce(0, groups, logits.amax(dim=1), reduce="amax", include_self=True)
    kernel = (logits - peak[groups, None]).exp_()  # (N, M), entries in (e^-60, 1]
    u = logits.new_ones(num_rows)
    v_rows = logits.new_ones(num_rows, num_cols)
    for _ in range(iterations):
        mass = logits.new_zeros(num_groups, num_cols).index_add_(0, groups, kernel * u[:, None])
        v_rows = (1.0 / (num_cols * mass))[groups]  # (N, M): v of each row's group
        u = 1.0 / (rows * (kernel * v_rows).sum(dim=1))
    return kernel.mul_(v_rows).mul_((u * rows)[:, None])


def _sinkhorn_log(
    log_q: torch.Tensor, groups: torch.Tensor, num_groups: int, iterations: int, rows: torch.Tensor
) -> torch.Tensor:
    """The reference's steps on log Q: stable for any epsilon, about three times slower."""
    log_n, log_m = rows.log()[:, None], math.log(log_q.shape[1])
    row_total = torch.logsumexp(log_q, dim=1, keepdim=True)
    log_q = log_q - segment_logsumexp(row_total, groups, num_groups)[groups]  # Q /= Q.sum()
    for _ in range(iterations):
        log_q = log_q - segment_logsumexp(log_q, groups, num_groups)[groups] - log_m
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_n
    return (log_q + log_n).exp()


def hard_assign(plan: torch.Tensor, mode: str = "gumbel", tau: float = 0.5) -> torch.Tensor:
    """One column index per row of a transport plan (N, M) -> (N,) int64.

    ``"argmax"``: the plan's most likely column.
    ``"gumbel"``: the index of a hard Gumbel-softmax sample that takes the plan's *entries* as
    logits, as the ProtoSeg reference does (``F.gumbel_softmax(plan, tau, hard=True)``), i.e.
    argmax((plan + Gumbel noise) / tau). The plan's rows sum to one, so these logits lie in
    [0, 1] and the sample is far from the argmax: a row that is one-hot in the plan keeps its
    column with probability e / (e + M - 1) only (about 0.23 for M = 10). ``tau`` does not change
    a hard sample (it scales every logit alike); it only shaped the reference's unused gradient.
    """
    if mode == "argmax":
        return plan.argmax(dim=1)
    if mode == "gumbel":
        gumbel = -torch.empty_like(plan).exponential_().log_()  # as F.gumbel_softmax draws it
        return ((plan + gumbel) / tau).argmax(dim=1)
    raise ValueError(f"hard_assignment must be one of {', '.join(HARD_ASSIGNMENTS)}, got {mode!r}")
