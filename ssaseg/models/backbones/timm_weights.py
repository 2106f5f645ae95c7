"""Checkpoint key names of the official backbone releases -> timm's names.

Each converter takes a flat state dict and returns it in the naming (and tensor layout) of the
timm model, or None when the checkpoint is not in its format. :func:`to_timm` tries them in
turn; a checkpoint already in timm's naming passes through unchanged.

Formats handled:
* MiT (SegFormer's encoder), official release (``patch_embed1.proj``, ``block1.0.attn.q``) ->
  timm ``pvt_v2_b*`` (timm's own converter, the naming is PVTv2's);
* MiT converted by mmsegmentation (``layers.0.1.0.attn.attn.in_proj_weight``; q and kv fused
  into one MultiheadAttention projection, MLP weights stored as 1x1 convolutions) -> timm;
* Swin, official release (``layers.0.downsample`` at the end of a stage) -> timm's converter;
* Swin converted by mmsegmentation (``stages.0.blocks.0.attn.w_msa.qkv``; patch merging in
  ``nn.Unfold``'s channel order) -> timm, by the backbone rows of
  :data:`ssaseg.models.segmentor_key_tables.UPERNET_SWIN`'s kind;
* EfficientFormerV2, official release (``network.N``, ``patch_embed.N``) -> timm;
* ResNet-V1c as released by OpenMMLab (``stem.N``: three 3x3 convolutions) -> timm ``resnet*c``;
* HRNet (ImageNet classification release): the names are already timm's.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ssaseg.models.backbones.timm_backbone import timm  # noqa: F401  (CPU-torch fix first)

State = dict[str, torch.Tensor]


def _mit_mmseg(state: State, model: nn.Module) -> State | None:
    if not any(k.startswith("layers.0.0.projection") for k in state):
        return None
    out: State = {}
    for key, value in state.items():
        m = re.match(r"layers\.(\d+)\.(\d+)\.(.*)", key)
        if m is None:
            out[key] = value  # left for the key check to report
            continue
        stage, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if part == 0:  # overlapping patch embedding
            prefix = "patch_embed" if stage == 0 else f"stages.{stage}.downsample"
            out[f"{prefix}.{rest.replace('projection.', 'proj.')}"] = value
        elif part == 2:  # the stage's final LayerNorm
            out[f"stages.{stage}.norm.{rest}"] = value
        else:
            block, sub = rest.split(".", 1)
            prefix = f"stages.{stage}.blocks.{block}"
            if sub.startswith("attn.attn.in_proj_"):  # [q; kv] fused by MultiheadAttention
                kind = sub.rsplit("_", 1)[1]  # weight | bias
                dim = value.shape[0] // 3
                out[f"{prefix}.attn.q.{kind}"] = value[:dim]
                out[f"{prefix}.attn.kv.{kind}"] = value[dim:]
            elif sub.startswith("attn.attn.out_proj."):
                out[f"{prefix}.attn.proj.{sub.rsplit('.', 1)[1]}"] = value
            elif sub.startswith("ffn.layers."):
                index, kind = sub[len("ffn.layers."):].split(".")
                name = {"0": "fc1", "1": "dwconv", "4": "fc2"}.get(index, f"ffn_{index}")
                if name in ("fc1", "fc2") and kind == "weight":
                    value = value.flatten(1)  # 1x1 conv -> linear
                out[f"{prefix}.mlp.{name}.{kind}"] = value
            else:  # norm1, norm2, attn.sr, attn.norm
                out[f"{prefix}.{sub}"] = value
    return out


def _mit_official(state: State, model: nn.Module) -> State | None:
    if "patch_embed1.proj.weight" not in state:
        return None
    from timm.models.pvt_v2 import checkpoint_filter_fn

    return checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("head.")},
                                model)


def _swin_official(state: State, model: nn.Module) -> State | None:
    if "layers.0.blocks.0.attn.qkv.weight" not in state:
        return None
    from timm.models.swin_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, model)


_SWIN_MMSEG_STAGE = r"stages\.(\d+)\."
_SWIN_MMSEG = (
    (r"patch_embed\.projection\.(.+)", r"patch_embed.proj.\1"),
    (_SWIN_MMSEG_STAGE + r"blocks\.(\d+)\.attn\.w_msa\.relative_position_index", None),
    (_SWIN_MMSEG_STAGE + r"blocks\.(\d+)\.attn\.w_msa\.(.+)", r"layers.\1.blocks.\2.attn.\3"),
    (_SWIN_MMSEG_STAGE + r"blocks\.(\d+)\.ffn\.layers\.0\.0\.(.+)",
     r"layers.\1.blocks.\2.mlp.fc1.\3"),
    (_SWIN_MMSEG_STAGE + r"blocks\.(\d+)\.ffn\.layers\.1\.(.+)", r"layers.\1.blocks.\2.mlp.fc2.\3"),
    (_SWIN_MMSEG_STAGE + r"blocks\.(\d+)\.(.+)", r"layers.\1.blocks.\2.\3"),  # norm1, norm2
    # mmseg merges at the end of stage i, timm at the start of stage i + 1
    *((rf"stages\.{i}\.downsample\.(norm|reduction)\.(.+)", rf"layers.{i + 1}.downsample.\1.\2",
       "unfold_to_timm_merge") for i in range(3)),
)


def _swin_mmseg(state: State, model: nn.Module) -> State | None:
    if "stages.0.blocks.0.attn.w_msa.qkv.weight" not in state:
        return None
    from ssaseg.models.segmentor_key_tables import apply_key_table

    return apply_key_table(state, _SWIN_MMSEG)


_EFV2_PARTS = [
    (r"^patch_embed\.0\.", "stem.conv1.conv."), (r"^patch_embed\.1\.", "stem.conv1.bn."),
    (r"^patch_embed\.3\.", "stem.conv2.conv."), (r"^patch_embed\.4\.", "stem.conv2.bn."),
    (r"\.mlp\.fc1\.", ".mlp.fc1.conv."), (r"\.mlp\.norm1\.", ".mlp.fc1.bn."),
    (r"\.mlp\.mid\.", ".mlp.mid.conv."), (r"\.mlp\.mid_norm\.", ".mlp.mid.bn."),
    (r"\.mlp\.fc2\.", ".mlp.fc2.conv."), (r"\.mlp\.norm2\.", ".mlp.fc2.bn."),
    (r"\.layer_scale_1$", ".ls1.gamma"), (r"\.layer_scale_2$", ".ls2.gamma"),
    (r"\.(q|k|v|v_local|stride_conv)\.0\.", r".\1.conv."),
    (r"\.(q|k|v|v_local|stride_conv)\.1\.", r".\1.bn."),
    (r"\.q\.proj\.0\.", ".q.proj.conv."), (r"\.q\.proj\.1\.", ".q.proj.bn."),
    (r"\.q\.local\.0\.", ".q.local."),
    (r"\.proj\.1\.", ".proj.conv."), (r"\.proj\.2\.", ".proj.bn."),
    (r"^dist_head\.", "head_dist."),
]


def _efficientformerv2_official(state: State, model: nn.Module) -> State | None:
    if "patch_embed.0.weight" not in state or not any(k.startswith("network.") for k in state):
        return None
    out: State = {}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):
            continue  # recomputed by timm
        m = re.match(r"network\.(\d+)\.(.*)", key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            if index % 2 == 0:  # a stage's blocks
                key = f"stages.{index // 2}.blocks.{rest}"
            else:  # the downsampling embedding in front of the next stage
                rest = re.sub(r"^(proj|conv)\.", "conv.conv.", rest)
                rest = re.sub(r"^(norm|bn)\.", "conv.bn.", rest)
                key = f"stages.{index // 2 + 1}.downsample.{rest}"
        for pattern, repl in _EFV2_PARTS:
            key = re.sub(pattern, repl, key)
        if key.endswith(("ls1.gamma", "ls2.gamma")):
            value = value.flatten()
        out[key] = value
    return out


_V1C_STEM = {"stem.0": "conv1.0", "stem.1": "conv1.1", "stem.3": "conv1.3", "stem.4": "conv1.4",
             "stem.6": "conv1.6", "stem.7": "bn1"}


def _resnet_v1c_mmcv(state: State, model: nn.Module) -> State | None:
    if "stem.0.weight" not in state:
        return None
    out: State = {}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        index, _, rest2 = rest.partition(".")
        new = _V1C_STEM.get(f"{prefix}.{index}")
        out[f"{new}.{rest2}" if new else key] = value
    return out


CONVERTERS = (_mit_mmseg, _mit_official, _swin_official, _swin_mmseg,
              _efficientformerv2_official, _resnet_v1c_mmcv)


def to_timm(state: State, full_model: nn.Module) -> State:
    """``state`` in the naming of ``full_model`` (a timm model with its classifier)."""
    for converter in CONVERTERS:
        converted = converter(state, full_model)
        if converted is not None:
            state = converted
            break
    return _resize_position_tables(state, full_model)


def _resize_position_tables(state: State, model: nn.Module) -> State:
    """EfficientFormerV2's bias tables follow the training resolution (224 for ImageNet); resize
    them to the model's (e.g. 512 for segmentation) over the grid of offsets."""
    from ssaseg.models.backbones.timm_dynamic import resize_offset_table

    own = model.state_dict()
    for key, value in list(state.items()):
        if not key.endswith("attention_biases") or key not in own:
            continue
        if own[key].shape == value.shape:
            continue
        module = model.get_submodule(key.rsplit(".", 1)[0])
        side = round(value.shape[1] ** 0.5)
        if side * side != value.shape[1]:
            continue  # not a square table: leave it for the shape check to report
        state[key] = resize_offset_table(value, (side, side), tuple(module.resolution))
    return state
