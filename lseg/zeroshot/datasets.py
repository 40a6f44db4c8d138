"""PASCAL-5i and COCO-20i as training datasets: the fold models' base-class data, in the registry.

Why dense training over a label space of "others" + the benchmark's classes: a fold model then
trains with the same trainer, loader and held-out mechanism as every other run. The fold's novel
classes go in ``data.holdout_classes`` (prompts never encoded, pixels ignored; or labelled
"others" with ``data.holdout_label_as=others``, as the official training does), and checkpoints
are chosen on a validation split of *training* images scored on the seen classes, never on the
test lists.

Splits, for fold f (the packed official training lists, images in first-listed order):

* ``train_fold{f}``: the images of the fold's training lists (PASCAL: ``trn/fold{g}`` for g != f;
  COCO: ``trn/fold{f}``, whose novel classes are empty) except every ``BASEVAL_EVERY``-th one;
* ``baseval_fold{f}``: those every-``BASEVAL_EVERY``-th images, for model selection.

Mask value v is label-space id v (0 = background = "others", v = class v - 1 of the label file),
255 ignored.

FSS-1000 is not a dense dataset (a folder holds one class, 1000 classes in all, more than uint8
labels can hold), so ``fss-1000`` is a one-class-per-image dataset: its masks binarise to 0 =
"others", 1 = the image's class (``lseg.zeroshot.readers`` rule), and each sample carries its class
id in the FSS label file (``DatasetSpec.sample_classes``); ``train.label_set=per_sample`` trains it.
Splits, over the jpgs of the 520 ``trn`` categories (categories sorted, files sorted as strings, the
official listing): ``baseval`` = every ``FSS_BASEVAL_EVERY``-th image of that list (one image per
category with the real 10-image folders), ``train`` = the rest. The ``val`` and ``test`` categories
are never read for training or model selection.
"""
from __future__ import annotations

import re
from pathlib import Path

from lseg.data.errors import DataError
from lseg.data.registry import ClassList, DatasetSpec, Encoding, Source, register
from lseg.zeroshot.benchmarks import get_benchmark
from lseg.zeroshot.episodes import fss_queries
from lseg.zeroshot.readers import FSS_OBJECT_MIN, check_layout, paths
from lseg.zeroshot.splits import coco_lists, label_names, pascal_pairs

#: Every n-th training image (n-1, 2n-1, ...) forms the fold's base-class validation split.
BASEVAL_EVERY = 20
#: Every n-th image of the FSS-1000 trn listing (n-1, 2n-1, ...) forms its base-class validation split.
FSS_BASEVAL_EVERY = 10
OTHERS = "others"
_SPLIT = re.compile(r"^(train|baseval)_fold([0-3])$")


def fold_split(src: Source, split: str) -> tuple[str, int]:
    """``train_fold2`` -> ("train", 2); anything else is one line naming the valid splits."""
    match = _SPLIT.match(split)
    if not match:
        raise DataError(f"{src.name} has no split '{split}' (data.train_split / data.val_split: "
                        "train_fold0..3 or baseval_fold0..3; the test lists are scored by tools/eval_zeroshot.py)")
    return match.group(1), int(match.group(2))


def training_images(benchmark: str, fold: int) -> list[str]:
    """Image keys of a fold's official training lists, without repeats, in first-listed order."""
    if benchmark == "pascal-5i":
        keys = [image for g in range(4) if g != fold for image, _ in pascal_pairs("trn", g)]
    else:
        keys = [p for _, paths in sorted(coco_lists("trn", fold).items()) for p in paths]
    return list(dict.fromkeys(keys))


def split_images(benchmark: str, split: str, fold: int) -> list[str]:
    images = training_images(benchmark, fold)
    val = [k for i, k in enumerate(images) if i % BASEVAL_EVERY == BASEVAL_EVERY - 1]
    if split == "baseval":
        return val
    held = set(val)
    return [k for k in images if k not in held]


def _pascal_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    kind, fold = fold_split(src, split)
    voc = src.root / "VOC2012"
    return [(voc / "JPEGImages" / f"{k}.jpg", voc / "SegmentationClassAug" / f"{k}.png")
            for k in split_images("pascal-5i", kind, fold)]


def _coco_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    kind, fold = fold_split(src, split)
    coco = src.root / "COCO2014"
    return [(coco / k, coco / "annotations" / (k[: -len(".jpg")] + ".png"))
            for k in split_images("coco-20i", kind, fold)]


def _classes(benchmark: str):
    def classes(src: Source) -> ClassList:
        names = (OTHERS, *label_names(get_benchmark(benchmark).label_file))
        return ClassList(names, names)
    return classes


HINT = "point data.root at the folder holding the HSNet layout, or run tools/make_synthetic_fewshot.py --output {root}"
register(DatasetSpec("pascal-5i", "Datasets_HSN", _pascal_pairs, _classes("pascal-5i"), lambda src: Encoding(),
                     hint=HINT))
register(DatasetSpec("coco-20i", "Datasets_HSN", _coco_pairs, _classes("coco-20i"), lambda src: Encoding(),
                     hint=HINT))


def fss_split(src: Source, split: str):
    """Episodes (class id, ``<category>/<n>.jpg``) of the ``train`` or ``baseval`` split of fss-1000."""
    if split not in ("train", "baseval"):
        raise DataError(f"{src.name} has no split '{split}' (data.train_split / data.val_split: train or baseval; "
                        "the val and test categories are scored by tools/eval_zeroshot.py)")
    episodes = fss_queries(check_layout(get_benchmark("fss-1000"), src.root, "trn"), "trn")
    is_val = [i % FSS_BASEVAL_EVERY == FSS_BASEVAL_EVERY - 1 for i in range(len(episodes))]
    return [e for e, v in zip(episodes, is_val) if v == (split == "baseval")]


def _fss_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    bench = get_benchmark("fss-1000")
    return [paths(bench, src.root, e) for e in fss_split(src, split)]


def _fss_sample_classes(src: Source, split: str) -> tuple[ClassList, list[int]]:
    names = label_names(get_benchmark("fss-1000").label_file)
    return ClassList(names, names), [e.class_id for e in fss_split(src, split)]


register(DatasetSpec("fss-1000", "Datasets_HSN", _fss_pairs, lambda src: ClassList((OTHERS, "object"), (OTHERS, "object")),
                     lambda src: Encoding(threshold=FSS_OBJECT_MIN), hint=HINT, sample_classes=_fss_sample_classes))
