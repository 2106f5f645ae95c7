"""Released whole-segmentor checkpoints -> our Segmentor's state-dict names, one table per model
family, kept as data.

A table is a tuple of ``(pattern, replacement)`` rows. Each released name is matched against
the patterns in order (``re.fullmatch``); the first match is rewritten with ``re.sub``-style
``replacement`` (``None``: the key is dropped; a tuple of names: the tensor goes to each); a
name no row matches is kept as it is. A row may carry a third element, the name of a layout
change in :data:`LAYOUTS`, where the released tensor is stored differently from ours (mmseg's
Swin patch merging concatenates its 2x2 neighbours in ``nn.Unfold``'s order; its MiT fuses q, k
and v in one ``nn.MultiheadAttention`` projection: a tuple of names then gets one part each).
:func:`apply_key_table` applies one table; a loader then checks that no key is left over on
either side.

Families:
* :data:`VIT_ADAPTER_UPERNET` -- czczup/ViT-Adapter's UperNet releases (mmseg 0.x layout:
  ``backbone.``, ``decode_head.``, ``auxiliary_head.``), e.g.
  ``upernet_augreg_adapter_large_512_160k_ade20k.pth.tar`` (model ``upernet_vit_adapter_l``,
  classifier ``linear``: ``decode_head.conv_seg`` is the linear classifier).
* mmsegmentation's own releases (1.x and 0.x name their modules alike), the classifier
  ``linear`` (``decode_head.conv_seg``; OCRNet: ``decode_head.1.conv_seg``):
  :data:`SEGFORMER` (``segformer_b0``..``b5``), :data:`UPERNET_SWIN` (``upernet_swin_t``/``l``),
  :data:`OCRNET_HRNET` (``ocrnet_hrnet_w18``/``w48``), :data:`FCN_RESNET` (``fcn_resnet101``,
  ``fcn_resnet18``), :data:`SEGNEXT` (``segnext_t``). tests/test_mmseg_models.py copies
  mmseg 1.2.2's models into ours through these tables, with no key left over on either side,
  and checks that features and logits then agree.
* :data:`MASK2FORMER` -- mmsegmentation 1.x's Mask2Former releases, e.g.
  ``mask2former_r50_8xb2-160k_ade20k-512x512_20221204_000055-2d1f55f1.pth`` (model
  ``mask2former_r50``, classifier ``linear``, which has no parameters of its own).
"""

from __future__ import annotations

import re

import torch

KeyTable = tuple[tuple, ...]  # rows: (pattern, replacement) or (pattern, replacement, layout)


def _unfold_to_timm_merge(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Swin patch merging: mmseg's ``nn.Unfold(2, stride=2)`` orders the 4C inputs as (c, dy,
    dx); timm's (and the official release's) as (dx, dy, c). Weight (out, 4C) or norm (4C,)."""
    c = t.shape[-1] // 4
    lead = t.shape[:-1]
    t = t.reshape(*lead, c, 2, 2)  # (..., c, dy, dx)
    return (t.permute(*range(len(lead)), -1, -2, -3).reshape(*lead, 4 * c),)


def _split_q_kv(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[q; k; v] fused projection (3C, ...) -> q (C, ...), kv (2C, ...)."""
    c = t.shape[0] // 3
    return t[:c], t[c:]


