"""Multi-scale deformable attention: the grid_sample core against a per-point reference written
here (bilinear interpolation by hand, zero outside the map), gradients included, and the module's
invariants (zero offsets read the reference pixel; padding is never read)."""

from __future__ import annotations

import math

import pytest
import torch

from ssaseg.models.ms_deform_attn import (
    MultiScaleDeformableAttention,
    level_start_offsets,
    multi_scale_deformable_sampling,
    reference_grid,
)

SHAPES = [(3, 4), (2, 3), (1, 2)]


def _bilinear_at(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """image (D, H, W) at continuous pixel coordinates (x, y), 0-d tensors (pixel centres at
    integers), bilinear, zero outside: the rule of the reference CUDA kernels."""
    dims, height, width = image.shape
    x0, y0 = math.floor(float(x)), math.floor(float(y))
    out = image.new_zeros(dims)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < height and 0 <= xx < width:
                weight = (1 - abs(x - xx)) * (1 - abs(y - yy))
                out = out + weight * image[:, yy, xx]
    return out


def _slow_sampling(value, shapes, locations, weights):
    """One point at a time: (B, Q, M*D)."""
    batch, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = level_start_offsets(shapes)
    rows = []
    for b in range(batch):
        per_query = []
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = value.new_zeros(dims)
                for lvl, (height, width) in enumerate(shapes):
                    level = value[b, starts[lvl]:starts[lvl] + height * width, m]  # (HW, D)
                    image = level.t().reshape(dims, height, width)
                    for p in range(points):
                        x = locations[b, q, m, lvl, p, 0] * width - 0.5
                        y = locations[b, q, m, lvl, p, 1] * height - 0.5
                        acc = acc + weights[b, q, m, lvl, p] * _bilinear_at(image, x, y)
                per_head.append(acc)
            per_query.append(torch.cat(per_head))
        rows.append(torch.stack(per_query))
    return torch.stack(rows)


def _random_inputs(seed=0, batch=2, queries=5, heads=2, dims=3, points=2):
    g = torch.Generator().manual_seed(seed)
    positions = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, positions, heads, dims, generator=g, dtype=torch.float64)
    # locations partly outside [0, 1]: the zero padding is exercised
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g,
                           dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g,
                         dtype=torch.float64)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    return value, locations, weights


def test_sampling_matches_the_per_point_reference():
    value, locations, weights = _random_inputs()
    fast = multi_scale_deformable_sampling(value, SHAPES, locations, weights)
    slow = _slow_sampling(value, SHAPES, locations, weights)
    assert fast.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_sampling_gradients_match_the_per_point_reference():
    inputs = _random_inputs(seed=1, batch=1, queries=3)
    grads = []
    for fn in (multi_scale_deformable_sampling, _slow_sampling):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        value, locations, weights = leaves
        out = fn(value, SHAPES, locations, weights)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos()).sum().backward()
        grads.append([t.grad for t in leaves])
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-8, atol=1e-10)


def test_shape_mismatch_is_reported():
    value, locations, weights = _random_inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        multi_scale_deformable_sampling(value, SHAPES[:2], locations, weights)


def test_zero_offsets_read_the_reference_pixel_and_padding_is_never_read():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=8, num_heads=2, num_levels=1, num_points=3,
                                         value_ratio=0.5).double()
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # every point on the reference point itself
        attn.attention_weights.weight.normal_()  # uneven weights: they must still sum to 1
    shapes = [(4, 5)]
    value_input = torch.randn(2, 20, 8, dtype=torch.float64)
    query = torch.randn(2, 20, 8, dtype=torch.float64)
    ref = reference_grid(shapes, dtype=torch.float64)[None, :, None]  # (1, 20, 1, 2)
    out = attn(query, ref, value_input, shapes)
    expected = attn.output_proj(attn.value_proj(value_input))  # each query reads its own pixel
    torch.testing.assert_close(out, expected)

    # a padded position contributes nothing, whatever its content
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[:, 7] = True
    changed = value_input.clone()
    changed[:, 7] = 1e3
    masked = attn(query, ref, changed, shapes, padding_mask=padding)
    torch.testing.assert_close(masked, attn(query, ref, value_input, shapes, padding_mask=padding))
    assert masked.shape == (2, 20, 8)


def test_initial_offsets_lie_on_rays_one_to_p_pixels_out():
    attn = MultiScaleDeformableAttention(embed_dims=16, num_heads=4, num_levels=2, num_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y (angle pi/2), 1, 2, 3 pixels out, on every level
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.all(attn.attention_weights.weight == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=4)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.5)
    positions = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 7, 32)
    value_input = torch.randn(2, positions, 32)
    ref = torch.rand(2, 7, 3, 2)
    cpu = attn(query, ref, value_input, SHAPES)
    gpu = attn.cuda()(query.cuda(), ref.cuda(), value_input.cuda(), SHAPES)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
