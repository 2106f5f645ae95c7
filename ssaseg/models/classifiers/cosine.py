"""Temperature-scaled cosine logits between pixel features and sets of class centres.

``logits[b, m, p] = t * <u[b, m], x[b, :, p]> / |x[b, :, p]|`` with u the L2-normalised centres.
SSA classifies the same pixels against two sets of centres in training (the student's and the
teacher's), so both sets go through one call: the pixel norm is computed once, and the backward
pass is written by hand so that it makes one pass over the (B, C, hw) features instead of the
several that autograd records for the norm, the division and the sum of the two branches:

    S_i    = G_i * t / |x|                          per set i, (B, M_i, hw)
    dU_i   = S_i @ X^T                              (B, M_i, C)
    dX     = [U_1; U_2]^T @ [S_1; S_2]              one matmul over both sets, (B, C, hw)
             - X * sum_i sum_m (G_i * L_i) / |x|^2  the norm's share, one fused pass

Under autocast the matrix products run in the autocast dtype and the logits come out in fp32,
as they would from autograd's ``bmm`` (autocast) times an fp32 scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssaseg.models.mixed_precision import autocast_off, matmul_dtype

EPS = 1e-12


class _CosineLogits(torch.autograd.Function):
    """pixels (B, C, hw), unit centres (B, M_i, C) each -> logits (B, M_i, hw) each, fp32."""

    @staticmethod
    def forward(ctx, pixels: torch.Tensor, temperature: float, *units: torch.Tensor):
        compute = matmul_dtype(pixels, *units)
        with autocast_off(pixels.device.type):
            x = pixels.to(compute)  # (B, C, hw)
            # at least fp32 for the norm, also from half-precision pixels
            wide = pixels.to(torch.promote_types(pixels.dtype, torch.float32))
            norm = wide.square().sum(1, keepdim=True).sqrt_()  # (B, 1, hw)
            scale = temperature / (norm + EPS)  # (B, 1, hw)
            units_c = [unit.to(compute) for unit in units]
            logits = []
            for unit in units_c:
                product = torch.bmm(unit, x)  # (B, M_i, hw)
                if product.dtype == scale.dtype:
                    logits.append(product.mul_(scale))
                else:
                    logits.append(product * scale)
        ctx.input_dtypes = (pixels.dtype, *(unit.dtype for unit in units))
        ctx.sizes = [unit.shape[1] for unit in units]
        ctx.save_for_backward(x, norm, scale, *units_c, *logits)
        return tuple(logits)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        count = len(ctx.sizes)
        x, norm, scale = ctx.saved_tensors[:3]
        units = ctx.saved_tensors[3 : 3 + count]
        logits = ctx.saved_tensors[3 + count :]
        batch, _, pixels = x.shape
        need_pixels = ctx.needs_input_grad[0]
        with autocast_off(x.device.type):
            # S = [G_1; G_2; ...] * t / |x|, in the compute dtype: (B, sum M_i, hw)
            scaled = x.new_empty(batch, sum(ctx.sizes), pixels)
            start = 0
            for grad, size in zip(grads, ctx.sizes):
                torch.mul(grad, scale, out=scaled[:, start : start + size])
                start += size
            unit_grads = torch.bmm(scaled, x.transpose(1, 2)).split(ctx.sizes, 1)  # (B, M_i, C)
            pixel_grad = None
            if need_pixels:
                stacked = units[0] if count == 1 else torch.cat(units, 1)  # (B, sum M_i, C)
                pixel_grad = torch.bmm(stacked.transpose(1, 2), scaled)  # (B, C, hw)
                response = sum(
                    (grad * out).sum(1, keepdim=True) for grad, out in zip(grads, logits)
                )  # (B, 1, hw): sum_m G * L
                coef = response / ((norm + EPS) * norm.clamp_min(EPS))
                pixel_grad.addcmul_(x, coef.to(pixel_grad.dtype), value=-1.0)
                pixel_grad = pixel_grad.to(ctx.input_dtypes[0])
        unit_grads = [
            grad.to(dtype) if needed else None
            for grad, dtype, needed in zip(
                unit_grads, ctx.input_dtypes[1:], ctx.needs_input_grad[2:]
            )
        ]
        return (pixel_grad, None, *unit_grads)


def cosine_logits(
    pixels: torch.Tensor, centers: Sequence[torch.Tensor], temperature: float
) -> list[torch.Tensor]:
    """``temperature * cos(pixel, centre)`` for every pixel against each set of centres.

    pixels: (B, C, h, w). centers: a sequence of (B, M_i, C) or (M_i, C) tensors (the same
    centres for every image). Returns one (B, M_i, h, w) tensor per set, fp32 under autocast.
    """
    batch, _, height, width = pixels.shape
    units = []
    for center in centers:
        unit = center / (center.norm(dim=-1, keepdim=True) + EPS)  # (B, M, C) or (M, C)
        units.append(unit.expand(batch, -1, -1) if unit.dim() == 2 else unit)
    logits = _CosineLogits.apply(pixels.flatten(2), temperature, *units)
    return [out.view(batch, -1, height, width) for out in logits]
