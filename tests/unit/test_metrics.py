"""Metrics against a confusion matrix computed by hand."""
from __future__ import annotations

import math

import torch

from lseg.metrics import confusion_matrix, metrics_to_scalars, segmentation_metrics


def _example():
    # (target, pred) pairs; one ignored pixel; class 3 never occurs in GT nor prediction.
    target = torch.tensor([0, 1, 1, 1, 2, 255, 0, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 1, 0])
    return pred, target


def test_confusion_matrix_by_hand():
    pred, target = _example()
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [
        [1, 1, 0, 0],
        [1, 2, 0, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ]


def test_metrics_by_hand():
    pred, target = _example()
    m = segmentation_metrics(confusion_matrix(pred, target, 4))
    # IoU: c0 1/(2+3-1)=0.25, c1 2/(3+3-2)=0.5, c2 1/(2+1-1)=0.5, c3 absent -> nan, excluded
    assert m["per_class_iou"][:3] == [0.25, 0.5, 0.5]
    assert math.isnan(m["per_class_iou"][3])
    assert m["present"] == [True, True, True, False]
    assert math.isclose(m["mIoU"], (0.25 + 0.5 + 0.5) / 3)
    assert math.isclose(m["pixel_acc"], 4 / 7)
    assert math.isclose(m["fwIoU"], (2 / 7) * 0.25 + (3 / 7) * 0.5 + (2 / 7) * 0.5)


def test_class_only_predicted_counts_with_iou_zero():
    # Class 1 is predicted but never in GT: union > 0, IoU 0, and it lowers the mean.
    m = segmentation_metrics(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 3))
    assert m["per_class_iou"][:2] == [0.5, 0.0]
    assert math.isclose(m["mIoU"], 0.25)


def test_confusion_matrices_add_across_shards():
    pred, target = _example()
    whole = confusion_matrix(pred, target, 4)
    parts = confusion_matrix(pred[:3], target[:3], 4) + confusion_matrix(pred[3:], target[3:], 4)
    assert torch.equal(whole, parts)


def test_metrics_to_scalars_reports_per_class_iou_of_ground_truth_classes():
    # class 1 only predicted (IoU 0, in the mean), class 2 absent everywhere
    conf = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    out = metrics_to_scalars(conf, ["a", "b", "c"], "eval/ade")
    assert out == {"eval/ade/mIoU": 3 / 8, "eval/ade/pixel_acc": 3 / 4, "eval/ade/fwIoU": 3 / 4,
                   "eval/ade_iou/a": 3 / 4}
