"""Segmentation metrics from a confusion matrix.

Everything is accumulated as an integer confusion matrix (rows = ground truth, columns =
prediction) so that shards from different ranks or images add up exactly and the mean is taken
once, over the dataset — not per image (the official code's printed per-class IoU averages
per-image values, which is wrong).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; pixels whose target is ``ignore_index`` are dropped."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    if (target[keep] >= num_classes).any() or (target[keep] < 0).any():
        raise ValueError(f"target holds a class id outside [0, {num_classes}) other than {ignore_index}")
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(conf: torch.Tensor) -> dict:
    """mIoU, pixel accuracy, frequency-weighted IoU and per-class IoU.

    A class counts towards the mean only if it occurs in the ground truth or in the prediction
    (union > 0); classes absent from both have IoU ``nan`` in ``per_class_iou`` and are excluded.
    """
    conf = conf.double()
    tp = conf.diag()
    gt = conf.sum(1)
    pr = conf.sum(0)
    union = gt + pr - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = union > 0
    total = gt.sum()
    freq = gt / total.clamp(min=1)
    return {
        "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "fwIoU": float((freq[present] * iou[present]).sum()) if present.any() else float("nan"),
        "per_class_iou": iou.tolist(),
        "present": present.tolist(),
    }


def seen_unseen_metrics(conf: torch.Tensor, unseen_ids: list[int]) -> dict[str, float]:
    """mIoU over seen classes, over unseen (held-out) classes, and their harmonic mean hIoU.

    Each mean is taken like ``mIoU``: over the classes of its group with union > 0 (``nan`` when none
    is). hIoU = 2su / (s + u) rewards a model only when both groups score; it is 0 when s + u = 0 and
    ``nan`` when either mean is.
    """
    m = segmentation_metrics(conf)
    iou, present = m["per_class_iou"], m["present"]
    unseen = set(unseen_ids)

    def mean(ids: list[int]) -> float:
        vals = [iou[c] for c in ids if present[c]]
        return sum(vals) / len(vals) if vals else float("nan")

    s = mean([c for c in range(len(iou)) if c not in unseen])
    u = mean(sorted(unseen))
    h = 2 * s * u / (s + u) if s + u > 0 else 0.0 if s + u == 0 else float("nan")
    return {"mIoU_seen": s, "mIoU_unseen": u, "hIoU": h}


def metrics_to_scalars(conf: torch.Tensor, names: list[str], prefix: str = "eval",
                       unseen_ids: list[int] | None = None) -> dict[str, float]:
    """``{prefix}/mIoU``, ``/pixel_acc``, ``/fwIoU`` and ``{prefix}_iou/<class>`` for writers; with
    ``unseen_ids`` (held-out classes) also ``/mIoU_seen``, ``/mIoU_unseen`` and ``/hIoU``.

    Per-class IoU is reported only for classes that occur in the ground truth: a class that is only
    predicted is in the mean (IoU 0) but would otherwise add a flat-zero curve per absent class.
    """
    m = segmentation_metrics(conf)
    out = {f"{prefix}/mIoU": m["mIoU"], f"{prefix}/pixel_acc": m["pixel_acc"], f"{prefix}/fwIoU": m["fwIoU"]}
    if unseen_ids:
        out.update({f"{prefix}/{k}": v for k, v in seen_unseen_metrics(conf, unseen_ids).items()})
    gt_present = conf.sum(1) > 0
    for cid, iou in enumerate(m["per_class_iou"]):
        if gt_present[cid]:
            out[f"{prefix}_iou/{names[cid]}"] = iou
    return out
