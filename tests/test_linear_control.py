"""The capacity-matched linear control: SSA's parameters and FLOPs (within 5 %), a linear
classifier at initialisation, trainable, buildable as a variant."""

from __future__ import annotations

import pytest
import torch

from ssaseg.engine.flops import count_flops_full
from ssaseg.models.classifiers import build_classifier
from ssaseg.models.classifiers.linear_control import LinearControlClassifier, ssa_student_params


def _params(module) -> int:
    params = module.inference_parameters() if hasattr(module, "inference_parameters") else \
        list(module.parameters())
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("channels, classes, size", [(256, 10, 16), (64, 19, 32),
                                                      (256, 150, 128)])
def test_params_and_flops_match_ssa_within_5_percent(channels, classes, size):
    ssa = build_classifier("ssa", channels, classes, 255).eval()
    control = build_classifier("linear_control", channels, classes, 255).eval()
    assert _params(ssa) == ssa_student_params(channels, classes)
    assert abs(_params(control) / _params(ssa) - 1) < 0.05
    feature = torch.randn(1, channels, size, size)
    ratio = count_flops_full(control, feature) / count_flops_full(ssa, feature)
    assert abs(ratio - 1) < 0.05, ratio


def test_starts_as_the_linear_classifier_and_trains():
    torch.manual_seed(0)
    clf = LinearControlClassifier(32, 5, dropout=0.0).eval()
    feature = torch.randn(2, 32, 8, 8)
    linear = torch.einsum("bchw,kc->bkhw", feature, clf.weight) + clf.bias[:, None, None]
    assert torch.allclose(clf(feature).logits, linear, atol=1e-5)
    clf.train()
    labels = torch.randint(0, 5, (2, 32, 32))
    out = clf(feature, labels)
    out.losses["ce"].backward()
    assert set(out.losses) == {"ce"}
    assert clf.proj.weight.grad.abs().sum() > 0 and clf.down.weight.grad is not None


def test_a_variant_name_builds_its_classifier():
    clf = build_classifier("ssa-no_dice", 16, 3, 255, dice_weight=0.0)
    assert type(clf).__name__ == "SSAClassifier" and clf.weights["dice"] == 0.0
    with pytest.raises(KeyError, match="unknown classifier 'svm'"):
        build_classifier("svm-x", 16, 3, 255)
