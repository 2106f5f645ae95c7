"""Cross-entropy and Dice of logits bilinearly upsampled to the labels, from ONE upsampled map
per logits map, with as few passes over it as the two losses allow.

The values and gradients are those of

    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = segmentation_cross_entropy(up, labels, ignore_index)      # ssaseg.models.losses
    dice = dice_loss(up, labels, ignore_index, smooth)             # ssaseg.models.dice

(to float rounding; tests/test_upsampled_losses.py compares both ways). What autograd would
record for those two calls on a (B, K, H, W) map: the upsampled map, its log-softmax (saved),
a zero-filled gradient for the NLL, another zero-filled one for Dice's row gather, their sum,
then the log-softmax backward: six full-resolution tensors, each a fresh allocation (glibc maps
every block over 32 MB anew, so each costs its first-touch page faults too). Here two:

    forward   up = upsample(logits)                    the one full-resolution allocation
              Dice rows of the present (image, class) pairs gathered from up (N x HW, N << B K),
              and the sigmoid at each pixel's own label (B x HW) for the intersections
              up <- log_softmax(up) in place; the NLL gathered from it; up saved
    backward  grad = exp(up) (the softmax; the second allocation), -1 at each label, x 1/N
              (0 where ignored)
              + Dice's gradient on the N present rows (index_add)
              -> upsample backward to (B, K, h, w)

(The softmax could overwrite the saved map in place and save one more allocation, but then a
second backward through a retained graph would read a softmax as a log-softmax.)
"""

from __future__ import annotations

import torch

from ssaseg.models.losses import resize_logits


class _UpsampledCrossEntropyDice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index, with_dice, smooth):
        batch, classes, height, width = logits.shape
        out_hw = tuple(labels.shape[-2:])
        # channels last: the class axis innermost, for the upsampling (and its backward) and
        # for the log-softmax over classes
        small = logits.contiguous(memory_format=torch.channels_last)
        up = resize_logits(small, out_hw)  # (B, K, H, W), channels last
        if up is small:  # no resize: never overwrite the caller's tensor
            up = small.clone(memory_format=torch.channels_last)
        pixels = up.permute(0, 2, 3, 1).reshape(batch, -1, classes)  # (B, HW, K), a view
        flat_labels = labels.reshape(batch, -1)  # (B, HW)
        valid = flat_labels != ignore_index  # (B, HW)
        target = torch.where(valid, flat_labels, 0)[..., None]  # (B, HW, 1)
        image = cls = prob = alpha = beta = label_prob = None
        dice = logits.new_zeros(())
        if with_dice:
            # bin K collects the ignored pixels (Dice counts them as negatives)
            bins = torch.where(valid, flat_labels, classes)  # (B, HW)
            counts = torch.zeros(batch, classes + 1, device=logits.device).scatter_add_(
                1, bins, torch.ones(bins.shape, device=logits.device))[:, :classes]  # (B, K)
            image, cls = (counts > 0).nonzero(as_tuple=True)  # the N present pairs
            if image.numel():
                prob = pixels.permute(0, 2, 1)[image, cls].sigmoid_()  # (N, HW)
                # sigmoid at each pixel's own label: the intersections, without an (N, HW)
                # target mask; (B, HW), 0 on ignored pixels
                label_prob = pixels.gather(-1, target)[..., 0].sigmoid_()
                label_prob = torch.where(valid, label_prob, 0.0)
                hits = torch.zeros(batch, classes + 1, device=logits.device).scatter_add_(
                    1, bins, label_prob)[:, :classes]  # (B, K)
                denom = prob.sum(-1) + counts[image, cls] + smooth  # (N,)
                numer = 2 * hits[image, cls] + smooth  # (N,)
                pairs = image.numel()
                dice = (1 - numer / denom).sum() / pairs
                # d dice / d prob = alpha - beta * (label == k), per pair; beta as (B, K)
                alpha = numer / denom.square() / pairs  # (N,)
                beta = torch.zeros(batch, classes, device=logits.device)
                beta[image, cls] = 2 / denom / pairs
        log_p = torch.ops.aten._log_softmax.out(pixels, -1, False, out=pixels)  # in place
        picked = log_p.gather(-1, target)[..., 0]  # (B, HW)
        num_valid = valid.sum()
        ce = -torch.where(valid, picked, 0.0).sum() / num_valid.clamp_min(1)
        ctx.setup = (with_dice, (height, width), out_hw)
        ctx.save_for_backward(log_p, target, valid, num_valid, image, cls, prob, alpha, beta,
                              label_prob)
        return ce, dice

    @staticmethod
    def backward(ctx, grad_ce, grad_dice):
        with_dice, size, out_hw = ctx.setup
        log_p, target, valid, num_valid, image, cls, prob, alpha, beta, label_prob = (
            ctx.saved_tensors)
        batch, _, classes = log_p.shape
        grad = log_p.exp()  # softmax, (B, HW, K)
        grad.scatter_add_(-1, target, grad.new_full((1, 1, 1), -1.0).expand(target.shape))
        scale = grad_ce / num_valid.clamp_min(1)
        grad.mul_(torch.where(valid, scale, 0.0)[..., None])  # 0 on ignored pixels
        if with_dice and prob is not None:
            # alpha * p (1 - p) on the N present (image, class) pairs, one fused pass
            grad.permute(0, 2, 1).index_put_((image, cls), torch.ops.aten.sigmoid_backward(
                (alpha * grad_dice)[:, None].expand_as(prob), prob), accumulate=True)
            # - beta * p (1 - p) at each labelled pixel's own class (label_prob is 0 elsewhere)
            at_label = beta.gather(1, target[..., 0]) * label_prob * (1 - label_prob)  # (B, HW)
            grad.scatter_add_(-1, target, (-grad_dice * at_label)[..., None])
        grad = grad.view(batch, *out_hw, classes).permute(0, 3, 1, 2)  # (B, K, H, W), NHWC
        if out_hw == size:
            return grad, None, None, None, None
        grad_logits = torch.ops.aten.upsample_bilinear2d_backward(
            grad, list(out_hw), [batch, classes, *size], False)
        return grad_logits, None, None, None, None


def upsampled_cross_entropy_and_dice(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, smooth: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, Dice) of (B, K, h, w) logits upsampled to the (B, H, W) labels, fp32.

    Cross-entropy: mean over labelled pixels (0 when none is). Dice: as
    :func:`ssaseg.models.dice.dice_loss` (sigmoid, per present (image, class) pair, ignored
    pixels count as negatives, 0 when no pair is present).
    """
    return _UpsampledCrossEntropyDice.apply(logits.float(), labels, ignore_index, True,
                                            float(smooth))


def upsampled_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
) -> torch.Tensor:
    """Cross-entropy of (B, K, h, w) logits upsampled to the (B, H, W) labels, fp32: the value
    and gradient of :func:`ssaseg.models.losses.segmentation_cross_entropy` (no class weights).
    """
    return _UpsampledCrossEntropyDice.apply(logits.float(), labels, ignore_index, False, 1.0)[0]
