"""The one scoring loop: predictions against labels -> a dataset-level confusion matrix.

Why one loop: the trainer's in-loop evaluation and the evaluation sweep must count pixels the
same way (ignore index, label mapping, bad samples, the sum over ranks), so that a number logged
during training and a sweep cell of the same checkpoint mean the same thing. Each rank scores its
own share of the images (the loader shards them: ``lseg.data.build_val_loader``) and the counts
are summed over ranks in one all-reduce at the end.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from lseg import runtime
from lseg.distributed import all_reduce_sum
from lseg.metrics import confusion_matrix

#: ``images (B, 3, H, W) on the device -> predicted class ids (B, H, W)``.
PredictFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Scores:
    """Counts summed over all ranks, plus this rank's first few (image, truth, prediction) panels."""

    confusion: torch.Tensor  # int64 (C, C), rows = ground truth, columns = prediction
    images: int = 0
    bad: int = 0  # images whose file was unreadable (scored as all-ignore)
    panels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@torch.no_grad()
def score(predict: PredictFn, batches: Iterable[dict], num_classes: int, device: torch.device, *,
          target_map: torch.Tensor | None = None, num_panels: int = 0,
          on_batch: Callable[[int], None] | None = None) -> Scores:
    """Score every batch (``image``, ``label``, ``num_bad``) of this rank; sum over ranks.

    ``target_map``: int64[256] lookup applied to the labels first (e.g. universal ids -> a
    dataset's own ids, 255 = ignore). ``on_batch(n)`` is called after each batch of n images
    (progress bars). Every rank must call this, also with no batches: it ends in a collective.
    """
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # images, bad images
    lut = None if target_map is None else target_map.to(device)
    panels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        target = labels if lut is None else lut[labels]
        pred = predict(images)
        conf += confusion_matrix(pred, target, num_classes)
        counts[0] += images.shape[0]
        counts[1] += int((batch["num_bad"] > 0).sum())
        for i in range(min(num_panels - len(panels), images.shape[0])):
            panels.append((images[i].cpu(), target[i].cpu(), pred[i].cpu()))
        if on_batch is not None:
            on_batch(images.shape[0])
    total = all_reduce_sum(torch.cat([conf.flatten(), counts])).cpu()
    return Scores(total[:-2].reshape(num_classes, num_classes), int(total[-2]), int(total[-1]), panels)


def argmax_predictor(image_model: torch.nn.Module, text_features: torch.Tensor, precision: str) -> PredictFn:
    """Plain forward pass of the image side over fixed label embeddings (in-loop evaluation)."""
    def predict(images: torch.Tensor) -> torch.Tensor:
        with runtime.autocast(images.device, precision):
            return image_model(images, text_features).argmax(1)
    return predict


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """BatchNorm and dropout in inference mode for the block; the previous mode is restored."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)

