"""Every timm-backbone baseline x every registered classifier: forward, losses, backward, and
``predict`` at the label's size, on a tiny input.

The large variants (Swin-L, HRNet-W48 with OCR or the plain head, MiT-B1..B5, EfficientFormerV2-L) share their code path
with a smaller sibling that runs for real here; they are built and run on the meta device
(shapes only), and their sizes are checked in test_model_sizes.py.
"""

from __future__ import annotations

import pytest
import torch

from ssaseg.models.classifiers import CLASSIFIERS
from ssaseg.models.zoo import build_segmentor
from tests.conftest import tiny_batch

NUM_CLASSES = 5
# run for real on the CPU
REAL = ["segformer_b0", "upernet_swin_t", "ocrnet_hrnet_w18", "fcn_resnet101", "cgrseg_b",
        "fcn_resnet18", "segnext_t", "seaformer_b", "seaformer_l", "afformer_b"]
# built on the meta device only: same code as their REAL sibling, too slow on 2 CPU cores
META = ["segformer_b1", "segformer_b2", "segformer_b3", "segformer_b4", "segformer_b5",
        "upernet_swin_l", "ocrnet_hrnet_w48", "hrnet_w48", "cgrseg_l"]
WITH_AUX = {"upernet_swin_t", "ocrnet_hrnet_w18", "fcn_resnet101", "fcn_resnet18", "cgrseg_b"}


def _batch(h: int = 64, w: int = 64):
    return tiny_batch(NUM_CLASSES, h, w)


@pytest.mark.parametrize("classifier", sorted(CLASSIFIERS))
@pytest.mark.parametrize("model", REAL)
def test_forward_backward_predict(model: str, classifier: str) -> None:
    torch.manual_seed(0)
    seg = build_segmentor(model, classifier, num_classes=NUM_CLASSES)
    images, labels = _batch()
    seg.train()
    out = seg(images, labels)
    assert out.losses, "training forward returned no loss"
    if model in WITH_AUX:
        assert "aux_ce" in out.losses
    loss = out.total_loss
    assert torch.isfinite(loss)
    loss.backward()
    # every backbone and head parameter takes part (no dead module, no detached branch)
    unused = [name for name, p in seg.named_parameters()
              if not name.startswith("classifier.") and p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"
    for part in (seg.backbone, seg.head, seg.classifier):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient in {part}"
    seg.eval()
    logits = seg.predict(images)
    assert logits.shape == (2, NUM_CLASSES, *labels.shape[-2:])
    assert logits.argmax(1).shape == labels.shape
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("model", ["upernet_swin_t", "ocrnet_hrnet_w18", "cgrseg_b"])
def test_whole_image_of_any_size(model: str) -> None:
    """Backbones built for one size (Swin windows, EfficientFormerV2's attention, HRNet's
    exact-factor fusions) evaluate whole images whose sides are not multiples of 32."""
    seg = build_segmentor(model, "linear", num_classes=NUM_CLASSES).eval()
    images = torch.randn(1, 3, 75, 106)
    assert seg.predict(images).shape == (1, NUM_CLASSES, 75, 106)


@pytest.mark.parametrize("model", META)
def test_large_variants_build_and_run_on_meta(model: str) -> None:
    with torch.device("meta"):
        seg = build_segmentor(model, "linear", num_classes=NUM_CLASSES)
        images = torch.empty(1, 3, 64, 96)
    seg.eval()
    with torch.no_grad():
        logits = seg.predict(images)
    assert logits.shape == (1, NUM_CLASSES, 64, 96)


def test_dynamic_efficientformerv2_matches_timm_at_its_size() -> None:
    """At the construction size the any-size attention computes exactly timm's forward."""
    from ssaseg.models.backbones.timm_backbone import TimmBackbone

    kwargs = dict(img_size=64, out_indices=(1, 2, 3))
    torch.manual_seed(0)
    fixed = TimmBackbone("efficientformerv2_s0", **kwargs).eval()
    dynamic = TimmBackbone("efficientformerv2_s0", dynamic_size=True, **kwargs).eval()
    with torch.no_grad():
        for p in fixed.parameters():
            p.normal_(0, 0.1)  # attention biases start at zero: make them matter
        dynamic.load_state_dict(fixed.state_dict())
        x = torch.randn(1, 3, 64, 64)
        for a, b in zip(fixed(x), dynamic(x)):
            torch.testing.assert_close(a, b)
        # and at another size it runs (where timm's fixed-size attention cannot)
        assert [f.shape[-1] for f in dynamic(torch.randn(1, 3, 64, 128))] == [16, 8, 4]


def test_freeze_bn_stats_keeps_running_statistics() -> None:
    seg = build_segmentor("cgrseg_b", "linear", num_classes=NUM_CLASSES).train()
    bn = next(m for m in seg.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    seg(*_batch())
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert any(m.training for m in seg.head.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_hrnet_concat_head_on_tiny_features() -> None:
    """ProtoSeg's HRNet-W48 head (hrnet_w48 runs on meta above): four branches at strides
    4..32 -> concatenated at the finest (sum of widths) -> 3x3 conv + BN + ReLU, one feature."""
    from ssaseg.models.heads import HEADS

    widths, strides = [4, 8, 16, 32], [4, 8, 16, 32]
    head = HEADS["hrnet_concat"](in_channels=widths, in_strides=strides, num_classes=NUM_CLASSES)
    assert head.out_channels == sum(widths)
    features = [torch.randn(2, c, 64 // s, 96 // s) for c, s in zip(widths, strides)]
    out = head.train()(features)
    assert out.aux_logits is None
    assert out.feature.shape == (2, sum(widths), 16, 24)
    assert (out.feature >= 0).all()  # ends at the ReLU: no classification in the head
    out.feature.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
