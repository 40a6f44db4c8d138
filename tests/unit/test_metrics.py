"""Metrics against a confusion matrix computed by hand."""
from __future__ import annotations

import math

import torch

from lseg.metrics import confusion_matrix, metrics_to_scalars, seen_unseen_metrics, segmentation_metrics


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


def test_seen_unseen_and_harmonic_mean_by_hand():
    # rows = truth, columns = prediction; classes 2 and 3 are held out (unseen)
    conf = torch.tensor([[4, 0, 0, 0],    # c0 IoU 4/(4+6-4) = 2/3
                         [1, 3, 0, 0],    # c1 IoU 3/(4+3-3) = 3/4
                         [1, 0, 2, 1],    # c2 IoU 2/(4+2-2) = 1/2
                         [0, 0, 0, 0]])   # c3 only predicted once: IoU 0, in the mean
    m = seen_unseen_metrics(conf, [2, 3])
    assert math.isclose(m["mIoU_seen"], 17 / 24) and m["mIoU_unseen"] == 1 / 4
    assert math.isclose(m["hIoU"], 2 * (17 / 24) * (1 / 4) / (17 / 24 + 1 / 4))  # 17/46 = 0.3696
    assert math.isclose(m["hIoU"], 17 / 46)
    # with nothing held out, "seen" is the plain mIoU
    assert math.isclose(seen_unseen_metrics(conf, [])["mIoU_seen"], segmentation_metrics(conf)["mIoU"])


def test_hiou_is_zero_when_both_means_are_zero_and_nan_when_a_group_is_absent():
    conf = torch.tensor([[0, 2], [3, 0]])  # every pixel wrong: both IoUs 0
    assert seen_unseen_metrics(conf, [1]) == {"mIoU_seen": 0.0, "mIoU_unseen": 0.0, "hIoU": 0.0}
    # the unseen class 2 occurs neither in the truth nor the prediction: no unseen mean, no hIoU
    m = seen_unseen_metrics(torch.tensor([[2, 0, 0], [0, 1, 0], [0, 0, 0]]), [2])
    assert m["mIoU_seen"] == 1.0 and math.isnan(m["mIoU_unseen"]) and math.isnan(m["hIoU"])


def test_metrics_to_scalars_adds_seen_unseen_only_with_held_out_classes():
    conf = torch.tensor([[3, 1], [0, 2]])
    plain = metrics_to_scalars(conf, ["a", "b"], "eval")
    assert not any(k.endswith(("_seen", "_unseen", "hIoU")) for k in plain)
    assert metrics_to_scalars(conf, ["a", "b"], "eval", []) == plain
    out = metrics_to_scalars(conf, ["a", "b"], "eval", [1])
    assert out["eval/mIoU_seen"] == 3 / 4 and out["eval/mIoU_unseen"] == 2 / 3
    assert math.isclose(out["eval/hIoU"], 2 * (3 / 4) * (2 / 3) / (3 / 4 + 2 / 3))
    assert {k: v for k, v in out.items() if k in plain} == plain
