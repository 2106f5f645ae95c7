"""ViT-Adapter (Chen et al., "Vision Transformer Adapter for Dense Predictions", ICLR 2023) on a
plain ViT: the backbone of SSA-Seg's strongest row (UperNet + ViT-Adapter-L, AugReg ViT-L/16).

A plain ViT (timm's blocks: pre-norm attention and MLP, layer scale) runs at stride 16. Beside it:
* the spatial prior module (SPM), a small conv stem giving features at strides 4, 8, 16 and 32,
  each projected to the ViT width; the stride 8/16/32 ones, flattened and concatenated (plus a
  learned embedding per level), are the adapter's token sequence ``c``;
* four interactions, each over a quarter of the ViT's blocks: an *injector* (deformable
  attention from the ViT tokens to ``c``, scaled by a zero-initialised gain, added to the ViT
  tokens) before the blocks, and an *extractor* (deformable attention from ``c`` to the ViT
  tokens, then a conv-FFN: Linear, 3x3 depthwise conv on each level, GELU, Linear) after them;
  the last interaction has two more extractors.
The outputs are the four levels of ``c`` (stride 4 = SPM's stride-4 map + the stride-8 level
upsampled by a 2x2 transposed conv) plus each interaction's ViT output resized to that level,
each through a BatchNorm: four maps with the ViT's width at strides 4, 8, 16, 32.

Settings of the reference configs (czczup/ViT-Adapter segmentation/configs/ade20k/
upernet_augreg_adapter_large_512_160k_ade20k.py; the SSA-Seg configs
xwmaxwma/SSAClassifier configs/vit-adapter/* are the same model): ViT-L/16 (1024 wide, 24 blocks,
16 heads) pretrained at 384, drop path 0.4 (linear over the ViT blocks; the adapter's FFNs use
0.4 throughout, as the reference does), 16 deformable heads, 4 points, value ratio 0.5, conv-FFN
ratio 0.25, interactions over blocks 0-5, 6-11, 12-17, 18-23, global attention in all 24 blocks
(``window_attn=[False] * 24`` in every config reproduced here, so windowed attention is not
implemented), layer scale initialised to 1, gradient checkpointing on.

Input: the project's ImageNet-normalised images. AugReg was trained on [-1, 1] inputs (mean =
std = 127.5, which the reference ADE20K config uses), so ``input_norm="augreg"`` (the default)
re-normalises them first; ``"imagenet"`` takes them as they are (what the reference COCO-Stuff
and PASCAL-Context configs feed). Sides are padded to a multiple of 32 (the levels must nest
exactly) and the outputs cropped back.

Parameter names follow the reference so that its checkpoints map by a short table
(``ssaseg/models/segmentor_key_tables.py``); only the ViT blocks' layer scales (``gamma1``/
``gamma2`` there, timm's ``ls1.gamma``/``ls2.gamma`` here) and the conv-FFN's depthwise conv
(``ffn.dwconv.dwconv`` there) differ.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ssaseg.models.backbones.checkpoint import (CheckpointMismatchError, mismatch_message,
                                                 require_file)
from ssaseg.models.ms_deform_attn import MultiScaleDeformableAttention, reference_grid
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops

declare_missing_torchvision_ops()
from timm.layers import DropPath, PatchEmbed  # noqa: E402  (after the CPU-torch fix above)
from timm.models.vision_transformer import Block  # noqa: E402

_LayerNorm = functools.partial(nn.LayerNorm, eps=1e-6)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = ("augreg", "imagenet")

def _checkpointed(module: nn.Module, *args, enabled: bool):
    if enabled and torch.is_grad_enabled() and any(
        a.requires_grad for a in args if isinstance(a, torch.Tensor)
    ):
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class ConvFFN(nn.Module):
    """Linear -> 3x3 depthwise conv on each of the three levels of ``c`` -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, levels: list[tuple[int, int]]) -> torch.Tensor:
        """x (B, N, C) over ``levels`` [(H8, W8), (H16, W16), (H32, W32)] -> (B, N, C)."""
        x = self.fc1(x)
        batch, _, channels = x.shape
        parts = []
        for part, (h, w) in zip(x.split([h * w for h, w in levels], dim=1), levels):
            grid = part.transpose(1, 2).reshape(batch, channels, h, w)
            parts.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        x = self.drop(self.act(torch.cat(parts, dim=1)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """ViT tokens <- deformable attention over the adapter's three levels, times a gain that
    starts at zero (the pretrained ViT starts undisturbed)."""

    def __init__(self, dim: int, num_heads: int, num_points: int, value_ratio: float,
                 init_gain: float = 0.0) -> None:
        super().__init__()
        self.query_norm = _LayerNorm(dim)
        self.feat_norm = _LayerNorm(dim)
        self.attn = MultiScaleDeformableAttention(dim, num_heads, 3, num_points, value_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_gain)))

    def forward(self, query, reference_points, feat, shapes):
        attn = self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), shapes)
        return query + self.gamma * attn


