"""Upsampled cross-entropy and Dice against the two reference losses on an upsampled map:
values and gradients (of the sum and of each term), integer and non-integer scale factors, no
resize, ignored pixels, absent classes, no labelled pixel at all; a second backward refused."""

from __future__ import annotations

import pytest
import torch

from ssaseg.models.dice import dice_loss
from ssaseg.models.losses import resize_logits, segmentation_cross_entropy
from ssaseg.models.upsampled_losses import (
    upsampled_cross_entropy,
    upsampled_cross_entropy_and_dice,
)

IGNORE = 255


def inputs(small, large, classes=5, seed=0, ignore_share=0.2):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(2, classes, *small, generator=gen)).requires_grad_(True)
    labels = torch.randint(0, classes, (2, *large), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < ignore_share] = IGNORE
    labels[1][labels[1] == classes - 2] = IGNORE  # a class absent from image 1 only
    return logits, labels


def whole_map(logits, labels, smooth=1.0):
    up = resize_logits(logits, tuple(labels.shape[-2:]))  # (B, K, H, W)
    return segmentation_cross_entropy(up, labels, IGNORE), dice_loss(up, labels, IGNORE, smooth)


@pytest.mark.parametrize("small,large", [
    ((6, 9), (24, 36)),     # integer factors
    ((7, 5), (25, 19)),     # non-integer factors
    ((5, 7), (23, 41)),
    ((8, 8), (8, 8)),       # no resize at all
    ((4, 6), (16, 6)),      # height only
])
def test_values_and_gradients_match_the_whole_map(small, large):
    logits, labels = inputs(small, large)
    ce_ref, dice_ref = whole_map(logits, labels, smooth=0.5)
    grad_ref, = torch.autograd.grad(0.7 * ce_ref + 1.3 * dice_ref, logits, retain_graph=True)
    before = logits.detach().clone()
    ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE, 0.5)
    grad, = torch.autograd.grad(0.7 * ce + 1.3 * dice, logits)
    assert torch.equal(logits, before)  # the caller's logits are never overwritten
    torch.testing.assert_close(ce, ce_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dice, dice_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-8)
    # each term's own gradient too (the other output's gradient is zero)
    _, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE, 0.5)
    torch.testing.assert_close(torch.autograd.grad(dice, logits)[0],
                               torch.autograd.grad(dice_ref, logits, retain_graph=True)[0],
                               rtol=1e-5, atol=1e-8)
    ce_only = upsampled_cross_entropy(logits, labels, IGNORE)
    torch.testing.assert_close(torch.autograd.grad(ce_only, logits)[0],
                               torch.autograd.grad(ce_ref, logits)[0], rtol=1e-5, atol=1e-8)


def test_every_pixel_ignored_gives_zero_losses_and_zero_gradient():
    logits, labels = inputs((4, 4), (16, 16))
    labels.fill_(IGNORE)
    ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE)
    assert float(ce) == 0.0 and float(dice) == 0.0
    grad, = torch.autograd.grad(ce + dice, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_a_retained_graph_gives_the_same_gradient_twice():
    logits, labels = inputs((4, 4), (16, 16))
    ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE)
    first, = torch.autograd.grad(ce + dice, logits, retain_graph=True)
    second, = torch.autograd.grad(ce + dice, logits)
    assert torch.equal(first, second)
