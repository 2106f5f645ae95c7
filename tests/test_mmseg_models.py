"""Our baselines against mmsegmentation 1.2.2's own models (the oracle), on identical weights.

Needs the optional extra ``conformance`` (mmsegmentation 1.2.2, mmengine, mmcv-lite); skipped
without it. For every baseline mmseg has, mmseg's model is built from its own config
(``mmseg/.mim/configs``), its BatchNorm statistics and norm affines randomised, its state dict
saved as an mmseg 1.x file (``{"meta": ..., "state_dict": ...}``) and loaded into ours by the
released-checkpoint loader (``ssaseg.models.segmentor_checkpoint.load_released_checkpoint``:
the classifier rows and the model's ``segmentor_key_tables.MODEL_KEY_TABLES`` table), which
leaves no key over on either side or fails. In eval mode, on one random image (small, odd sizes: Swin's at 118 x 90 pads the image
to the patch size, every stage to whole windows, and shifts the last), the backbone stage
features and the logits (before the resize to the input, i.e. mmseg's ``_forward``) must agree
within 1e-3; the measured maxima are printed (``pytest -s``) and were, on 2026-12-03 (CPU, fp32,
torch 2.13, timm 1.0.31, 19 classes):

=================  ===========  ==================  ================
model              input        max |feature diff|  max |logit diff|
=================  ===========  ==================  ================
segformer_b0       72 x 100     5.8e-5              4.5e-5
upernet_swin_t     118 x 90     4.7e-6              9.7e-6
ocrnet_hrnet_w18   72 x 100     0                   0
fcn_resnet101      40 x 56      0                   0
segnext_t          72 x 100     0                   0
fcn_resnet18       72 x 100     0                   0
=================  ===========  ==================  ================

The large variants (SegFormer-B5, UperNet-Swin-L, OCRNet-HRNet-W48) are built on the meta device:
the same parameter count, and the key table maps every mmseg name onto ours with equal shapes.
For all of them, our mmcv-convention FLOP count (``count_flops_mmcv`` with the model's
``ModelSpec.mmcv_counting``) equals mmcv 2.1.0's ``get_model_complexity_info`` on mmseg's model.
A Swin backbone checkpoint in mmseg's naming loads into ours and gives mmseg's features.

At 512 x 512 with 150 classes (the same procedure, run once by hand on 2026-12-03) the max logit
differences were: SegFormer-B0 3.1e-5, B5 6.9e-5, UperNet-Swin-T 1.5e-5, Swin-L 2.0e-5,
OCRNet-HRNet-W18 0, W48 0, FCN-R101-D8 0, FCN-R18-D8 0, SegNeXt-T 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ssaseg.engine.flops import count_flops_mmcv
from ssaseg.models.segmentor_checkpoint import load_released_checkpoint, map_released_state
from ssaseg.models.zoo import MODELS, build_segmentor
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops
from tests.mmcv_stub import stub_mmcv_ext

mmseg = pytest.importorskip("mmseg",
                            reason="needs the optional extra `conformance` (mmsegmentation)")
# mmseg's and mmcv-lite's deprecation and missing-op notices
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CONFIGS = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
NUM_CLASSES = 19
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Case:
    model: str
    config: str  # relative to mmseg's configs
    size: tuple[int, int] = (72, 100)  # (h, w) of the random image


CASES = [
    Case("segformer_b0", "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py"),
    Case("upernet_swin_t",
         "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py", (118, 90)),
    Case("ocrnet_hrnet_w18", "ocrnet/ocrnet_hr18_4xb4-80k_ade20k-512x512.py"),
    Case("fcn_resnet101", "fcn/fcn_r101-d8_4xb4-80k_ade20k-512x512.py", (40, 56)),
    Case("segnext_t", "segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py"),
    Case("fcn_resnet18", "fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py"),
]
LARGE = [
    Case("segformer_b5", "segformer/segformer_mit-b5_8xb2-160k_ade20k-512x512.py"),
    Case("upernet_swin_l",
         "swin/swin-large-patch4-window7-in22k-pre_upernet_8xb2-160k_ade20k-512x512.py"),
    Case("ocrnet_hrnet_w48", "ocrnet/ocrnet_hr48_4xb4-80k_ade20k-512x512.py"),
]


def _set_num_classes(node) -> None:
    if isinstance(node, dict):
        if "num_classes" in node:
            node["num_classes"] = NUM_CLASSES
        for value in node.values():
            _set_num_classes(value)
    elif isinstance(node, list):
        for value in node:
            _set_num_classes(value)


def import_mmseg_models():
    """mmseg's model registry, every module registered, with ``mmseg`` as the default scope."""
    declare_missing_torchvision_ops()
    stub_mmcv_ext()
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as MMSEG_MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    init_default_scope("mmseg")
    return MMSEG_MODELS


