"""The mmcv-convention FLOP counter: hand-computed counts on small modules, meta device."""

from __future__ import annotations

import torch
from torch import nn

from ssaseg.engine.flops import count_flops_full, count_flops_mmcv


class _Attention(nn.Module):
    """A linear layer and a matmul: mmcv sees the first, not the second."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):  # x (B, N, 8)
        q = self.proj(x)
        return q @ q.transpose(1, 2)


def test_conv_norm_act_pool_upsample_counts() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 3*3*3*4 per position + 4 bias, at 8x8
        nn.BatchNorm2d(4),  # affine: 2 * numel
        nn.ReLU(),  # numel
        nn.GELU(),  # not counted by mmcv
        nn.MaxPool2d(2),  # numel of the input
        nn.Upsample(scale_factor=2),  # numel of the output
        nn.Conv2d(4, 4, 1, groups=2, bias=False),  # 1*4*2 per position
    )
    x = torch.randn(2, 3, 8, 8)
    expected = (108 + 4) * 64 + 2 * 256 + 256 + 256 + 256 + 8 * 64
    assert count_flops_mmcv(model, x) == expected  # per image, batch of 2


def test_linear_counted_matmul_not() -> None:
    x = torch.randn(1, 5, 8)
    assert count_flops_mmcv(_Attention(), x) == 5 * 8 * 8
    # the full counter sees both, two FLOPs per multiply-add
    assert count_flops_full(_Attention(), x) == 2 * (5 * 8 * 8 + 5 * 8 * 5)


def test_uncounted_patterns_and_meta_device() -> None:
    with torch.device("meta"):
        model = nn.Sequential(_Attention(), nn.LayerNorm(5))
        x = torch.empty(1, 5, 8)
    assert count_flops_mmcv(model, x) == 5 * 8 * 8 + 2 * 25
    assert count_flops_mmcv(model, x, uncounted=("0.proj",)) == 2 * 25


def test_count_params_leaves_out_training_only_classifier_parts() -> None:
    from ssaseg.engine.flops import count_params

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = nn.Linear(4, 4)  # 20
            self.teacher = nn.Linear(4, 4)  # 20, training only

        def inference_parameters(self):
            return self.student.parameters()

    model = nn.Module()
    model.backbone = nn.Linear(2, 3)  # 9
    model.classifier = Classifier()
    assert count_params(model) == 29
    assert count_params(model, deployed=False) == 49


def test_sync_bn_and_conv_linears_are_counted_as_the_reference_is() -> None:
    """mmcv matches types exactly (SyncBN not counted) and counts a 1x1 conv's bias, not a
    Linear's: patterns make our plain modules count as the reference's."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
        x = torch.empty(1, 3, 8, 8)
        mlp = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6))
        tokens = torch.empty(2, 5, 8)
    conv = 3 * 4 * 64
    assert count_flops_mmcv(model, x) == conv + 2 * 4 * 64
    assert count_flops_mmcv(model, x, sync_bn=("1",)) == conv
    assert count_flops_mmcv(model, x, sync_bn=("0",)) == conv + 2 * 4 * 64  # a conv is no BN
    with torch.device("meta"):
        synced = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.SyncBatchNorm(4))
    assert count_flops_mmcv(synced, x) == conv  # a real SyncBN: never counted
    assert count_flops_mmcv(mlp, tokens) == 5 * 8 * 6 + 2 * 5 * 6
    assert count_flops_mmcv(mlp, tokens, conv_linears=("0",)) == 5 * 8 * 6 + 5 * 6 + 2 * 5 * 6
