"""``train.label_set=per_sample``: each batch's text labels are its samples' classes (FSS-1000 training).

Why: FSS-1000 has 1000 classes and a folder per class, so a dense label space of all training classes
does not fit uint8 labels (255 = ignore). Its masks mark one class per image instead (1 = the image's
class, 0 = "others") and each sample carries its class id (``batch["class_id"]``). A batch is trained
over ``["others"] + its distinct classes`` (ascending class id), each sample's foreground relabelled
to its class's index in that list: classes of one batch compete as in dense training, and the label
count stays at most batch size + 1. The embeddings of every class of the run's splits are computed
once (the text tower is frozen) and only indexed per step.

In-loop evaluation scores each sample as the official FSS-1000 test does: a 2-way ("others", its
class) argmax, background / foreground areas summed per class (``lseg.zeroshot.metrics``).
``eval/mIoU`` (the best-checkpoint metric) = foreground IoU averaged over the validation split's
classes; ``eval/FB-IoU`` = background and foreground IoU over areas pooled over those classes.
"""
from __future__ import annotations

from typing import Any

import torch

from lseg import runtime
from lseg.data.datasets import open_dataset
from lseg.data.errors import DataError
from lseg.data.loader import build_val_loader
from lseg.data.registry import get
from lseg.zeroshot.metrics import AreaCounts, fb_iou, miou

OTHERS = "others"


def batch_label_set(class_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the batch's distinct class ids ascending (K,), labels (B, H, W) with each sample's 1 replaced
    by 1 + its class's position in them); 0 ("others") and 255 (ignore) are kept."""
    classes, inverse = torch.unique(class_ids, sorted=True, return_inverse=True)
    return classes, torch.where(labels == 1, (inverse + 1).view(-1, 1, 1), labels)


def check_label_set(cfg: Any) -> None:
    """One line when a one-class-per-image dataset would be trained as a dense one (``train.label_set=run``)."""
    if cfg.train.label_set == "run":
        for name in cfg.data.train_datasets:
            if get(name).sample_classes is not None:
                raise DataError(f"data.train_datasets: {name} marks one class per image (label 1 = the image's "
                                "class); train it with train.label_set=per_sample")


class PerSampleLabels:
    """Embeddings of "others" and of every class the run's train / validation splits hold, by class id."""

    def __init__(self, cfg: Any) -> None:
        d = cfg.data
        names = list(dict.fromkeys([*d.train_datasets, *d.val_datasets]))
        for name in names:
            if get(name).sample_classes is None:
                raise DataError(f"train.label_set=per_sample: {name} is a dense dataset (no class per image); "
                                "use datasets such as fss-1000 only, or train.label_set=run")
        if len(names) != 1:
            raise DataError(f"train.label_set=per_sample: train and validate on one dataset (its class ids), "
                            f"got {', '.join(names)}")
        splits = [open_dataset(d, names[0], d.train_split)]
        if d.val_datasets:
            splits.append(open_dataset(d, names[0], d.val_split))
        class_list = splits[0].sample_class_list
        used = sorted({c for ds in splits for c in ds.sample_class_ids})
        self.prompts = [OTHERS, *(class_list.prompts[c] for c in used)]
        self.num_classes = len(class_list.names)
        self.row = torch.full((self.num_classes,), -1, dtype=torch.int64)  # class id -> row of features
        self.row[torch.tensor(used)] = torch.arange(1, len(used) + 1)
        self.features: torch.Tensor | None = None

    def encode(self, text: torch.nn.Module, device: torch.device) -> None:
        """(Re)compute the embeddings with the text tower's current weights."""
        self.features = text.encode(self.prompts).to(device)
        self.row = self.row.to(device)

    def batch(self, class_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(relabelled labels, label embeddings (K + 1, D)) of one training batch."""
        classes, labels = batch_label_set(class_ids, labels)
        rows = torch.cat([classes.new_zeros(1), self.row[classes]])
        return labels, self.features[rows]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, cfg: Any, rank: int, world: int,
                 device: torch.device) -> dict[str, float]:
        """eval/mIoU and eval/FB-IoU of ``model`` (in eval mode) over the validation split, all ranks."""
        counts = AreaCounts(self.num_classes, device)
        for name in cfg.data.val_datasets:
            for batch in build_val_loader(cfg, name, rank, world, max_samples=cfg.eval.max_samples):
                images = batch["image"].to(device)
                target = batch["label"].to(device)
                for i, c in enumerate(batch["class_id"].tolist()):
                    if batch["num_bad"][i]:  # unreadable: scores nothing
                        continue
                    features = self.features[[0, int(self.row[c])]]  # ("others", its class)
                    with runtime.autocast(device, cfg.train.precision):
                        pred = model(images[i:i + 1], features).argmax(1)[0]
                    counts.add(c, pred, target[i])
        counts.all_reduce()
        present = torch.nonzero(counts.episodes > 0).flatten().tolist()
        if not present:
            return {"eval/images": 0.0}
        return {"eval/mIoU": miou(counts, present), "eval/FB-IoU": fb_iou(counts, present),
                "eval/images": float(counts.episodes.sum()), "eval/classes": float(len(present))}
