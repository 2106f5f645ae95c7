"""Any-size inputs for timm's EfficientFormerV2, whose attention layers are built for one size.

timm's ``Attention2d`` / ``Attention2dDownsample`` store a relative-position bias table laid
out as a (R_h, R_w) grid of absolute offsets (|dy|, |dx|) for the ``img_size`` given at
construction, and reshape with that fixed size. :func:`make_efficientformerv2_dynamic` switches
every such module (in place, same parameters and state-dict keys) to a forward that reads the
grid size from its input: at the construction size it is exactly timm's computation; at any
other size the offset table is resized bicubically to the new grid, the same kind of
interpolation CGRSeg's EfficientFormerV2 applies to its biases when evaluating whole images.

Feature maps must have even sizes at stride 16 (the stride-2 attention halves and doubles
them): pad inputs to a multiple of 32 (``TimmBackbone(pad_to_multiple=32)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.backbones.timm_backbone import timm  # timm only after the CPU-torch fix

Attention2d = timm.models.efficientformer_v2.Attention2d
Attention2dDownsample = timm.models.efficientformer_v2.Attention2dDownsample


def resize_offset_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]):
    """(heads, old_h*old_w) bias table over |dy|, |dx| offsets -> (heads, new_h*new_w)."""
    if tuple(old) == tuple(new):
        return table
    grid = table.reshape(1, table.shape[0], old[0], old[1])
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[0], new[0] * new[1])


def _offset_index(q_pos: torch.Tensor, k_pos: torch.Tensor, width: int) -> torch.Tensor:
    rel = (q_pos[:, :, None] - k_pos[:, None, :]).abs()  # (2, Nq, Nk)
    return rel[0] * width + rel[1]


def _grid(h: int, w: int, step: int, device) -> torch.Tensor:
    ys = torch.arange(0, h, step, device=device)
    xs = torch.arange(0, w, step, device=device)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij")).flatten(1)  # (2, N)


class DynamicAttention2d(Attention2d):
    def _biases(self, h: int, w: int, device) -> torch.Tensor:
        if (h, w) == tuple(self.resolution):
            return self.get_attention_biases(device)
        table = resize_offset_table(self.attention_biases, self.resolution, (h, w))
        pos = _grid(h, w, 1, device)
        return table[:, _offset_index(pos, pos, w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        h, w = x.shape[-2:]
        n = h * w
        q = self.q(x).reshape(b, self.num_heads, -1, n).permute(0, 1, 3, 2)
        k = self.k(x).reshape(b, self.num_heads, -1, n)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.num_heads, -1, n).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self._biases(h, w, x.device)
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = (attn @ v).transpose(2, 3).reshape(b, self.dh, h, w) + v_local
        if self.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


class DynamicAttention2dDownsample(Attention2dDownsample):
    def _biases(self, h: int, w: int, device) -> torch.Tensor:
        if (h, w) == tuple(self.resolution):
            return self.get_attention_biases(device)
        table = resize_offset_table(self.attention_biases, self.resolution, (h, w))
        return table[:, _offset_index(_grid(h, w, 2, device), _grid(h, w, 1, device), w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.q(x)
        h2, w2 = q.shape[-2:]
        q = q.reshape(b, self.num_heads, -1, h2 * w2).permute(0, 1, 3, 2)
        k = self.k(x).reshape(b, self.num_heads, -1, h * w)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.num_heads, -1, h * w).permute(0, 1, 3, 2)
        attn = ((q @ k) * self.scale + self._biases(h, w, x.device)).softmax(dim=-1)
        x = (attn @ v).transpose(2, 3).reshape(b, self.dh, h2, w2) + v_local
        return self.proj(self.act(x))


def make_efficientformerv2_dynamic(model: nn.Module) -> int:
    """Switch every EfficientFormerV2 attention in ``model`` to the any-size forward; returns
    how many modules were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is Attention2d:
            module.__class__ = DynamicAttention2d
            switched += 1
        elif type(module) is Attention2dDownsample:
            module.__class__ = DynamicAttention2dDownsample
            switched += 1
    return switched
