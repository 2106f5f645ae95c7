"""Class centres: the mean feature of the pixels of each class, hard (from a label map) or soft
(from a probability map). One scatter or one matmul per call; no loop over classes or images.

Shapes: B images, C channels, K classes, h x w pixels (hw = h * w).
"""

from __future__ import annotations

import torch

from ssaseg.models.mixed_precision import autocast_off, matmul_dtype


def class_sums(
    values: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sum of ``values`` over the pixels of each class, and the pixel counts.

    values: (B, C, h, w) float; labels: (B, h, w) int64 in [0, K) or ``ignore_index``.
    Returns sums (B, K, C) and counts (B, K), both in fp32. Ignored pixels fall into a
    discarded extra bin.
    """
    batch, channels = values.shape[:2]
    flat_labels = labels.reshape(batch, -1)  # (B, hw)
    # (B, hw); bin K collects the ignored pixels and is discarded
    bins = torch.where(flat_labels == ignore_index, num_classes, flat_labels)
    flat_values = values.float().reshape(batch, channels, -1)  # (B, C, hw)
    sums = flat_values.new_zeros(batch, channels, num_classes + 1).scatter_add(
        2, bins[:, None, :].expand(-1, channels, -1), flat_values
    )  # (B, C, K + 1)
    counts = flat_values.new_zeros(batch, num_classes + 1).scatter_add(
        1, bins, flat_values.new_ones(()).expand(bins.shape)
    )  # (B, K + 1)
    return sums[:, :, :num_classes].transpose(1, 2), counts[:, :num_classes]


def _mean_or_fallback(
    sums: torch.Tensor, counts: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    # clamp keeps the gradient of the unused branch finite for absent classes (0 / 0 otherwise)
    means = sums / counts.clamp_min(1.0).unsqueeze(-1)
    return torch.where(counts.unsqueeze(-1) > 0, means, fallback.to(means.dtype))


def batch_class_means(
    values: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    fallback: torch.Tensor,
) -> torch.Tensor:
    """Mean of ``values`` (B, C, h, w) over all pixels of the batch labelled k -> (K, C).

    Classes with no pixel in the batch take the row of ``fallback`` (K, C); pass a detached
    tensor when the fallback must not receive gradient. Under DDP the batch is the GLOBAL batch:
    the per-class sums and counts are summed over the ranks (a differentiable all-reduce, see
    :func:`ssaseg.engine.distributed.all_reduce_sum`), so every rank gets the same centres as a
    single process would; every rank must then call this equally often.
    """
    from ssaseg.engine.distributed import all_reduce_sum

    sums, counts = class_sums(values, labels, num_classes, ignore_index)  # (B, K, C), (B, K)
    totals = all_reduce_sum(torch.cat([sums.sum(0), counts.sum(0)[:, None]], 1))  # (K, C + 1)
    return _mean_or_fallback(totals[:, :-1], totals[:, -1], fallback)  # (K, C)


def image_class_means(
    values: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    fallback: torch.Tensor,
) -> torch.Tensor:
    """Mean of ``values`` (B, C, h, w) over the pixels of image b labelled k -> (B, K, C).

    Classes absent from image b take the row of ``fallback`` (K, C).
    """
    sums, counts = class_sums(values, labels, num_classes, ignore_index)  # (B, K, C), (B, K)
    return _mean_or_fallback(sums, counts, fallback)  # (B, K, C)


class _WeightedPixelSums(torch.autograd.Function):
    """weights (B, K, hw), values (B, C, hw) -> weights @ values^T, (B, K, C).

    Autograd would return the gradient of ``values`` as the transpose of a (B, hw, C) product,
    a strided tensor that every later accumulation into the (B, C, hw) gradient reads across
    its rows; here both gradients are computed in the inputs' own layout.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        compute = matmul_dtype(weights, values)
        ctx.input_dtypes = (weights.dtype, values.dtype)
        with autocast_off(values.device.type):
            weights_c, values_c = weights.to(compute), values.to(compute)
            ctx.save_for_backward(weights_c, values_c)
            return torch.bmm(weights_c, values_c.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, values = ctx.saved_tensors
        grad = grad.to(values.dtype)  # (B, K, C)
        grad_weights = grad_values = None
        with autocast_off(values.device.type):
            if ctx.needs_input_grad[0]:
                grad_weights = torch.bmm(grad, values).to(ctx.input_dtypes[0])  # (B, K, hw)
            if ctx.needs_input_grad[1]:
                grad_values = torch.bmm(grad.transpose(1, 2), weights)  # (B, C, hw)
                grad_values = grad_values.to(ctx.input_dtypes[1])
        return grad_weights, grad_values


def weighted_pixel_sums(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum_p weights[b, k, p] * values[b, :, p]``: weights (B, K, hw), values (B, C, hw)
    -> (B, K, C), with both gradients in their inputs' layout."""
    return _WeightedPixelSums.apply(weights, values)


def soft_class_means(
    values: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Weighted mean of pixel features per class: (weights @ values^T) / (sum of weights).

    values: (B, C, hw); weights: (B, K, hw), e.g. a softmax over classes. Returns (B, K, C).
    """
    sums = weighted_pixel_sums(weights, values)  # (B, K, C)
    return sums / (weights.sum(-1, keepdim=True) + eps)
