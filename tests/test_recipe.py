"""The reference recipe's switches and the data path around the model, without mmseg.

(Equality with mmsegmentation itself: tests/test_mmseg_pipeline.py, with the extra installed.)

* ProtoSeg's class-weighted CE and bias-free classifier conv: the weighted loss equals a slow
  per-pixel reference, PPC/PPD stay unweighted, a wrong weight list is an error naming it;
* normalisation and padding as mmseg's preprocessor, the test resize sizes and sliding windows
  against hand-computed values, augmentation a pure function of its seed;
* evaluation through DataLoader workers gives what the main process gives;
* a config stored before the recipe keys existed still loads (as the recipe it ran).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssaseg.config import resolve_run, run_config_from_dict, validate_params
from ssaseg.data.dataset import SegmentationDataset
from ssaseg.data.prepare import prepare_dataset
from ssaseg.data.transforms import (MEAN_255, STD_255, EvalPipeline, TrainPipeline, normalize,
                                    rescale_size)
from ssaseg.engine.evaluate import evaluate, slide_windows
from ssaseg.models.classifiers import build_classifier
from ssaseg.models.losses import resize_logits

WEIGHTS = [0.5, 1.0, 2.0, 0.25, 4.0]


def _weighted_ce_reference(logits, labels, weight, ignore=255):
    """sum over labelled pixels of w[y] * -log softmax(logits)[y], divided by sum of w[y]."""
    logits = resize_logits(logits.float(), labels.shape[-2:])
    total = norm = 0.0
    for b, y, x in (labels != ignore).nonzero().tolist():
        k = labels[b, y, x].item()
        total += weight[k] * -torch.log_softmax(logits[b, :, y, x], 0)[k].item()
        norm += weight[k]
    return total / norm


def _batch(seed=0, size=12):
    gen = torch.Generator().manual_seed(seed)
    feature = torch.randn(2, 8, size // 4, size // 4, generator=gen)
    labels = torch.randint(0, len(WEIGHTS), (2, size, size), generator=gen)
    labels[0, :3] = 255
    return feature, labels


def test_linear_class_weight_and_bias_switches():
    feature, labels = _batch()
    torch.manual_seed(0)
    clf = build_classifier("linear", 8, len(WEIGHTS), 255, bias=False, class_weight=WEIGHTS,
                           dropout=0.0).train()
    clf.conv.weight.data.normal_(0.0, 1.0)  # confident logits: the weights matter
    assert clf.conv.bias is None and set(clf.state_dict()) == {"conv.weight"}
    out = clf(feature, labels)
    expected = _weighted_ce_reference(out.logits, labels, WEIGHTS)
    assert out.losses["ce"].item() == pytest.approx(expected, rel=1e-5)
    assert not clf(torch.zeros_like(feature)).logits.any()  # no bias: zero in, zero out
    unweighted = build_classifier("linear", 8, len(WEIGHTS), 255, dropout=0.0).train()
    unweighted.conv.weight.data.copy_(clf.conv.weight.data)
    unweighted.conv.bias.data.zero_()
    assert unweighted(feature, labels).losses["ce"].item() != pytest.approx(expected, rel=1e-3)


def test_protoseg_class_weight_applies_to_the_segmentation_ce_only():
    feature, labels = _batch(1)
    outs = []
    for weight in (WEIGHTS, None):
        torch.manual_seed(0)
        clf = build_classifier("protoseg", 8, len(WEIGHTS), 255, num_prototypes=2, dropout=0.0,
                               class_weight=weight).train()
        outs.append(clf(feature, labels))
    weighted, plain = outs
    assert torch.equal(weighted.logits, plain.logits)
    assert weighted.losses["ppc"] == plain.losses["ppc"]
    assert weighted.losses["ppd"] == plain.losses["ppd"]
    expected = _weighted_ce_reference(weighted.logits, labels, WEIGHTS)
    assert weighted.losses["ce"].item() == pytest.approx(expected, rel=1e-5)
    assert plain.losses["ce"].item() != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("name", ["linear", "protoseg"])
def test_wrong_class_weight_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match=rf"{name} classifier: class_weight needs 5 positive "
                                         r"values .* got 3"):
        build_classifier(name, 8, 5, 255, class_weight=[1.0, 1.0, 1.0])


def test_class_weight_is_not_a_checkpoint_key():
    clf = build_classifier("linear", 8, 5, 255, class_weight=WEIGHTS)
    assert "class_weight" not in clf.state_dict()
    assert clf.to(torch.float64).class_weight.dtype == torch.float64  # follows the module


def test_normalize_puts_channels_first_and_zero_in_the_padding():
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    out = normalize(images, torch.tensor([[5, 7], [3, 4]]))
    assert out.shape == (2, 3, 5, 7) and out.is_contiguous() and out.dtype == torch.float32
    mean = torch.tensor(MEAN_255).view(3, 1, 1)
    std = torch.tensor(STD_255).view(3, 1, 1)
    expected = (images.permute(0, 3, 1, 2).float() - mean) / std
    assert torch.equal(out[0], expected[0])
    assert torch.equal(out[1, :, :3, :4], expected[1, :, :3, :4])
    assert not out[1, :, 3:].any() and not out[1, :, :, 4:].any()
    assert torch.equal(normalize(images), expected)


def test_resize_sizes_and_windows_are_mmcv_s():
    # mmcv.rescale_size: factor min(long / max(h, w), short / min(h, w)), int(x + 0.5)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(1024, 2048, (2048, 512)) == (512, 1024)
    assert rescale_size(375, 500, (520, 520)) == (390, 520)
    assert rescale_size(333, 500, (2048, 1024)) == (1024, 1538)
    image = np.zeros((60, 90, 3), np.uint8)
    assert EvalPipeline(scale=(64, 40))(image).shape == (40, 60, 3)
    assert EvalPipeline(scale=(64, 40), size_divisor=32)(image).shape == (64, 64, 3)
    assert EvalPipeline()(image).shape == (60, 90, 3)
    # mmseg's slide_inference: rows 0, 16, 16 -> 16 (moved back inside), one column of 20 px
    assert slide_windows(40, 20, (24, 32), (16, 20)) == [(0, 24, 0, 20), (16, 40, 0, 20)]
    assert len(slide_windows(1024, 2048, (512, 1024), (341, 683))) == 9


def _prepared(tmp_path, num_val=4):
    root = tmp_path / "synthetic"
    prepare_dataset("synthetic", "", root, num_train=3, num_val=num_val, image_size=32)
    return root


def test_augmentation_is_a_function_of_its_seed(tmp_path):
    pipeline = TrainPipeline(crop_size=(24, 24), ratio_range=(0.5, 2.0))
    ds = SegmentationDataset(_prepared(tmp_path), "train", train=True, train_pipeline=pipeline)
    a, b, c = ds[(0, 7)], ds[(0, 7)], ds[(0, 8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not (torch.equal(a.image, c.image) and torch.equal(a.label, c.label))
    assert a.image.shape == (24, 24, 3) and a.label.shape == (24, 24)


class _PointModel(torch.nn.Module):
    """Logits from a fixed per-pixel map of the normalised colour, at a quarter resolution."""

    def __init__(self, num_classes):
        super().__init__()
        self.weight = torch.randn(num_classes, 3, generator=torch.Generator().manual_seed(0))

    def predict(self, images):
        logits = torch.einsum("kc,bchw->bkhw", self.weight, F.avg_pool2d(images, 4))
        return resize_logits(logits, images.shape[-2:])


def test_evaluation_through_workers_equals_the_main_process(tmp_path):
    ds = SegmentationDataset(_prepared(tmp_path), "val", eval_pipeline=EvalPipeline(scale=(48, 20)))
    model = _PointModel(ds.meta.num_classes)
    inline, cm_inline = evaluate(model, ds, torch.device("cpu"), num_workers=0)
    workers, cm_workers = evaluate(model, ds, torch.device("cpu"), num_workers=2)
    assert torch.equal(cm_inline, cm_workers) and inline.miou == workers.miou
    assert cm_inline.sum() == 4 * 32 * 32  # the stored labels are scored, not the 20x20 input


def test_a_config_stored_before_the_recipe_keys_loads_as_what_it_ran(mini_params):
    params = validate_params(mini_params)
    stored = resolve_run(params, "synthetic", "segformer_b0", "linear", 0).to_dict()
    for key in ("cat_max_ratio", "photometric_distortion"):
        stored["dataset"].pop(key)
    for key in ("scale", "size_divisor", "num_workers"):
        stored["evaluate"].pop(key)
    old = run_config_from_dict(stored)
    assert (old.dataset.cat_max_ratio, old.dataset.photometric_distortion) == (1.0, False)
    assert (old.evaluate.scale, old.evaluate.size_divisor) == (None, None)
    assert old.config_hash() != resolve_run(params, "synthetic", "segformer_b0", "linear",
                                            0).config_hash()
