"""The trainer's in-loop evaluation over the run's label space.

Why apart from the loop: it is the one place that decides what an in-loop score means (every
``data.val_datasets`` in the full label space, held-out classes included and reported as unseen,
counts summed over ranks by :func:`lseg.evaluation.scoring.score`), and it is read on its own.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from lseg import data as lseg_data
from lseg.evaluation.scoring import argmax_predictor, score
from lseg.metrics import metrics_to_scalars


def evaluate_label_space(cfg: Any, model: torch.nn.Module, text_features: torch.Tensor, class_names: Sequence[str],
                         unseen_ids: Sequence[int], rank: int, world_size: int,
                         device: torch.device) -> tuple[dict[str, float], list]:
    """Score each validation dataset (all ranks call it); returns the scalars, overall and per dataset
    (``eval/…``, ``eval/<dataset>/…``; seen/unseen/hIoU when ``unseen_ids``), and this rank's first
    ``eval.num_image_panels`` (image, truth, prediction) panels."""
    predict = argmax_predictor(model, text_features, cfg.train.precision)
    total, scalars, panels = None, {}, []
    for name in cfg.data.val_datasets:
        loader = lseg_data.build_val_loader(cfg, name, rank, world_size, max_samples=cfg.eval.max_samples)
        result = score(predict, loader, len(class_names), device,
                       num_panels=cfg.eval.num_image_panels - len(panels))
        panels += result.panels
        total = result.confusion if total is None else total + result.confusion
        per_dataset = metrics_to_scalars(result.confusion, list(class_names), f"eval/{name}", unseen_ids)
        scalars.update({k: v for k, v in per_dataset.items() if "_iou/" not in k})
    scalars.update(metrics_to_scalars(total, list(class_names), "eval", unseen_ids))
    return scalars, panels
