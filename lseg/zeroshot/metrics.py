"""Few-shot segmentation metrics: per-class foreground/background areas summed over episodes.

Per episode with class c, prediction P and target G in {0, 1} (255 = ignored, PASCAL void):
I[k] = #(P = k and G = k), U[k] = #(P = k) + #(G = k) - I[k] over the valid pixels, for k = 0
(background) and 1 (the class). Both are added into class c's row over all episodes (an episode
that repeats counts each time). Then

* IoU_c = I_c[1] / max(U_c[1], 1);  mIoU = mean of IoU_c over the fold's classes (a class without
  episodes counts 0);
* FB-IoU = mean over k of (sum_c I_c[k]) / (sum_c U_c[k]), areas pooled over the fold's classes.

Counts are exact int64 (they add up over ranks in any order); values are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import torch

from lseg.distributed import all_reduce_sum

IGNORE = 255


def episode_areas(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(I, U), each int64 of shape (2,), for one episode; pixels whose target is 255 drop out."""
    valid = target != IGNORE
    p, g = pred[valid].long(), target[valid].long()
    inter = torch.bincount(p[p == g], minlength=2)[:2]
    area_p = torch.bincount(p, minlength=2)[:2]
    area_g = torch.bincount(g, minlength=2)[:2]
    return inter, area_p + area_g - inter


class AreaCounts:
    """Per-class I and U buffers, int64 (num_classes, 2), plus the episode count per class."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.inter = torch.zeros(num_classes, 2, dtype=torch.int64, device=device)
        self.union = torch.zeros(num_classes, 2, dtype=torch.int64, device=device)
        self.episodes = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def add(self, class_id: int, pred: torch.Tensor, target: torch.Tensor) -> None:
        inter, union = episode_areas(pred, target)
        self.inter[class_id] += inter.to(self.inter.device)
        self.union[class_id] += union.to(self.union.device)
        self.episodes[class_id] += 1

    def all_reduce(self) -> "AreaCounts":
        """Sum over ranks in one collective (every rank must call it)."""
        flat = all_reduce_sum(torch.cat([self.inter.flatten(), self.union.flatten(), self.episodes]))
        n = self.episodes.numel()
        self.inter = flat[:2 * n].reshape(n, 2)
        self.union = flat[2 * n:4 * n].reshape(n, 2)
        self.episodes = flat[4 * n:]
        return self


def class_iou(counts: AreaCounts, classes: Sequence[int]) -> list[float]:
    """Foreground IoU of each listed class (0 for a class without pixels in prediction or target)."""
    idx = torch.as_tensor(list(classes), dtype=torch.long)
    inter = counts.inter[idx, 1].double().cpu()
    union = counts.union[idx, 1].double().cpu().clamp(min=1)
    return (inter / union).tolist()


def miou(counts: AreaCounts, classes: Sequence[int]) -> float:
    iou = class_iou(counts, classes)
    return sum(iou) / len(iou)


def fb_iou(counts: AreaCounts, classes: Sequence[int]) -> float:
    """Background and foreground IoU from areas pooled over the classes, averaged."""
    idx = torch.as_tensor(list(classes), dtype=torch.long)
    inter = counts.inter[idx].sum(0).double().cpu()
    union = counts.union[idx].sum(0).double().cpu()
    return float((inter / union.clamp(min=1)).mean())
