"""Mask2Former's head (Cheng et al., "Masked-attention Mask Transformer for Universal Image
Segmentation", CVPR 2022): the deformable-attention pixel decoder
(:mod:`ssaseg.models.heads.msdeform_pixel_decoder`) and the masked-attention transformer decoder.

The decoder refines Q learned queries (a content feature and a positional embedding each) in
``num_layers`` layers, cycling over the pixel decoder's three levels, coarsest first. Each layer:
cross-attention from the queries to that level's tokens (sine position encoding + a learned
level embedding), *masked* to the pixels the query's current mask covers (sigmoid >= 0.5,
resized to the level; a query whose mask is empty attends everywhere), then self-attention among
the queries, then an FFN (256 -> 2048 -> 256, ReLU); each with a residual and a LayerNorm
(post-norm). Before the first layer and after each one, a shared prediction step (LayerNorm ->
class Linear to K + 1, and a 3-layer MLP to a mask embedding dotted with the per-pixel embedding)
gives every query's class logits and mask logits: these are the decoder's attention masks and,
all ``num_layers + 1`` of them, the predictions the set-prediction loss supervises (deep
supervision).

This module only *predicts per query*; turning queries into per-pixel class scores is the
classifier's (``ssaseg/models/classifiers/mask_classification.py``): ``feature`` is the
per-pixel embedding (stride 4), ``mask_predictions`` the per-stage query predictions.

Settings of the ADE20K semantic configs (facebookresearch/Mask2Former maskformer2_R50_bs16_160k,
mmsegmentation 1.2.2 mask2former_r50_8xb2-160k_ade20k-512x512): 100 queries, 9 layers, 8 heads,
hidden 256, FFN 2048, dropout 0, post-norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.heads.base import HeadOutput, MaskPredictions
from ssaseg.models.heads.msdeform_pixel_decoder import MSDeformAttnPixelDecoder
from ssaseg.models.heads.position_encoding import sine_position_encoding


class MaskedAttentionLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each + residual -> LayerNorm."""

    def __init__(self, channels: int, num_heads: int, ffn_channels: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(channels)
        self.self_attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.self_norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, ffn_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(ffn_channels, channels)
        self.ffn_norm = nn.LayerNorm(channels)

    def forward(self, query, query_pos, memory, memory_pos, attn_mask):
        """query, query_pos (B, Q, C); memory (B, S, C), memory_pos (1, S, C);
        attn_mask (B * heads, Q, S), True = not attended."""
        out = self.cross_attn(query + query_pos, memory + memory_pos, memory,
                              attn_mask=attn_mask, need_weights=False)[0]
        query = self.cross_norm(query + out)
        q = query + query_pos
        query = self.self_norm(query + self.self_attn(q, q, query, need_weights=False)[0])
        return self.ffn_norm(query + self.fc2(self.act(self.fc1(query))))


class MaskedAttentionDecoder(nn.Module):
    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        mask_channels: int = 256,
        num_queries: int = 100,
        num_layers: int = 9,
        num_heads: int = 8,
        ffn_channels: int = 2048,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.query_feat = nn.Embedding(num_queries, channels)
        self.query_embed = nn.Embedding(num_queries, channels)
        self.level_embed = nn.Embedding(num_levels, channels)
        self.layers = nn.ModuleList(
            MaskedAttentionLayer(channels, num_heads, ffn_channels) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(channels)
        self.class_embed = nn.Linear(channels, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(inplace=True),
            nn.Linear(channels, channels), nn.ReLU(inplace=True),
            nn.Linear(channels, mask_channels),
        )
        if self.post_norm.weight.device.type != "meta":
            for p in self.layers.parameters():  # mmdet's init of the decoder layers
                if p.dim() > 1:
                    nn.init.xavier_normal_(p)

    def parameters_without_weight_decay(self) -> list[str]:
        """The query and level embeddings train without weight decay (the reference's
        ``embed`` exemption), names relative to this module."""
        return ["query_feat.weight", "query_embed.weight", "level_embed.weight"]

    def _predict(self, query, pixel_embedding, mask_size):
        """Class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4) and the next layer's
        attention mask (B * heads, Q, h*w) at ``mask_size``."""
        query = self.post_norm(query)
        class_logits = self.class_embed(query)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(query), pixel_embedding)
        with torch.no_grad():
            resized = F.interpolate(mask_logits, size=mask_size, mode="bilinear",
                                    align_corners=False)
            blocked = resized.flatten(2).sigmoid() < 0.5  # (B, Q, h*w)
            blocked &= ~blocked.all(-1, keepdim=True)  # an empty mask attends everywhere
            attn_mask = blocked.repeat_interleave(self.num_heads, dim=0)  # (B*heads, Q, h*w)
        return class_logits, mask_logits, attn_mask

    def forward(self, pixel_embedding: torch.Tensor, levels: list[torch.Tensor]) -> MaskPredictions:
        """pixel_embedding (B, E, H/4, W/4); levels: ``num_levels`` maps (B, C, h, w), coarsest
        first."""
        batch = pixel_embedding.shape[0]
        memories, memory_pos, sizes = [], [], []
        for i, level in enumerate(levels):
            h, w = level.shape[-2:]
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            pos = sine_position_encoding(h, w, level.shape[1] // 2, device=level.device)
            memory_pos.append(pos.flatten(2).transpose(1, 2).to(memories[-1].dtype))
            sizes.append((h, w))
        # repeat, not expand: a view of a parameter made under no_grad still claims
        # requires_grad, which torch's flop counter trips over
        query = self.query_feat.weight[None].repeat(batch, 1, 1)  # (B, Q, C)
        query_pos = self.query_embed.weight[None].repeat(batch, 1, 1)
        class_logits, mask_logits, attn_mask = self._predict(query, pixel_embedding, sizes[0])
        all_classes, all_masks = [class_logits], [mask_logits]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            query = layer(query, query_pos, memories[level], memory_pos[level], attn_mask)
            next_size = sizes[(i + 1) % self.num_levels]
            class_logits, mask_logits, attn_mask = self._predict(query, pixel_embedding,
                                                                 next_size)
            all_classes.append(class_logits)
            all_masks.append(mask_logits)
        return MaskPredictions(all_classes, all_masks)


class Mask2FormerHead(nn.Module):
    """Pixel decoder + masked-attention decoder. ``feature`` = the per-pixel embedding."""

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        channels: int = 256,
        mask_channels: int = 256,
        num_queries: int = 100,
        encoder_layers: int = 6,
        encoder_ffn_channels: int = 1024,
        encoder_points: int = 4,
        decoder_layers: int = 9,
        decoder_ffn_channels: int = 2048,
        num_heads: int = 8,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if list(in_strides) != [4, 8, 16, 32]:
            raise ValueError(f"Mask2Former's head takes backbone levels at strides 4, 8, 16, 32; "
                             f"got {list(in_strides)}")
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels, channels, mask_channels, 3, encoder_layers, num_heads, encoder_points,
            encoder_ffn_channels, num_groups)
        self.decoder = MaskedAttentionDecoder(num_classes, channels, mask_channels, num_queries,
                                              decoder_layers, num_heads, decoder_ffn_channels)
        self.out_channels = mask_channels

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        pixel_embedding, levels = self.pixel_decoder(features)
        predictions = self.decoder(pixel_embedding, levels)
        return HeadOutput(pixel_embedding, mask_predictions=predictions)
