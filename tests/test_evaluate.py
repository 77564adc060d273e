"""Evaluation: confusion matrix and IoU by hand, sliding window equals whole image for a local model."""

import math

import pytest
import torch

from raymh.train.evaluate import ConfusionMatrix, miou_metrics, predict_logits


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm.update(pred, target)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)


def test_absent_classes_are_left_out_of_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert math.isnan(cm.iou()[3]) and cm.miou() == 1.0


def test_bad_labels_are_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="num_classes 3"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))


def test_split_updates_sum_to_the_whole():
    g = torch.Generator().manual_seed(0)
    t, p = torch.randint(0, 5, (10, 8, 8), generator=g), torch.randint(0, 5, (10, 8, 8), generator=g)
    whole, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(p, t)
    a.update(p[:4], t[:4])
    b.update(p[4:], t[4:])
    assert torch.equal(a.mat + b.mat, whole.mat)


class _PixelModel(torch.nn.Module):
    """A 1x1-conv 'model' at stride 4: window position does not change its per-pixel output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x, domain):
        return {"logits": self.conv(torch.nn.functional.avg_pool2d(x, 4))}


def test_sliding_window_matches_whole_image_for_a_local_model():
    torch.manual_seed(0)
    model, x = _PixelModel(), torch.randn(1, 3, 64, 96)
    whole = predict_logits(model, x, "d", mode="whole")
    slide = predict_logits(model, x, "d", mode="slide", window=(32, 48))
    assert whole.shape == slide.shape == (1, 4, 64, 96)
    # bilinear upsampling differs only at window borders; the argmax agrees almost everywhere
    assert (whole.argmax(1) == slide.argmax(1)).float().mean() > 0.9


def test_miou_metrics_names():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    m = miou_metrics({"a": cm}, {"a": ["road", "traffic light"]})
    assert m["val/miou/a"] == 1.0 and m["val/miou_mean"] == 1.0 and "val/iou/a/traffic_light" in m
