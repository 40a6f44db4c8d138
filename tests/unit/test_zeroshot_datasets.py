"""PASCAL-5i / COCO-20i as registered training datasets, and the fold recipes built on them."""
from __future__ import annotations

from pathlib import Path

import pytest

from lseg.config import load_config
from lseg.data import DataError, class_names
from lseg.data.registry import Source, check_label_space, get
from lseg.zeroshot.benchmarks import get_benchmark
from lseg.zeroshot.datasets import BASEVAL_EVERY, split_images, training_images
from lseg.zeroshot.splits import coco_lists, pascal_pairs

from helpers import REPO

#: Unique training images per fold (official lists; PASCAL: the three other folds' trn lists).
PASCAL_IMAGES = [8450, 8081, 7007, 9002]


@pytest.mark.parametrize("fold", range(4))
def test_pascal_fold_splits_are_the_other_folds_training_images(fold):
    images = training_images("pascal-5i", fold)
    assert len(images) == PASCAL_IMAGES[fold] == len(set(images))
    others = {i for g in range(4) if g != fold for i, _ in pascal_pairs("trn", g)}
    assert set(images) == others
    train, val = split_images("pascal-5i", "train", fold), split_images("pascal-5i", "baseval", fold)
    assert not set(train) & set(val) and len(train) + len(val) == len(images)
    assert val == images[BASEVAL_EVERY - 1::BASEVAL_EVERY]
    assert not set(images) & {i for i, _ in pascal_pairs("val", fold)}  # never a test image


def test_coco_fold_training_images_hold_no_novel_class_list():
    lists = coco_lists("trn", 0)
    novel = get_benchmark("coco-20i").novel_classes(0)
    assert all(not lists[c] for c in novel)
    images = training_images("coco-20i", 0)
    assert len(images) == 62040 and images[0] == lists[min(c for c in lists if lists[c])][0]


def test_label_space_is_others_then_the_label_file(tmp_path):
    (tmp_path / "Datasets_HSN").mkdir()
    cfg = load_config(None, [f"data.root={tmp_path}", "data.label_space=pascal-5i", "data.train_datasets=[pascal-5i]",
                             "data.val_datasets=[pascal-5i]"])
    names = class_names(cfg)
    assert names[0] == "others" and names[1:] == list(get_benchmark("pascal-5i").class_names) and len(names) == 21


def test_unknown_split_is_one_line(tmp_path):
    src = Source("pascal-5i", tmp_path, load_config(None, []).data)
    with pytest.raises(DataError, match="no split 'val'.*train_fold0..3 or baseval_fold0..3"):
        get("pascal-5i").pairs(src, "val")


@pytest.mark.parametrize("bench, short", [("pascal-5i", "pascal"), ("coco-20i", "coco")])
@pytest.mark.parametrize("fold", range(4))
def test_fold_recipes_hold_out_exactly_the_folds_novel_classes(bench, short, fold):
    cfg = load_config(REPO / f"configs/zeroshot/{short}_fold{fold}.yaml")
    b = get_benchmark(bench)
    assert cfg.data.holdout_classes == [b.class_names[c] for c in b.novel_classes(fold)]
    assert (cfg.data.label_space, cfg.data.train_datasets, cfg.data.val_datasets) == (bench, [bench], [bench])
    assert (cfg.data.train_split, cfg.data.val_split) == (f"train_fold{fold}", f"baseval_fold{fold}")
    assert cfg.data.holdout_label_as is None and cfg.model.backbone == "resnet101"
    check_label_space(cfg.data)
    per_epoch = -(-len(split_images(bench, "train", fold)) // 32)
    assert cfg.eval.every == cfg.train.ckpt_every == per_epoch and cfg.train.max_steps == 10 * per_epoch
