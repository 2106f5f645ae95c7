"""The linear classifier's 1x1 convolution as a matrix product, and its folded channel dropout:
both must give what ``nn.Conv2d`` after ``nn.Dropout2d`` gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssaseg.models.classifiers.linear import LinearClassifier, PointwiseConv2d


def pair(channels=6, classes=4, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(channels, classes, 1, bias=bias).double()
    pointwise = PointwiseConv2d(channels, classes, bias=bias).double()
    pointwise.load_state_dict(conv.state_dict())
    return conv, pointwise


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pointwise_conv_matches_conv2d_values_and_gradients(bias, layout):
    conv, pointwise = pair(bias=bias)
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    outs, grads = [], []
    for module in (conv, pointwise):
        xx = x.clone().requires_grad_()
        out = module(xx)
        out.backward(grad)
        outs.append(out)
        grads.append([xx.grad, *(p.grad for p in module.parameters())])
    torch.testing.assert_close(outs[1], outs[0])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want)


def test_channel_scale_equals_scaling_the_input():
    conv, pointwise = pair()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(2, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    got = pointwise(x, channel_scale=scale)
    want = conv(x * scale)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got.square().sum(), [x, scale])
    g_want = torch.autograd.grad(want.square().sum(), [x, scale])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def test_state_dict_keys_are_those_of_a_conv():
    conv, pointwise = pair()
    assert list(pointwise.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    assert isinstance(pointwise, nn.Conv2d)  # FLOP counters that hook nn.Conv2d still see it


def test_training_dropout_is_dropout2d_on_the_feature_with_the_same_random_draw():
    clf = LinearClassifier(8, 5, dropout=0.5).train()
    feature = torch.randn(4, 8, 6, 6)
    labels = torch.randint(5, (4, 6, 6))
    torch.manual_seed(3)
    got = clf(feature, labels)
    torch.manual_seed(3)
    dropped = F.dropout2d(feature, 0.5, training=True)
    want = F.conv2d(dropped, clf.conv.weight, clf.conv.bias)
    torch.testing.assert_close(got.logits, want)
    assert not torch.equal(got.logits, F.conv2d(feature, clf.conv.weight, clf.conv.bias))
    # eval: no dropout
    clf.eval()
    torch.testing.assert_close(clf(feature).logits,
                               F.conv2d(feature, clf.conv.weight, clf.conv.bias))
