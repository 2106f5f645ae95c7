import math

import pytest
import torch
from torch import nn

from ssaseg.engine.evaluate import SegmentationMetrics, confusion_matrix, slide_logits
from ssaseg.models.segmentor import Segmentor


def test_confusion_matrix_matches_hand_count():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=255)
    # rows = truth, columns = prediction; the ignored pixel (predicted 0) is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    m = SegmentationMetrics.from_confusion(cm)
    # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 3 / (3 + 4 - 3), IoU_2 = 1 / (2 + 1 - 1)
    assert m.iou == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert m.miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 7)
    assert m.accuracy == pytest.approx([1 / 2, 1.0, 1 / 2])


def test_absent_class_is_nan_and_excluded_from_the_mean():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    m = SegmentationMetrics.from_confusion(confusion_matrix(pred, target, 3, 255))
    assert math.isnan(m.iou[2])
    assert m.miou == 1.0


def test_false_positive_on_absent_class_counts_as_zero_iou():
    target = torch.tensor([0, 0, 0])
    pred = torch.tensor([0, 0, 2])
    m = SegmentationMetrics.from_confusion(confusion_matrix(pred, target, 3, 255))
    assert m.iou[2] == 0.0 and math.isnan(m.iou[1])
    assert m.miou == pytest.approx((2 / 3 + 0.0) / 2)


class _PointwiseHead(nn.Module):
    """A head whose output at a pixel depends only on that pixel: windows cannot matter."""

    out_channels = 3

    def forward(self, features):
        from ssaseg.models.heads.base import HeadOutput

        return HeadOutput(features[0])


class _Identity(nn.Module):
    def forward(self, images):
        return [images]


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    from ssaseg.models.classifiers.linear import LinearClassifier

    torch.manual_seed(0)
    model = Segmentor(_Identity(), _PointwiseHead(), LinearClassifier(3, 4, dropout=0.0)).eval()
    image = torch.randn(1, 3, 37, 53)  # not a multiple of the window or stride
    whole = model.predict(image)
    slid = slide_logits(model, image, 4, crop=(16, 16), stride=(11, 11))
    assert slid.shape == whole.shape
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-5)
    small = slide_logits(model, image[..., :10, :12], 4, crop=(16, 16), stride=(11, 11))
    torch.testing.assert_close(small, whole[..., :10, :12], rtol=1e-5, atol=1e-5)
