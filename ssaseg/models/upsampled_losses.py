"""Cross-entropy and Dice of logits bilinearly upsampled to the labels, computed in row tiles:
the full-resolution logits, their log-softmax and their gradient never exist whole.

The values and gradients are those of

    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = segmentation_cross_entropy(up, labels, ignore_index)      # ssaseg.models.losses
    dice = dice_loss(up, labels, ignore_index, smooth)             # ssaseg.models.dice

(to float rounding; tests/test_upsampled_losses.py compares both ways). Bilinear resizing is
separable and PyTorch interpolates the width first, so the width is resized once for the whole
map, (B, K, h, w) -> (B, K, h, W), and each tile of output rows is a blend of two of those rows.
Per tile, the forward pass keeps only per-pixel log-sum-exp (B, H, W) and per-(image, class)
sums; the backward pass rebuilds the tile and writes its gradient straight into the
(B, K, h, W) gradient. Why: on the CPU, a classifier with three full-resolution losses (SSA's
student, coarse mask and teacher) spent more time in passes over (B, K, H, W) tensors and in
first-touch page faults of their fresh allocations (glibc maps every block over 32 MB anew)
than in its arithmetic; a tile of ``tile_elements`` floats (default 4 MiB) stays in the
allocator's heap and mostly in cache.

The loop over tiles is a loop over blocks of rows (about H * B * K * W / ``tile_elements``
iterations, each a handful of vectorised ops over the whole batch and all classes), not over
pixels, images or classes.
"""

from __future__ import annotations

import torch

TILE_ELEMENTS = 1 << 20  # floats per (B, K, rows, W) tile: 4 MiB in fp32


