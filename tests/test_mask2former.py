"""Mask2Former-R50 against mmsegmentation 1.2.2 (+ mmdet 3.3.0) on identical weights: every
decoder stage's class and mask logits, the final scores, and the set-prediction loss.

mmdet and mmcv-lite install on a CPU machine, but mmcv-lite has no compiled ops (``mmcv._ext``)
and mmdet imports some at import time; this test puts a stand-in ``mmcv._ext`` into
``sys.modules`` whose functions raise when called. Mask2Former on the CPU never calls them: mmcv's
deformable attention and point sampling take their PyTorch paths there. Skipped where mmdet or
mmsegmentation is not installed (the ``conformance`` extra).

Weights: mmseg's model, every parameter and BatchNorm statistic perturbed at random (so that no
zero-initialised weight hides a mapping error), renamed by ``segmentor_key_tables.MASK2FORMER``
into ours: no key left over on either side. That is also the check of the table against the
released checkpoint's names, which are exactly mmseg's model's state-dict names. Input 64x64,
150 classes (the ADE20K head): ~5 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssaseg.models.segmentor_key_tables import MASK2FORMER, apply_key_table
from ssaseg.models.zoo import build_segmentor
from ssaseg.torchvision_cpu import declare_missing_torchvision_ops
from tests.mmcv_stub import stub_mmcv_ext

NUM_CLASSES = 150


@pytest.fixture(scope="module")
def mmseg_mask2former():
    pytest.importorskip("mmseg")
    pytest.importorskip("mmdet")
    declare_missing_torchvision_ops()
    stub_mmcv_ext()
    import mmdet.models  # noqa: F401  (registers mmdet's modules)
    import mmseg
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    config = (Path(mmseg.__file__).parent / ".mim" / "configs" / "mask2former"
              / "mask2former_r50_8xb2-160k_ade20k-512x512.py")
    cfg = Config.fromfile(str(config)).model
    cfg.pop("data_preprocessor")
    cfg.backbone.norm_cfg = dict(type="BN", requires_grad=False)  # SyncBN needs a process group
    cfg.backbone.init_cfg = None  # no torchvision download
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def ours_from_mmseg(mmseg_mask2former):
    ours = build_segmentor("mask2former_r50", "linear", num_classes=NUM_CLASSES).eval()
    mapped = apply_key_table(mmseg_mask2former.state_dict(), MASK2FORMER)
    own = ours.state_dict()
    assert sorted(mapped.keys() - own.keys()) == []  # nothing released is left unplaced
    assert sorted(own.keys() - mapped.keys()) == []  # nothing of ours is left unloaded
    wrong = [k for k in own if own[k].shape != mapped[k].shape]
    assert wrong == []
    ours.load_state_dict(mapped, strict=True)
    return ours


def _image(h=64, w=64):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_every_stage_and_the_scores_match_mmseg(mmseg_mask2former, ours_from_mmseg):
    from mmseg.structures import SegDataSample

    images = _image()
    meta = dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))
    with torch.no_grad():
        features = mmseg_mask2former.extract_feat(images)
        ref_classes, ref_masks = mmseg_mask2former.decode_head(features,
                                                               [SegDataSample(metainfo=meta)])
        ref_scores = mmseg_mask2former.encode_decode(images, [meta])
        head_out = ours_from_mmseg.head(ours_from_mmseg.backbone(images))
        scores = ours_from_mmseg.predict(images)
    predictions = head_out.mask_predictions
    assert len(predictions.class_logits) == len(ref_classes) == 10
    for ours, ref in zip(predictions.class_logits, ref_classes):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for ours, ref in zip(predictions.mask_logits, ref_masks):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert scores.shape == ref_scores.shape == (1, NUM_CLASSES, 64, 64)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)


def test_set_prediction_loss_matches_mmdet(mmseg_mask2former, ours_from_mmseg):
    """Same predictions, same random stream: the same points, matching and loss values."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 6, (2, 64, 64), generator=g) * 7  # 6 classes of the 150
    labels[:, :6] = 255
    images = torch.randn(2, 3, 64, 64, generator=g)
    samples = []
    for label in labels:
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)
    head = mmseg_mask2former.decode_head
    with torch.no_grad():
        classes, masks = head(mmseg_mask2former.extract_feat(images), samples)
        targets, metas = head._seg_data_to_instance_data(samples)
        torch.manual_seed(3)
        ref = head.loss_by_feat(classes, masks, targets, metas)
        from ssaseg.models.heads.base import MaskPredictions

        torch.manual_seed(3)
        ours = ours_from_mmseg.classifier.criterion(MaskPredictions(classes, masks), labels)
    for our_name, ref_name in (("mask_class_ce", "loss_cls"), ("mask_bce", "loss_mask"),
                               ("mask_dice", "loss_dice")):
        total = sum(v for k, v in ref.items() if k.endswith(ref_name))
        torch.testing.assert_close(ours[our_name], total.reshape(()), rtol=1e-4, atol=1e-5)