def _conv1x1_to_linear(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A 1x1 convolution's weight (out, in, 1, 1) as a Linear's (out, in); a bias passes."""
    return (t.flatten(1) if t.ndim == 4 else t,)


# layout name -> the function turning one released tensor into ours (one tensor per name)
LAYOUTS = {
    "unfold_to_timm_merge": _unfold_to_timm_merge,
    "split_q_kv": _split_q_kv,
    "conv1x1_to_linear": _conv1x1_to_linear,
}

# mmseg's UPerHead + auxiliary FCNHead (one conv) -> ours (heads/uper.py, heads/fcn.py)
_UPERNET_HEAD: KeyTable = (
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(.+)", r"head.ppm.stages.\1.1.0.\2"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(.+)", r"head.ppm.stages.\1.1.1.\2"),
    (r"decode_head\.bottleneck\.conv\.(.+)", r"head.ppm_bottleneck.0.\1"),
    (r"decode_head\.bottleneck\.bn\.(.+)", r"head.ppm_bottleneck.1.\1"),
    (r"decode_head\.lateral_convs\.(\d+)\.conv\.(.+)", r"head.lateral.\1.0.\2"),
    (r"decode_head\.lateral_convs\.(\d+)\.bn\.(.+)", r"head.lateral.\1.1.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.conv\.(.+)", r"head.fpn.\1.0.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.bn\.(.+)", r"head.fpn.\1.1.\2"),
    (r"decode_head\.fpn_bottleneck\.conv\.(.+)", r"head.fuse.0.\1"),
    (r"decode_head\.fpn_bottleneck\.bn\.(.+)", r"head.fuse.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"classifier.conv.\1"),
    (r"auxiliary_head\.convs\.(\d+)\.conv\.(.+)", r"head.aux.convs.\1.0.\2"),
    (r"auxiliary_head\.convs\.(\d+)\.bn\.(.+)", r"head.aux.convs.\1.1.\2"),
    (r"auxiliary_head\.conv_seg\.(.+)", r"head.aux.logits.\1"),
)

VIT_ADAPTER_UPERNET: KeyTable = (
    (r"backbone\.blocks\.(\d+)\.gamma1", r"backbone.blocks.\1.ls1.gamma"),
    (r"backbone\.blocks\.(\d+)\.gamma2", r"backbone.blocks.\1.ls2.gamma"),
    (r"(backbone\.interactions\.\d+\.(?:extractor|extra_extractors\.\d+)\.ffn)"
     r"\.dwconv\.dwconv\.(.+)", r"\1.dwconv.\2"),
    *_UPERNET_HEAD,
)

_SWIN_STAGE = r"backbone\.stages\.(\d+)\."
UPERNET_SWIN: KeyTable = (
    (r"backbone\.patch_embed\.projection\.(.+)", r"backbone.model.patch_embed.proj.\1"),
    (r"backbone\.patch_embed\.norm\.(.+)", r"backbone.model.patch_embed.norm.\1"),
    (r"backbone\.norm(\d)\.(.+)", r"backbone.out_norms.\1.\2"),
    (_SWIN_STAGE + r"blocks\.(\d+)\.attn\.w_msa\.relative_position_index", None),  # recomputed
    (_SWIN_STAGE + r"blocks\.(\d+)\.attn\.w_msa\.(.+)",
     r"backbone.model.layers_\1.blocks.\2.attn.\3"),
    (_SWIN_STAGE + r"blocks\.(\d+)\.ffn\.layers\.0\.0\.(.+)",
     r"backbone.model.layers_\1.blocks.\2.mlp.fc1.\3"),
    (_SWIN_STAGE + r"blocks\.(\d+)\.ffn\.layers\.1\.(.+)",
     r"backbone.model.layers_\1.blocks.\2.mlp.fc2.\3"),
    (_SWIN_STAGE + r"blocks\.(\d+)\.(norm\d)\.(.+)", r"backbone.model.layers_\1.blocks.\2.\3.\4"),
    # mmseg merges at the end of stage i, timm at the start of stage i + 1
    *((rf"backbone\.stages\.{i}\.downsample\.(norm|reduction)\.(.+)",
       rf"backbone.model.layers_{i + 1}.downsample.\1.\2", "unfold_to_timm_merge")
      for i in range(3)),
    *_UPERNET_HEAD,
)

# mmseg's CascadeEncoderDecoder: decode_head.0 = FCNHead (the soft object regions: one 1x1
# ConvBNReLU + conv_seg), decode_head.1 = OCRHead -> ours (heads/ocr.py)
_OCR_HEAD: KeyTable = (
    (r"decode_head\.0\.convs\.0\.conv\.(.+)", r"head.soft_regions.0.0.\1"),
    (r"decode_head\.0\.convs\.0\.bn\.(.+)", r"head.soft_regions.0.1.\1"),
    (r"decode_head\.0\.conv_seg\.(.+)", r"head.soft_regions.1.\1"),
    (r"decode_head\.1\.bottleneck\.conv\.(.+)", r"head.pixels.0.\1"),
    (r"decode_head\.1\.bottleneck\.bn\.(.+)", r"head.pixels.1.\1"),
    (r"decode_head\.1\.object_context_block\.(query|key)_project\.(\d)\.conv\.(.+)",
     r"head.object_attention.\1.\2.0.\3"),
    (r"decode_head\.1\.object_context_block\.(query|key)_project\.(\d)\.bn\.(.+)",
     r"head.object_attention.\1.\2.1.\3"),
    (r"decode_head\.1\.object_context_block\.(value|out)_project\.conv\.(.+)",
     r"head.object_attention.\1.0.\2"),
    (r"decode_head\.1\.object_context_block\.(value|out)_project\.bn\.(.+)",
     r"head.object_attention.\1.1.\2"),
    (r"decode_head\.1\.object_context_block\.bottleneck\.conv\.(.+)",
     r"head.object_attention.fuse.0.\1"),
    (r"decode_head\.1\.object_context_block\.bottleneck\.bn\.(.+)",
     r"head.object_attention.fuse.1.\1"),
    (r"decode_head\.1\.conv_seg\.(.+)", r"classifier.conv.\1"),
)

OCRNET_HRNET: KeyTable = (
    (r"backbone\.(.+)", r"backbone.model.\1"),  # mmseg's HRNet names are timm's
    *_OCR_HEAD,
)

_V1C_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6",
             "7": "bn1"}
# mmseg's ResNetV1c + FCNHead + auxiliary FCNHead -> ours (backbones/resnet.py, heads/fcn.py)
FCN_RESNET: KeyTable = (
    *((rf"backbone\.stem\.{i}\.(.+)", rf"backbone.model.{ours}.\1")
      for i, ours in _V1C_STEM.items()),
    (r"backbone\.(layer\d\..+)", r"backbone.model.\1"),  # mmseg's stage names are timm's
    (r"decode_head\.convs\.(\d+)\.conv\.(.+)", r"head.convs.\1.0.\2"),
    (r"decode_head\.convs\.(\d+)\.bn\.(.+)", r"head.convs.\1.1.\2"),
    (r"decode_head\.conv_cat\.conv\.(.+)", r"head.fuse.0.\1"),
    (r"decode_head\.conv_cat\.bn\.(.+)", r"head.fuse.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"classifier.conv.\1"),
    (r"auxiliary_head\.convs\.(\d+)\.conv\.(.+)", r"head.aux.convs.\1.0.\2"),
    (r"auxiliary_head\.convs\.(\d+)\.bn\.(.+)", r"head.aux.convs.\1.1.\2"),
    (r"auxiliary_head\.conv_seg\.(.+)", r"head.aux.logits.\1"),
)

_MIT_BLOCK = r"backbone\.layers\.(\d)\.1\.(\d+)\."
_OUR_MIT_BLOCK = r"backbone.model.stages_\1.blocks.\2."
# mmseg's MixVisionTransformer + SegformerHead -> ours (timm pvt_v2 features, heads/all_mlp.py)
SEGFORMER: KeyTable = (
    (r"backbone\.layers\.0\.0\.projection\.(.+)", r"backbone.model.patch_embed.proj.\1"),
    (r"backbone\.layers\.0\.0\.norm\.(.+)", r"backbone.model.patch_embed.norm.\1"),
    (r"backbone\.layers\.(\d)\.0\.projection\.(.+)",
     r"backbone.model.stages_\1.downsample.proj.\2"),
    (r"backbone\.layers\.(\d)\.0\.norm\.(.+)", r"backbone.model.stages_\1.downsample.norm.\2"),
    (_MIT_BLOCK + r"attn\.attn\.in_proj_(weight|bias)",
     (_OUR_MIT_BLOCK + r"attn.q.\3", _OUR_MIT_BLOCK + r"attn.kv.\3"), "split_q_kv"),
    (_MIT_BLOCK + r"attn\.attn\.out_proj\.(.+)", _OUR_MIT_BLOCK + r"attn.proj.\3"),
    (_MIT_BLOCK + r"ffn\.layers\.0\.(.+)", _OUR_MIT_BLOCK + r"mlp.fc1.\3", "conv1x1_to_linear"),
    (_MIT_BLOCK + r"ffn\.layers\.1\.(.+)", _OUR_MIT_BLOCK + r"mlp.dwconv.\3"),
    (_MIT_BLOCK + r"ffn\.layers\.4\.(.+)", _OUR_MIT_BLOCK + r"mlp.fc2.\3", "conv1x1_to_linear"),
    (_MIT_BLOCK + r"(norm1|norm2|attn\.sr|attn\.norm)\.(.+)", _OUR_MIT_BLOCK + r"\3.\4"),
    (r"backbone\.layers\.(\d)\.2\.(.+)", r"backbone.model.stages_\1.norm.\2"),
    (r"decode_head\.convs\.(\d+)\.conv\.(.+)", r"head.project.\1.0.\2"),
    (r"decode_head\.convs\.(\d+)\.bn\.(.+)", r"head.project.\1.1.\2"),
    (r"decode_head\.fusion_conv\.conv\.(.+)", r"head.fuse.0.\1"),
    (r"decode_head\.fusion_conv\.bn\.(.+)", r"head.fuse.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"classifier.conv.\1"),
)

# mmseg's MSCAN (names already ours: backbones/mscan.py) + LightHamHead -> ours (heads/light_ham.py)
SEGNEXT: KeyTable = (
    (r"decode_head\.(squeeze|align)\.conv\.(.+)", r"head.\1.0.\2"),
    (r"decode_head\.(squeeze|align)\.gn\.(.+)", r"head.\1.1.\2"),
    (r"decode_head\.hamburger\.ham_in\.conv\.(.+)", r"head.hamburger.ham_in.\1"),
    (r"decode_head\.hamburger\.ham_out\.conv\.(.+)", r"head.hamburger.ham_out.0.\1"),
    (r"decode_head\.hamburger\.ham_out\.gn\.(.+)", r"head.hamburger.ham_out.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"classifier.conv.\1"),
)

_PIXEL_DECODER = r"decode_head\.pixel_decoder\."
_DECODER_LAYER = r"decode_head\.transformer_decoder\.layers\.(\d+)\."
MASK2FORMER: KeyTable = (
    (r"backbone\.(.+)", r"backbone.model.\1"),  # mmseg's ResNet names are timm's
    (_PIXEL_DECODER + r"input_convs\.(\d+)\.conv\.(.+)", r"head.pixel_decoder.input_proj.\1.0.\2"),
    (_PIXEL_DECODER + r"input_convs\.(\d+)\.gn\.(.+)", r"head.pixel_decoder.input_proj.\1.1.\2"),
    (_PIXEL_DECODER + r"encoder\.layers\.(\d+)\.self_attn\.(.+)",
     r"head.pixel_decoder.encoder.\1.self_attn.\2"),
    (_PIXEL_DECODER + r"encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(.+)",
     r"head.pixel_decoder.encoder.\1.ffn.fc1.\2"),
    (_PIXEL_DECODER + r"encoder\.layers\.(\d+)\.ffn\.layers\.1\.(.+)",
     r"head.pixel_decoder.encoder.\1.ffn.fc2.\2"),
    (_PIXEL_DECODER + r"encoder\.layers\.(\d+)\.norms\.0\.(.+)",
     r"head.pixel_decoder.encoder.\1.norm1.\2"),
    (_PIXEL_DECODER + r"encoder\.layers\.(\d+)\.norms\.1\.(.+)",
     r"head.pixel_decoder.encoder.\1.norm2.\2"),
    (_PIXEL_DECODER + r"level_encoding\.weight", r"head.pixel_decoder.level_embed"),
    (_PIXEL_DECODER + r"lateral_convs\.0\.conv\.(.+)", r"head.pixel_decoder.lateral.0.\1"),
    (_PIXEL_DECODER + r"lateral_convs\.0\.gn\.(.+)", r"head.pixel_decoder.lateral.1.\1"),
    (_PIXEL_DECODER + r"output_convs\.0\.conv\.(.+)", r"head.pixel_decoder.output.0.\1"),
    (_PIXEL_DECODER + r"output_convs\.0\.gn\.(.+)", r"head.pixel_decoder.output.1.\1"),
    (_PIXEL_DECODER + r"mask_feature\.(.+)", r"head.pixel_decoder.mask_proj.\1"),
    (_DECODER_LAYER + r"cross_attn\.attn\.(.+)", r"head.decoder.layers.\1.cross_attn.\2"),
    (_DECODER_LAYER + r"self_attn\.attn\.(.+)", r"head.decoder.layers.\1.self_attn.\2"),
    (_DECODER_LAYER + r"ffn\.layers\.0\.0\.(.+)", r"head.decoder.layers.\1.fc1.\2"),
    (_DECODER_LAYER + r"ffn\.layers\.1\.(.+)", r"head.decoder.layers.\1.fc2.\2"),
    (_DECODER_LAYER + r"norms\.0\.(.+)", r"head.decoder.layers.\1.cross_norm.\2"),
    (_DECODER_LAYER + r"norms\.1\.(.+)", r"head.decoder.layers.\1.self_norm.\2"),
    (_DECODER_LAYER + r"norms\.2\.(.+)", r"head.decoder.layers.\1.ffn_norm.\2"),
    (r"decode_head\.transformer_decoder\.post_norm\.(.+)", r"head.decoder.post_norm.\1"),
    (r"decode_head\.(query_embed|query_feat|level_embed)\.(.+)", r"head.decoder.\1.\2"),
    (r"decode_head\.cls_embed\.(.+)", r"head.decoder.class_embed.\1"),
    (r"decode_head\.mask_embed\.(.+)", r"head.decoder.mask_embed.\1"),
)

# model name -> the table of its released whole-segmentor checkpoints
MODEL_KEY_TABLES: dict[str, KeyTable] = {
    **{f"segformer_b{i}": SEGFORMER for i in range(6)},
    "upernet_swin_t": UPERNET_SWIN,
    "upernet_swin_l": UPERNET_SWIN,
    "ocrnet_hrnet_w18": OCRNET_HRNET,
    "fcn_resnet18": FCN_RESNET,
    "segnext_t": SEGNEXT,
    "fcn_resnet101": FCN_RESNET,
    "ocrnet_hrnet_w48": OCRNET_HRNET,
    "upernet_vit_adapter_l": VIT_ADAPTER_UPERNET,
    "mask2former_r50": MASK2FORMER,
}


def _match(name: str, table: KeyTable) -> tuple[tuple[str, ...], str | None]:
    """One released name -> (our names, layout name or None); () when dropped."""
    for row in table:
        pattern, replacement = row[0], row[1]
        match = re.fullmatch(pattern, name)
        if match:
            if replacement is None:
                return (), None
            names = (replacement,) if isinstance(replacement, str) else tuple(replacement)
            return tuple(match.expand(r) for r in names), (row[2] if len(row) > 2 else None)
    return (name,), None


def rename_key(name: str, table: KeyTable) -> str | None:
    """One released name -> ours (None: dropped; the first name where a row has several)."""
    names, _ = _match(name, table)
    return names[0] if names else None


def apply_key_table(state: dict[str, torch.Tensor], table: KeyTable) -> dict[str, torch.Tensor]:
    """``state`` renamed by ``table`` (dropped names left out, layouts changed where a row says
    so: the only place a released tensor's layout is adapted to ours)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        names, layout = _match(name, table)
        if not names:
            continue
        tensors = (tensor,) * len(names) if layout is None else LAYOUTS[layout](tensor)
        if len(tensors) != len(names):
            raise ValueError(f"key table row for {name!r}: {len(names)} names for "
                             f"{len(tensors)} tensors (layout {layout})")
        out.update(zip(names, tensors))
    return out