def build_mmseg(case: Case, device: str = "cpu") -> nn.Module:
    """mmseg's segmentor from its config, no pretrained weights, eval mode."""
    from mmengine.config import Config

    registry = import_mmseg_models()
    cfg = Config.fromfile(os.path.join(CONFIGS, case.config)).model
    cfg.pop("data_preprocessor", None)
    cfg.pretrained = None
    cfg.backbone.init_cfg = None
    _set_num_classes(cfg.get("decode_head"))
    _set_num_classes(cfg.get("auxiliary_head"))
    if device == "meta":
        # mmseg's Swin reads its drop-path rates with .item(): that linspace stays on the CPU
        linspace = torch.linspace
        torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})
        try:
            with torch.device("meta"):
                return registry.build(cfg).eval()
        finally:
            torch.linspace = linspace
    return registry.build(cfg).eval()


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affines away from their init, so that a swapped or missing norm
    changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ours(case: Case) -> nn.Module:
    return build_segmentor(case.model, "linear", NUM_CLASSES).eval()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.model)
def test_features_and_logits_equal_mmseg(case: Case, tmp_path) -> None:
    torch.manual_seed(0)
    reference = build_mmseg(case)
    _randomise_norms(reference)
    ours = _ours(case)
    assert _params(ours) == _params(reference)
    released = tmp_path / f"{case.model}.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": reference.state_dict()},
               released)
    load_released_checkpoint(ours, released, case.model, "linear")

    images = torch.randn(1, 3, *case.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_features = reference.extract_feat(images)
        our_features = ours.backbone(images)
        torch.manual_seed(2)  # SegNeXt's NMF draws its initial bases: the same draws for both
        ref_logits = reference._forward(images)
        torch.manual_seed(2)
        our_logits = ours(images).logits
    assert len(our_features) == len(ref_features)
    feature_diff = 0.0
    for ref, our in zip(ref_features, our_features):
        assert our.shape == ref.shape
        feature_diff = max(feature_diff, (our - ref).abs().max().item())
    assert our_logits.shape == ref_logits.shape
    logit_diff = (our_logits - ref_logits).abs().max().item()
    print(f"\n{case.model} {case.size}: max |feature diff| {feature_diff:.2g}, "
          f"max |logit diff| {logit_diff:.2g}")
    assert feature_diff <= TOLERANCE
    assert logit_diff <= TOLERANCE


@pytest.mark.parametrize("case", LARGE, ids=lambda c: c.model)
def test_large_variants_have_mmseg_params_and_names(case: Case) -> None:
    reference = build_mmseg(case, device="meta")
    with torch.device("meta"):
        ours = _ours(case)
    assert _params(ours) == _params(reference)
    with torch.device("meta"):
        state = map_released_state(ours, reference.state_dict(), case.model, "linear")
    own = ours.state_dict()
    assert sorted(state) == sorted(own)
    assert [k for k in own if own[k].shape != state[k].shape] == []


def test_swin_backbone_checkpoint_in_mmseg_naming_loads(tmp_path) -> None:
    """A backbone-only Swin file in mmseg's naming (what mmseg's swin2mmseg writes: no stage
    output norms) loads into our SwinBackbone; with the output norms at their init on both
    sides, the features are mmseg's."""
    case = CASES[1]
    reference = build_mmseg(case).backbone
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("norm")}
    torch.save(state, tmp_path / "swin_mmseg.pth")
    from ssaseg.models.backbones.swin import SwinBackbone

    ours = SwinBackbone("swin_tiny_patch4_window7_224", weights=tmp_path / "swin_mmseg.pth").eval()
    images = torch.randn(1, 3, *case.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diffs = [(a - b).abs().max().item() for a, b in zip(reference(images), ours(images))]
    assert max(diffs) <= TOLERANCE


@pytest.mark.parametrize("case", CASES + LARGE, ids=lambda c: c.model)
def test_mmcv_flops_equal_mmcv_on_mmseg(case: Case) -> None:
    from mmcv.cnn.utils import get_model_complexity_info

    class Forward(nn.Module):  # what mmseg's get_flops runs: backbone + decode head(s)
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model._forward(x)

    size = (64, 96)
    reference = Forward(build_mmseg(case, device="meta")).eval()
    expected, _ = get_model_complexity_info(reference, (3, *size), print_per_layer_stat=False,
                                            as_strings=False)
    with torch.device("meta"):
        ours = _ours(case)
        images = torch.empty(1, 3, *size)
    assert count_flops_mmcv(ours, images, **MODELS[case.model].mmcv_counting) == int(expected)
