"""lseg.zeroshot.metrics: few-shot I/U areas, mIoU and FB-IoU on hand-computed cases (exact)."""
from __future__ import annotations

import torch

from lseg.zeroshot.metrics import AreaCounts, class_iou, episode_areas, fb_iou, miou

T = torch.tensor


def test_one_episode_with_void_pixels():
    pred = T([[1, 1, 0], [0, 1, 0]])
    gt = T([[1, 0, 0], [255, 1, 1]])  # (1, 0) is void: it counts for nothing
    inter, union = episode_areas(pred, gt)
    # valid pixels: (p, g) = (1,1) (1,0) (0,0) (1,1) (0,1): I = [1, 2]; areas P = [2, 3], G = [2, 3]
    assert inter.tolist() == [1, 2] and union.tolist() == [3, 4]


def test_areas_sum_over_episodes_before_the_ratio():
    c = AreaCounts(num_classes=8)
    c.add(2, T([[1, 1], [0, 0]]), T([[1, 0], [0, 0]]))  # I = [2, 1], U = [3, 2]
    c.add(2, T([[0, 0], [0, 0]]), T([[1, 1], [1, 0]]))  # I = [1, 0], U = [4, 3]
    c.add(5, T([[1, 1], [1, 1]]), T([[1, 1], [1, 255]]))  # I = [0, 3], U = [0, 3]
    c.add(2, T([[1, 0], [0, 0]]), T([[1, 0], [0, 0]]))  # a repeated episode counts again: I = [3, 1], U = [3, 1]
    assert c.inter[2].tolist() == [6, 2] and c.union[2].tolist() == [10, 6] and c.episodes.tolist()[2] == 3
    assert c.inter[5].tolist() == [0, 3] and c.union[5].tolist() == [0, 3]
    classes = [2, 5, 7]  # class 7 has no episode: IoU 0, still in the mean
    assert class_iou(c, classes) == [2 / 6, 3 / 3, 0.0]
    assert miou(c, classes) == (2 / 6 + 1.0 + 0.0) / 3
    # FB-IoU: background 6 / 10, foreground (2 + 3) / (6 + 3), pooled over the classes
    assert fb_iou(c, classes) == (6 / 10 + 5 / 9) / 2


def test_all_reduce_is_the_identity_in_one_process():
    c = AreaCounts(num_classes=3)
    c.add(1, T([1, 0]), T([1, 1]))
    c.all_reduce()
    assert c.inter.tolist() == [[0, 0], [0, 1], [0, 0]] and c.union.tolist() == [[0, 0], [1, 2], [0, 0]]
    assert c.episodes.tolist() == [0, 1, 0]