class Extractor(nn.Module):
    """Adapter tokens <- deformable attention over the ViT tokens, then a conv-FFN."""

    def __init__(self, dim: int, num_heads: int, num_points: int, value_ratio: float,
                 ffn_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.query_norm = _LayerNorm(dim)
        self.feat_norm = _LayerNorm(dim)
        self.attn = MultiScaleDeformableAttention(dim, num_heads, 1, num_points, value_ratio)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = _LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query, reference_points, feat, shapes, levels):
        query = query + self.attn(self.query_norm(query), reference_points, self.feat_norm(feat),
                                  shapes)
        return query + self.drop_path(self.ffn(self.ffn_norm(query), levels))


class InteractionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_points: int, value_ratio: float,
                 ffn_ratio: float, drop_path: float, init_gain: float, extra_extractors: bool,
                 gradient_checkpointing: bool) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.injector = Injector(dim, num_heads, num_points, value_ratio, init_gain)
        self.extractor = Extractor(dim, num_heads, num_points, value_ratio, ffn_ratio, drop_path)
        self.extra_extractors = nn.ModuleList(
            Extractor(dim, num_heads, num_points, value_ratio, ffn_ratio, drop_path)
            for _ in range(2 if extra_extractors else 0)
        )

    def forward(self, x, c, blocks, vit_refs, vit_shape, c_refs, c_levels):
        """x: ViT tokens (B, H16*W16, C); c: adapter tokens (B, N_c, C)."""
        cp = self.gradient_checkpointing
        x = _checkpointed(functools.partial(self.injector, shapes=c_levels), x, vit_refs, c,
                          enabled=cp)
        for block in blocks:
            x = _checkpointed(block, x, enabled=cp)
        for extractor in (self.extractor, *self.extra_extractors):
            c = _checkpointed(functools.partial(extractor, shapes=[vit_shape], levels=c_levels),
                              c, c_refs, x, enabled=cp)
        return x, c


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem (3 convs, max-pool) -> stride 4; three stride-2 convs -> 8, 16, 32; a 1x1
    projection of each to the ViT width. (B, 3, H, W) -> four (B, C, H/s, W/s) maps."""

    def __init__(self, inplanes: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
            *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class ViTAdapter(nn.Module):
    """See the module docstring. ``out_channels`` = 4 x ``embed_dim``, strides 4, 8, 16, 32.

    ``weights``: a local ImageNet checkpoint of the plain ViT (timm's naming: the AugReg
    release, ``vit_large_patch16_384.augreg_in21k_ft_in1k``), loaded by :meth:`load_pretrained`.
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        pretrain_size: int = 384,
        drop_path_rate: float = 0.4,
        layer_scale_init: float = 1.0,
        conv_inplane: int = 64,
        deform_num_heads: int = 16,
        deform_num_points: int = 4,
        deform_ratio: float = 0.5,
        ffn_ratio: float = 0.25,
        injector_init_gain: float = 0.0,
        interaction_indexes: tuple[tuple[int, int], ...] = ((0, 5), (6, 11), (12, 17), (18, 23)),
        extra_extractors: bool = True,
        gradient_checkpointing: bool = True,
        input_norm: str = "augreg",
        pad_to_multiple: int = 32,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm: unknown value {input_norm!r}; known: "
                             f"{', '.join(INPUT_NORMS)}")
        if patch_size != 16:
            raise ValueError("the adapter's levels are at strides 8, 16, 32 around a stride-16 "
                             f"ViT: patch_size must be 16, got {patch_size}")
        covered = [i for start, end in interaction_indexes for i in range(start, end + 1)]
        if covered != list(range(depth)):
            raise ValueError(f"interaction_indexes {interaction_indexes} must split the {depth} "
                             "blocks into consecutive ranges")
        self.embed_dim = embed_dim
        self.num_layers = depth  # for layer-wise lr decay (layer_decay_id)
        self.pretrain_grid = pretrain_size // patch_size
        self.interaction_indexes = tuple(tuple(r) for r in interaction_indexes)
        self.input_norm = input_norm
        self.pad_to_multiple = pad_to_multiple
        self.gradient_checkpointing = gradient_checkpointing

        self.patch_embed = PatchEmbed(img_size=pretrain_size, patch_size=patch_size, in_chans=3,
                                      embed_dim=embed_dim, strict_img_size=False)
        # one slot for the class token the pretrained ViT had (unused: as in the reference)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid ** 2 + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate
        self.blocks = nn.Sequential(*(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, init_values=layer_scale_init,
                  drop_path=rates[i], norm_layer=_LayerNorm)
            for i in range(depth)
        ))
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(conv_inplane, embed_dim)
        self.interactions = nn.ModuleList(
            InteractionBlock(embed_dim, deform_num_heads, deform_num_points, deform_ratio,
                             ffn_ratio, drop_path_rate, injector_init_gain,
                             extra_extractors and i == len(interaction_indexes) - 1,
                             gradient_checkpointing)
            for i in range(len(interaction_indexes))
        )
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.norm1 = nn.BatchNorm2d(embed_dim)
        self.norm2 = nn.BatchNorm2d(embed_dim)
        self.norm3 = nn.BatchNorm2d(embed_dim)
        self.norm4 = nn.BatchNorm2d(embed_dim)
        self.out_channels = [embed_dim] * 4
        self.out_strides = [4, 8, 16, 32]
        self._init_weights()
        if weights is not None:
            self.load_pretrained(weights)

    def _init_weights(self) -> None:
        """As the reference: trunc-normal(0.02) Linear, He-normal (fan-out) convs, unit norms in
        the adapter; the deformable attentions keep their own init; N(0, 1) level embedding;
        timm's defaults for the ViT (its weights come from the checkpoint)."""
        if self.level_embed.device.type == "meta":
            return
        for root in (self.up, self.spm, self.interactions):
            for m in root.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.interactions.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    # --- layer-wise learning-rate decay ------------------------------------------------------

    def layer_decay_id(self, name: str) -> int:
        """Layer index of a parameter (name relative to this module) for layer-wise lr decay,
        as the reference's LayerDecayOptimizerConstructor numbers them: patch and position
        embedding 0, ViT block i -> i + 1, everything else (adapter, norms) num_layers + 1."""
        if name == "pos_embed" or name.startswith("patch_embed."):
            return 0
        match = re.match(r"blocks\.(\d+)\.", name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers + 1

    # --- forward -------------------------------------------------------------------------

    def _position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The pretrained grid's position embedding, bicubic-resized to (height, width)."""
        grid = self.pos_embed[:, 1:].reshape(1, self.pretrain_grid, self.pretrain_grid, -1)
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(height, width), mode="bicubic",
                             align_corners=False)
        return grid.flatten(2).transpose(1, 2)  # (1, H*W, C)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        if self.input_norm == "augreg":  # ImageNet-normalised -> (x - 0.5) / 0.5
            mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            images = (images * std + mean - 0.5) / 0.5
        m = self.pad_to_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        h16, w16 = images.shape[-2] // 16, images.shape[-1] // 16
        c_levels = [(2 * h16, 2 * w16), (h16, w16), (h16 // 2, w16 // 2)]  # strides 8, 16, 32

        c1, c2, c3, c4 = self.spm(images)
        batch, dim = c1.shape[:2]
        c = torch.cat([level.flatten(2).transpose(1, 2) + self.level_embed[i]
                       for i, level in enumerate((c2, c3, c4))], dim=1)  # (B, N_c, C)

        x = self.patch_embed(images)  # (B, H16*W16, C)
        x = x + self._position_embedding(h16, w16)
        vit_refs = reference_grid([(h16, w16)], x.device)[None, :, None]  # (1, N, 1, 2)
        c_refs = reference_grid(c_levels, x.device)[None, :, None]  # (1, N_c, 1, 2)

        vit_outs = []
        for interaction, (start, end) in zip(self.interactions, self.interaction_indexes):
            x, c = interaction(x, c, self.blocks[start:end + 1], vit_refs, (h16, w16), c_refs,
                               c_levels)
            vit_outs.append(x.transpose(1, 2).reshape(batch, dim, h16, w16))

        sizes = [h * w for h, w in c_levels]
        c2, c3, c4 = (part.transpose(1, 2).reshape(batch, dim, h, w)
                      for part, (h, w) in zip(c.split(sizes, dim=1), c_levels))
        c1 = self.up(c2) + c1
        x1, x2, x3, x4 = vit_outs
        c1 = c1 + F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
        c2 = c2 + F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
        c3 = c3 + x3
        c4 = c4 + F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False)
        outs = [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]
        if pad_h or pad_w:
            outs = [o[..., : math.ceil(height / s), : math.ceil(width / s)]
                    for o, s in zip(outs, self.out_strides)]
        return outs

    # --- pretrained weights ----------------------------------------------------------------

    def vit_state_keys(self) -> list[str]:
        """Our keys an ImageNet ViT checkpoint provides: patch/position embedding and the blocks
        (not their layer scales, which AugReg has not got: they stay at their init, 1)."""
        return [k for k in self.state_dict()
                if (k == "pos_embed" or k.startswith(("patch_embed.", "blocks.")))
                and not re.search(r"\.ls[12]\.gamma$", k)]

    def load_pretrained(self, path: str | Path) -> None:
        """Load the ImageNet ViT (timm naming, .safetensors or torch file) into the ViT part;
        its class token, final norm and classifier are not used. Missing, unexpected or
        mis-shaped keys raise :class:`CheckpointMismatchError` listing them all."""
        from ssaseg.models.backbones.timm_backbone import read_checkpoint

        path = require_file(path)
        state = read_checkpoint(path)
        for unused in ("cls_token", "norm.weight", "norm.bias", "head.weight", "head.bias",
                       "fc_norm.weight", "fc_norm.bias"):
            state.pop(unused, None)
        own = self.state_dict()
        expected = set(self.vit_state_keys())
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        wrong = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in expected & state.keys() if state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            raise CheckpointMismatchError(mismatch_message(path.name, "the ViT of ViTAdapter",
                                                           missing, unexpected, wrong))
        self.load_state_dict(state, strict=False)  # strictness checked above