def _source_rows(in_size: int, out_size: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output row: the two input rows and the weight of the second, as PyTorch's
    bilinear kernel computes them (align_corners=False, no explicit scale): (out,) each."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp_min(0.0)
    first = src.long().clamp_max(in_size - 1)
    second = (first + 1).clamp_max(in_size - 1)
    return first.to(device), second.to(device), (src - first).to(device)


def _resize_width(logits: torch.Tensor, width: int) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, h, W), bilinear, align_corners=False."""
    if logits.shape[-1] == width:
        return logits
    return torch.ops.aten.upsample_bilinear2d(logits, [logits.shape[-2], width], False)


def _tile(wide: torch.Tensor, rows, start: int, stop: int) -> torch.Tensor:
    """Output rows [start, stop) of the upsampled logits: (B, K, stop - start, W), fresh."""
    first, second, weight = rows
    tile = wide.index_select(2, first[start:stop])
    return tile.lerp_(wide.index_select(2, second[start:stop]), weight[start:stop, None])


class _UpsampledCrossEntropyDice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index, with_dice, smooth, tile_elements):
        batch, classes, height = logits.shape[:3]
        out_h, out_w = labels.shape[-2:]
        rows = _source_rows(height, out_h, logits.device)
        wide = _resize_width(logits, out_w)  # (B, K, h, W)
        valid = labels != ignore_index  # (B, H, W)
        safe = torch.where(valid, labels, 0)  # (B, H, W)
        step = max(1, tile_elements // (batch * classes * out_w))
        lse = logits.new_empty(batch, out_h, out_w)  # (B, H, W) log-sum-exp per pixel
        ce_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        prob_sums = hit_sums = None
        if with_dice:
            # bin K collects the ignored pixels (dice counts them as negatives)
            bins = torch.where(valid, labels, classes).flatten(1)  # (B, HW)
            prob_sums = torch.zeros(batch, classes, dtype=torch.float64, device=logits.device)
            hit_sums = torch.zeros(batch, classes + 1, dtype=torch.float64,
                                   device=logits.device)
        for start in range(0, out_h, step):
            stop = min(out_h, start + step)
            up = _tile(wide, rows, start, stop)  # (B, K, R, W)
            target = safe[:, None, start:stop]  # (B, 1, R, W)
            tile_lse = torch.logsumexp(up, 1)  # (B, R, W)
            lse[:, start:stop] = tile_lse
            nll = tile_lse - up.gather(1, target)[:, 0]  # (B, R, W)
            ce_sum += torch.where(valid[:, start:stop], nll, 0.0).sum(dtype=torch.float64)
            if with_dice:
                prob = up.sigmoid_()  # (B, K, R, W), the tile is not needed any more
                prob_sums += prob.sum((2, 3), dtype=torch.float64)
                hits = prob.gather(1, target).flatten(1)  # (B, R * W)
                hit_sums.scatter_add_(1, bins[:, start * out_w : stop * out_w],
                                      hits.to(torch.float64))
        num_valid = valid.sum()
        ce = (ce_sum / num_valid.clamp_min(1)).to(logits.dtype)
        dice = logits.new_zeros(())
        alpha = beta = None
        if with_dice:
            counts = torch.zeros(batch, classes + 1, dtype=torch.float64, device=logits.device)
            counts = counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.float64))
            counts = counts[:, :classes]  # (B, K) pixels of class k in image b
            present = counts > 0  # (B, K)
            pairs = present.sum().clamp_min(1)
            denom = prob_sums + counts + smooth  # (B, K)
            numer = 2 * hit_sums[:, :classes] + smooth
            dice = (torch.where(present, 1 - numer / denom, 0.0).sum() / pairs).to(logits.dtype)
            # d dice / d prob[b, k, pixel] = alpha[b, k] - beta[b, k] * (label == k)
            alpha = torch.where(present, numer / denom.square(), 0.0) / pairs
            beta = torch.where(present, 2 / denom, 0.0) / pairs
            alpha, beta = alpha.to(logits.dtype), beta.to(logits.dtype)
        ctx.setup = (ignore_index, with_dice, step, tuple(logits.shape), out_w)
        ctx.save_for_backward(logits, safe, valid, lse, num_valid, alpha, beta)
        return ce, dice

    @staticmethod
    def backward(ctx, grad_ce, grad_dice):
        ignore_index, with_dice, step, shape, out_w = ctx.setup
        logits, safe, valid, lse, num_valid, alpha, beta = ctx.saved_tensors
        batch, classes, height, width = shape
        out_h = safe.shape[1]
        rows = _source_rows(height, out_h, logits.device)
        first, second, weight = rows
        wide = _resize_width(logits, out_w)  # (B, K, h, W)
        grad_wide = logits.new_zeros(batch, classes, height, out_w)  # accumulated into
        ce_scale = grad_ce / num_valid.clamp_min(1)
        if with_dice:
            alpha = (alpha * grad_dice)[:, :, None, None]  # (B, K, 1, 1)
            beta = beta * grad_dice  # (B, K)
        for start in range(0, out_h, step):
            stop = min(out_h, start + step)
            up = _tile(wide, rows, start, stop)  # (B, K, R, W)
            target = safe[:, None, start:stop]  # (B, 1, R, W)
            tile_valid = valid[:, None, start:stop]  # (B, 1, R, W)
            # cross-entropy: (softmax - one_hot) / N on labelled pixels, 0 on ignored ones
            grad = (up - lse[:, None, start:stop]).exp_()  # (B, K, R, W)
            grad.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=grad.dtype))
            grad.mul_(torch.where(tile_valid, ce_scale, 0.0))
            if with_dice:
                prob = up.sigmoid_()
                slope = prob.mul_(1 - prob)  # sigmoid' = p (1 - p), (B, K, R, W)
                grad.addcmul_(slope, alpha)
                on_label = slope.gather(1, target) * beta.gather(
                    1, target.flatten(1)).view_as(target)  # (B, 1, R, W)
                grad.scatter_add_(1, target, torch.where(tile_valid, -on_label, 0.0))
            # transpose of the row blend into the (B, K, h, W) gradient
            share = weight[start:stop, None]  # (R, 1)
            grad_wide.index_add_(2, second[start:stop], grad * share)
            grad_wide.index_add_(2, first[start:stop], grad.mul_(1 - share))
        if out_w == width:
            return grad_wide, None, None, None, None, None
        grad_logits = torch.ops.aten.upsample_bilinear2d_backward(
            grad_wide, [height, out_w], list(shape), False)
        return grad_logits, None, None, None, None, None


def upsampled_cross_entropy_and_dice(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1.0,
    tile_elements: int = TILE_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, Dice) of (B, K, h, w) logits upsampled to the (B, H, W) labels, fp32.

    Cross-entropy: mean over labelled pixels (0 when none is). Dice: as
    :func:`ssaseg.models.dice.dice_loss` (sigmoid, per present (image, class) pair, ignored
    pixels count as negatives, 0 when no pair is present).
    """
    return _UpsampledCrossEntropyDice.apply(
        logits.float(), labels, ignore_index, True, float(smooth), tile_elements)


def upsampled_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
    tile_elements: int = TILE_ELEMENTS,
) -> torch.Tensor:
    """Cross-entropy of (B, K, h, w) logits upsampled to the (B, H, W) labels, fp32: the value
    and gradient of :func:`ssaseg.models.losses.segmentation_cross_entropy` (no class weights).
    """
    return _UpsampledCrossEntropyDice.apply(
        logits.float(), labels, ignore_index, False, 1.0, tile_elements)[0]
