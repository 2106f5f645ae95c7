"""Tiled upsampled cross-entropy and Dice against the whole-map computation they replace:
values and gradients, integer and non-integer scale factors, one-row and whole-map tiles,
ignored pixels, absent classes, no labelled pixel at all."""

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


@pytest.mark.parametrize("small,large,tile", [
    ((6, 9), (24, 36), 50),           # integer factor, several rows per tile
    ((7, 5), (25, 19), 1),            # non-integer factors, one row per tile
    ((5, 7), (23, 41), 333),
    ((8, 8), (8, 8), 100),            # no resize at all
    ((4, 6), (16, 6), 10 ** 6),       # height only, the whole map in one tile
])
def test_values_and_gradients_match_the_whole_map(small, large, tile):
    logits, labels = inputs(small, large)
    ce_ref, dice_ref = whole_map(logits, labels, smooth=0.5)
    grad_ref, = torch.autograd.grad(0.7 * ce_ref + 1.3 * dice_ref, logits, retain_graph=True)
    ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE, 0.5, tile_elements=tile)
    grad, = torch.autograd.grad(0.7 * ce + 1.3 * dice, logits, retain_graph=True)
    torch.testing.assert_close(ce, ce_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dice, dice_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-8)
    # each term's own gradient too (the other output's gradient is zero)
    grad_dice, = torch.autograd.grad(dice, logits)
    torch.testing.assert_close(grad_dice, torch.autograd.grad(dice_ref, logits)[0],
                               rtol=1e-5, atol=1e-8)
    ce_only = upsampled_cross_entropy(logits, labels, IGNORE, tile_elements=tile)
    torch.testing.assert_close(torch.autograd.grad(ce_only, logits)[0],
                               torch.autograd.grad(ce_ref, logits)[0], rtol=1e-5, atol=1e-8)


def test_every_pixel_ignored_gives_zero_losses_and_zero_gradient():
    logits, labels = inputs((4, 4), (16, 16))
    labels.fill_(IGNORE)
    ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE)
    assert float(ce) == 0.0 and float(dice) == 0.0
    grad, = torch.autograd.grad(ce + dice, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_tile_size_does_not_change_the_result():
    logits, labels = inputs((16, 16), (64, 64), classes=19, seed=3)
    results = []
    for tile in (1, 2 * 19 * 64 * 5, 10 ** 7):
        ce, dice = upsampled_cross_entropy_and_dice(logits, labels, IGNORE, tile_elements=tile)
        results.append((ce, dice, torch.autograd.grad(ce + dice, logits)[0]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
