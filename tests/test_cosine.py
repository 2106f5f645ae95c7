"""Cosine logits with the hand-written backward: values and gradients against plain autograd on
a slow per-pixel formula, in float64 and under autocast."""

from __future__ import annotations

import pytest
import torch

from ssaseg.models.classifiers.cosine import cosine_logits
from tests.test_ssa import slow_cosine_logits


def slow_cosine(pixels, centers, temperature):
    """The per-pixel reference of the SSA tests, image by image: pixels (B, C, h, w), centers
    (B, M, C) -> (B, M, h, w), differentiable by autograd."""
    return torch.stack([slow_cosine_logits(p, c, temperature) for p, c in zip(pixels, centers)])


def inputs(shared_second=False, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 6, 3, 5, generator=gen, dtype=dtype).requires_grad_()
    first = torch.randn(2, 4, 6, generator=gen, dtype=dtype).requires_grad_()
    shape = (3, 6) if shared_second else (2, 3, 6)
    second = torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()
    return pixels, first, second


@pytest.mark.parametrize("shared_second", [False, True])
def test_values_and_gradients_match_autograd_on_the_slow_formula(shared_second):
    pixels, first, second = inputs(shared_second)
    weights = [torch.randn(2, 4, 3, 5, dtype=torch.float64),
               torch.randn(2, 3, 3, 5, dtype=torch.float64)]

    got = cosine_logits(pixels, [first, second], 15.0)
    loss = sum((w * out).sum() for w, out in zip(weights, got))
    grads = torch.autograd.grad(loss, [pixels, first, second])

    expanded = second.expand(2, -1, -1) if shared_second else second
    want = [slow_cosine(pixels, first, 15.0), slow_cosine(pixels, expanded, 15.0)]
    want_loss = sum((w * out).sum() for w, out in zip(weights, want))
    want_grads = torch.autograd.grad(want_loss, [pixels, first, second])

    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)
    for g, w in zip(grads, want_grads):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


def test_single_set_and_gradcheck():
    pixels, first, _ = inputs()
    (logits,) = cosine_logits(pixels, [first], 2.0)
    torch.testing.assert_close(logits, slow_cosine(pixels, first, 2.0))
    assert torch.autograd.gradcheck(lambda p, c: cosine_logits(p, [c], 2.0)[0], (pixels, first))


def test_unused_output_and_frozen_pixels():
    """An output that takes no part in the loss contributes nothing; pixels that do not require
    gradient get none, the centres still do."""
    pixels, first, second = inputs()
    student, _ = cosine_logits(pixels, [first, second], 15.0)
    g_pixels, g_first = torch.autograd.grad(student.sum(), [pixels, first])
    w_pixels, w_first = torch.autograd.grad(slow_cosine(pixels, first, 15.0).sum(),
                                            [pixels, first])
    torch.testing.assert_close(g_pixels, w_pixels)
    torch.testing.assert_close(g_first, w_first)

    frozen = pixels.detach()
    (out,) = cosine_logits(frozen, [first], 15.0)
    (g_first,) = torch.autograd.grad(out.sum(), [first])
    torch.testing.assert_close(g_first, w_first)


def test_zero_pixel_gives_zero_logits_and_finite_gradient():
    pixels, first, _ = inputs()
    pixels = pixels.detach().clone()
    pixels[0, :, 1, 2] = 0
    pixels.requires_grad_()
    (out,) = cosine_logits(pixels, [first], 15.0)
    assert torch.all(out[0, :, 1, 2] == 0)
    (grad,) = torch.autograd.grad(out.sum(), [pixels])
    assert torch.isfinite(grad).all()


def test_autocast_runs_the_products_in_bf16_and_returns_fp32():
    pixels, first, second = inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_pixels = pixels.to(torch.bfloat16)  # what a head under autocast hands over
        got = cosine_logits(half_pixels, [first, second], 15.0)
        loss = sum(out.sum() for out in got)
    grads = torch.autograd.grad(loss, [pixels, first, second])
    want = cosine_logits(pixels, [first, second], 15.0)
    want_grads = torch.autograd.grad(sum(out.sum() for out in want), [pixels, first, second])
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=0.15, rtol=0.05)
    for g, w, x in zip(grads, want_grads, (pixels, first, second)):
        assert g.dtype == x.dtype
        torch.testing.assert_close(g, w, atol=0.3, rtol=0.05)
