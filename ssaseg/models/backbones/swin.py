"""Swin Transformer as mmsegmentation builds it for UPerNet, on timm's Swin modules.

timm's ``swin_*`` models, used as feature extractors, differ from mmseg's ``SwinTransformer``
(the backbone behind the published UperNet-Swin numbers) in three ways, all fixed here; the
parameters are timm's own, so timm/official ImageNet checkpoints still load unchanged:

1. Output norms: mmseg applies a LayerNorm to each stage's output before the decode head
   (``norm0``..``norm3``; 2,880 parameters on Swin-T, 5,760 on Swin-L). They are
   :attr:`SwinBackbone.out_norms` (freshly initialised: ImageNet checkpoints have none).
2. Shifted windows in every second block of *every* stage, at any input size: timm disables
   the shift (and shrinks the window) where a stage's 224-pixel design resolution fits in one
   window, i.e. always in the last stage; ``always_partition=True`` keeps window 7 and shift 3.
3. Pad, then roll: mmseg pads a block's input (right/bottom, zeros) to a multiple of the window,
   then applies the cyclic shift, and builds the shift mask on the padded size; timm rolls the
   unpadded map and pads afterwards, which mixes different tokens into the border windows
   whenever a side is not a multiple of 7 (at 512 x 512 input: every stage). The blocks'
   window attention is switched to :meth:`PadThenRollBlock._attn` in place.

The image itself is padded only to a multiple of the patch size (4, right/bottom), as mmseg's
``PatchEmbed(padding="corner")`` does; the patch merging layers pad odd sides themselves, so
stage ``i`` has ``ceil(H / 2**(i + 2))`` rows, as in mmseg.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.backbones.timm_backbone import TimmBackbone, timm

_swin = timm.models.swin_transformer


class PadThenRollBlock(_swin.SwinTransformerBlock):
    """timm's Swin block with mmseg's order: pad to whole windows, then shift (same params)."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape  # (B, H, W, C), already normalised
        win_h, win_w = self.window_size
        x = F.pad(x, (0, 0, 0, (-width) % win_w, 0, (-height) % win_h))  # (B, Hp, Wp, C)
        padded_h, padded_w = x.shape[1:3]
        shift = tuple(self.shift_size)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = self._shift_mask(x)  # regions of the padded, shifted map: (nW, N, N)
        windows = _swin.window_partition(x, self.window_size).view(-1, self.window_area, channels)
        windows = self.attn(windows, mask=mask)  # (B * nW, N, C)
        windows = windows.view(-1, win_h, win_w, channels)
        x = _swin.window_reverse(windows, self.window_size, padded_h, padded_w)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :height, :width].contiguous()

    def _shift_mask(self, x: torch.Tensor) -> torch.Tensor:
        """timm's shift mask for the padded map's size, kept for the last size seen (it depends
        only on the size: one image size per batch, the same in every step of a training run)."""
        key = (x.shape[1], x.shape[2], x.device, x.dtype)
        cached = self.__dict__.get("_cached_shift_mask")
        if cached is None or cached[0] != key:
            cached = (key, self.get_attn_mask(x))
            self.__dict__["_cached_shift_mask"] = cached  # a plain attribute: not in state_dict
        return cached[1]


class SwinBackbone(TimmBackbone):
    """mmseg's Swin (see module docstring) from a timm ``swin_*`` model name.

    Same arguments as :class:`TimmBackbone`; ``weights`` loads an ImageNet checkpoint into the
    timm part (the output norms keep their initialisation, as in mmseg).
    """

    def __init__(self, model_name: str, weights: str | Path | None = None, **timm_kwargs) -> None:
        super().__init__(model_name, weights=None, strict_img_size=False, always_partition=True,
                         **timm_kwargs)
        self.patch_size = tuple(self.model.patch_embed.patch_size)
        switched = 0
        for module in self.model.modules():
            if type(module) is _swin.SwinTransformerBlock:
                module.__class__ = PadThenRollBlock
                switched += 1
        if not switched:
            raise ValueError(f"{model_name} has no Swin blocks: use the `timm` backbone")
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)
        if weights is not None:
            self.load_pretrained(weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        ph, pw = self.patch_size
        images = F.pad(images, (0, (-w) % pw, 0, (-h) % ph))  # (B, 3, H4, W4)
        features = self.model(images)  # per stage (B, h_i, w_i, C_i), channels-last
        return [norm(f).permute(0, 3, 1, 2).contiguous()  # (B, C_i, h_i, w_i)
                for norm, f in zip(self.out_norms, features)]
