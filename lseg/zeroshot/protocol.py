"""Scoring one fold: episodes -> preprocessed query -> ("others", class) logits -> 2-way argmax -> areas.

Both protocols feed the model the same input: the RGB image resized to ``image_size`` squared with
PIL's bilinear filter (aspect ratio not kept), scaled to [0, 1] and normalised with mean = std = 0.5
(the input every lseg-hpc model takes; a ResNet-101 model converts it to ImageNet statistics
itself). The text is the pair ("others", name of the episode's class) with the name verbatim
from the label file. A pixel is the class where its class logit is larger than the "others" logit
(an exact tie is "others", as argmax picks the first maximum). The protocols differ in what is scored:

* ``official``: the episode list of the lang-seg test, prediction and target both at
  ``image_size`` squared (target resized with PyTorch's ``nearest`` rule);
* ``fair``: every (image, class) pair once, logits resized (bilinear) to the mask's own size, so
  the target is the original mask.

Each rank takes episodes rank, rank + W, ...; the per-class counts are summed over ranks, so any
number of ranks gives the numbers of one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from lseg.inference import logits_fn, resize
from lseg.zeroshot.benchmarks import IMAGE_SIZE, Benchmark
from lseg.zeroshot.episodes import Episode, fair_pairs, official_episodes
from lseg.zeroshot.metrics import AreaCounts, class_iou, fb_iou, miou
from lseg.zeroshot.readers import binary_target, read_episode, resize_mask

PROTOCOLS = ("official", "fair")
#: The text of the background channel of every episode.
OTHERS = "others"


def model_input(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(1, 3, size, size) float32: PIL bilinear resize, /255, then (x - 0.5) / 0.5."""
    arr = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
    return ((x - 0.5) / 0.5).unsqueeze(0)


def foreground(logits: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W) logits -> (H, W) int64: 1 where the class logit beats "others" (ties are "others")."""
    return (logits[0, 1] > logits[0, 0]).long()


def episodes_for(protocol: str, bench: Benchmark, fold: int, root: Path) -> list[Episode]:
    return official_episodes(bench, fold, root) if protocol == "official" else fair_pairs(bench, fold, root)


@dataclass
class FoldResult:
    """A scored fold: metrics as fractions, per-class IoU over the fold's classes, and the counts."""

    benchmark: str
    fold: int
    protocol: str
    mIoU: float
    FB_IoU: float
    per_class_iou: dict[str, float]
    episodes: int
    seconds: float
    counts: AreaCounts = field(repr=False)


def score_fold(model: torch.nn.Module, bench: Benchmark, fold: int, root: Path, protocol: str,
               class_names: Sequence[str], device: torch.device, *, image_size: int = IMAGE_SIZE,
               precision: str = "fp32", rank: int = 0, world_size: int = 1, max_episodes: int | None = None,
               on_episode: Callable[[int], None] | None = None) -> FoldResult:
    """Score this rank's share of a fold's episodes and sum the counts over ranks (all ranks call it)."""
    t0 = time.perf_counter()
    episodes = episodes_for(protocol, bench, fold, root)[:max_episodes]
    counts = AreaCounts(bench.num_classes, device)
    for i in range(rank, len(episodes), world_size):
        ep = episodes[i]
        image, mask = read_episode(bench, root, ep)
        logits = logits_fn(model, [OTHERS, class_names[ep.class_id]], precision)(model_input(image, image_size)
                                                                                 .to(device))
        if protocol == "official":
            target = binary_target(bench, resize_mask(mask, image_size), ep.class_id)
        else:
            target = binary_target(bench, mask, ep.class_id)
            logits = resize(logits, tuple(mask.shape))
        counts.add(ep.class_id, foreground(logits), target.to(device))
        if on_episode is not None:
            on_episode(1)
    counts.all_reduce()
    classes = bench.novel_classes(fold)
    return FoldResult(bench.name, fold, protocol, miou(counts, classes), fb_iou(counts, classes),
                      dict(zip((class_names[c] for c in classes), class_iou(counts, classes))),
                      len(episodes), time.perf_counter() - t0, counts)
