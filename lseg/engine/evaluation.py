"""Evaluation during training: every rank scores its shard, confusion matrices are summed.

Running on all ranks (not rank 0 alone) keeps the other ranks out of a collective that would wait
for rank 0 and time out on big eval sets (anchors P3).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image, ImageDraw

from lseg.distributed import all_reduce_sum
from lseg.metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics


def palette(num_classes: int) -> np.ndarray:
    """Fixed, well-spread RGB colours per class id (index 255 = black)."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    colours[IGNORE_INDEX] = 0
    return colours


def colorize(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    return colours[np.asarray(label, dtype=np.int64).clip(0, 255)]


def panel(image: torch.Tensor, target: torch.Tensor, pred: torch.Tensor,
          names: list[str]) -> np.ndarray:
    """input | ground truth | prediction, with a legend of the classes that occur (HWC uint8)."""
    colours = palette(len(names))
    img = ((image.float().cpu().permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)
    gt, pr = target.cpu().numpy(), pred.cpu().numpy()
    row = np.concatenate([img, colorize(gt, colours), colorize(pr, colours)], axis=1)
    ids = [int(i) for i in np.unique(np.concatenate([gt.ravel(), pr.ravel()])) if i != IGNORE_INDEX]
    line_h = 12
    legend = Image.new("RGB", (row.shape[1], line_h * max(1, (len(ids) + 2) // 3) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    col_w = row.shape[1] // 3
    for k, cid in enumerate(ids):
        x, y = (k % 3) * col_w + 2, (k // 3) * line_h + 2
        draw.rectangle([x, y, x + 9, y + 9], fill=tuple(int(c) for c in colours[cid]))
        draw.text((x + 12, y - 1), names[cid] if cid < len(names) else str(cid), fill=(0, 0, 0))
    return np.concatenate([row, np.asarray(legend)], axis=0)


@torch.no_grad()
def evaluate(image_model: torch.nn.Module, text_features: torch.Tensor, loader: Iterable[dict],
             num_classes: int, device: torch.device, autocast_dtype: torch.dtype | None,
             num_panels: int = 0) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """Confusion matrix summed over all ranks, and up to ``num_panels`` (image, gt, pred) triples."""
    was_training = image_model.training
    image_model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    panels: list[tuple[torch.Tensor, ...]] = []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            logits = image_model(images, text_features)
        pred = logits.argmax(1)
        conf += confusion_matrix(pred, labels, num_classes)
        for i in range(min(num_panels - len(panels), images.shape[0])):
            panels.append((images[i].cpu(), labels[i].cpu(), pred[i].cpu()))
    image_model.train(was_training)
    return all_reduce_sum(conf), panels


def metrics_to_scalars(conf: torch.Tensor, names: list[str], prefix: str = "eval") -> dict[str, float]:
    """Scalar dict for writers; per-class IoU only for classes that occur in the ground truth."""
    m = segmentation_metrics(conf)
    out = {f"{prefix}/mIoU": m["mIoU"], f"{prefix}/pixel_acc": m["pixel_acc"], f"{prefix}/fwIoU": m["fwIoU"]}
    gt_present = conf.sum(1) > 0
    for cid, iou in enumerate(m["per_class_iou"]):
        if gt_present[cid]:
            out[f"{prefix}_iou/{names[cid]}"] = iou
    return out
