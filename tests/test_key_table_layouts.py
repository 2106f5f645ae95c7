"""The layout changes a key table may apply (segmentor_key_tables.LAYOUTS), checked without
mmseg: each converted tensor computes, in our module, what the released one computes in the
released module's layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssaseg.models.backbones.timm_backbone import timm
from ssaseg.models.segmentor_key_tables import apply_key_table


def test_swin_patch_merging_from_unfold_order() -> None:
    """mmseg's PatchMerging: nn.Unfold(2, stride 2) -> LayerNorm(4C) -> Linear(4C, 2C); timm's:
    the 2x2 neighbours concatenated in its own order. Same output after the reorder."""
    torch.manual_seed(0)
    c, h, w = 3, 4, 6
    x = torch.randn(2, h, w, c)  # (B, H, W, C)
    weight, norm_w, norm_b = torch.randn(2 * c, 4 * c), torch.rand(4 * c) + 0.5, torch.randn(4 * c)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), 2, stride=2).transpose(1, 2)  # (B, hw/4, 4C)
    expected = F.layer_norm(unfolded, (4 * c,), norm_w, norm_b) @ weight.T
    table = ((r"merge\.norm\.(.+)", r"norm.\1", "unfold_to_timm_merge"),
             (r"merge\.reduction\.(.+)", r"reduction.\1", "unfold_to_timm_merge"))
    state = apply_key_table({"merge.norm.weight": norm_w, "merge.norm.bias": norm_b,
                             "merge.reduction.weight": weight}, table)
    merge = timm.models.swin_transformer.PatchMerging(c)
    merge.load_state_dict(state)
    with torch.no_grad():
        ours = merge(x)  # (B, H/2, W/2, 2C)
    assert torch.allclose(ours.reshape(2, -1, 2 * c), expected, atol=1e-5)


def test_fused_q_kv_split_and_1x1_conv_as_linear() -> None:
    torch.manual_seed(0)
    c = 4
    in_proj, conv = torch.randn(3 * c, c), torch.randn(5, c, 1, 1)
    table = ((r"attn\.in_proj_weight", (r"q.weight", r"kv.weight"), "split_q_kv"),
             (r"ffn\.0\.weight", r"fc1.weight", "conv1x1_to_linear"),
             (r"ffn\.0\.bias", r"fc1.bias", "conv1x1_to_linear"),
             (r"dropped", None))
    bias = torch.randn(5)
    state = apply_key_table({"attn.in_proj_weight": in_proj, "ffn.0.weight": conv,
                             "ffn.0.bias": bias, "dropped": torch.zeros(1), "kept": bias}, table)
    assert sorted(state) == ["fc1.bias", "fc1.weight", "kept", "kv.weight", "q.weight"]
    x = torch.randn(7, c)
    assert torch.allclose(torch.cat([x @ state["q.weight"].T, x @ state["kv.weight"].T], 1),
                          x @ in_proj.T)
    assert torch.allclose(F.linear(x, state["fc1.weight"], state["fc1.bias"]),
                          F.conv2d(x[:, :, None, None], conv, bias).flatten(1), atol=1e-6)
    # without a layout, a tuple of names copies the tensor to each
    assert apply_key_table({"a": bias}, ((r"a", ("b", "c")),)).keys() == {"b", "c"}
    with pytest.raises(ValueError, match="3 names for 2 tensors"):
        apply_key_table({"a": in_proj}, ((r"a", ("b", "c", "d"), "split_q_kv"),))
