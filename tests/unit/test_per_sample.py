"""train.label_set=per_sample: the per-batch label set, the fss-1000 dataset it trains on, the checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg import data as lseg_data
from lseg.config import ConfigError, load_config
from lseg.data.datasets import open_dataset
from lseg.data.errors import DataError
from lseg.engine.per_sample import PerSampleLabels, batch_label_set, check_label_set
from lseg.models import build_model
from lseg.zeroshot.benchmarks import get_benchmark
from lseg.zeroshot.readers import binary_target, read_mask
from lseg.zeroshot.splits import fss_categories, label_names

FSS = ["data.label_space=fss-1000", "data.train_datasets=[fss-1000]", "data.val_datasets=[fss-1000]",
       "data.train_split=train", "data.val_split=baseval", "train.label_set=per_sample", "data.num_workers=0",
       "model.text.layers=1"]


@pytest.fixture(scope="module")
def fss_root(tmp_path_factory) -> Path:
    """3 images per trn category (1560 in all): 156 of them (every 10th) form baseval."""
    from lseg.zeroshot.synthetic import write_fss

    root = tmp_path_factory.mktemp("fss")
    write_fss(root / "Datasets_HSN", images_per_class=1, train_images=3, size=16, seed=0)
    return root


def _cfg(root: Path, *extra: str):
    return load_config("configs/smoke.yaml", [f"data.root={root}", *FSS, *extra])


def test_batch_label_set_is_others_plus_the_sorted_distinct_classes():
    class_ids = torch.tensor([7, 3, 7, 12])
    labels = torch.tensor([[[0, 1, 255]], [[1, 1, 0]], [[1, 0, 0]], [[255, 0, 1]]])
    classes, out = batch_label_set(class_ids, labels)
    assert classes.tolist() == [3, 7, 12]  # label set: others, 3, 7, 12 -> indices 0, 1, 2, 3
    assert out.tolist() == [[[0, 2, 255]], [[1, 1, 0]], [[2, 0, 0]], [[255, 0, 3]]]
    assert out.dtype == labels.dtype


def test_fss_splits_partition_the_trn_images_every_10th_is_baseval(fss_root):
    cfg = _cfg(fss_root)
    train = open_dataset(cfg.data, "fss-1000", "train")
    val = open_dataset(cfg.data, "fss-1000", "baseval")
    cats = fss_categories("trn")
    listing = [(c, f"{cat}/{n}.jpg") for c, cat in enumerate(cats) for n in (1, 2, 3)]
    keys = lambda ds: [(c, f"{p.parent.name}/{p.name}") for (p, _), c in zip(ds.pairs, ds.sample_class_ids)]
    assert keys(val) == listing[9::10] and len(val) == 156
    assert keys(train) == [x for i, x in enumerate(listing) if i % 10 != 9] and len(train) == 1404
    names = label_names("fewshot_fss.txt")
    assert all(names[c] == p.parent.name for (p, _), c in zip(train.pairs, train.sample_class_ids))
    assert val.sample_class_list.prompts == names  # prompts: the FSS label file, verbatim
    with pytest.raises(DataError, match="no split 'val'"):
        open_dataset(cfg.data, "fss-1000", "val")


def test_fss_masks_binarise_with_the_benchmark_rule_and_padding_stays_ignored(fss_root):
    cfg = _cfg(fss_root)
    ds = open_dataset(cfg.data, "fss-1000", "train")
    image_path, mask_path = ds.pairs[0]
    _, label = ds.load(0)
    bench = get_benchmark("fss-1000")
    expected = binary_target(bench, read_mask(bench, mask_path), ds.sample_class_ids[0])
    assert np.array_equal(np.asarray(label), expected.numpy())
    assert set(np.unique(np.asarray(Image.open(mask_path)))) == {0, 100, 160, 255}  # soft edge: 100 -> 0, 160 -> 1
    # base 104 > crop 96 at scale 0.75 pads: padding must be 255 (ignore), not object
    train_set = lseg_data.build_train_set(cfg)
    values = set()
    for key in range(8):
        s = train_set[(key, key)]
        values |= set(s["label"].unique().tolist())
        assert s["class_id"] == train_set.datasets[0].sample_class_ids[key]
    assert values == {0, 1, 255}


def test_per_sample_batch_indexes_embeddings_computed_once(fss_root):
    cfg = _cfg(fss_root)
    labels = PerSampleLabels(cfg)
    assert labels.prompts == ["others", *fss_categories("trn")]  # every trn class is in train or baseval
    text = build_model(cfg.model).text
    labels.encode(text, torch.device("cpu"))
    out, features = labels.batch(torch.tensor([5, 2, 5]), torch.ones(3, 1, 2, dtype=torch.int64))
    assert out[:, 0, 0].tolist() == [2, 1, 2]
    names = label_names("fewshot_fss.txt")
    assert torch.equal(features, text.encode(["others", names[2], names[5]]))


def test_per_sample_and_run_mode_checks(fss_root):
    with pytest.raises(DataError, match="train it with train.label_set=per_sample"):
        check_label_set(_cfg(fss_root, "train.label_set=run"))
    with pytest.raises(ConfigError, match="data.holdout_classes: not used with train.label_set=per_sample"):
        _cfg(fss_root, "data.holdout_classes=[acorn]")
    with pytest.raises(ConfigError, match="train.label_set"):
        _cfg(fss_root, "train.label_set=batch")


def test_fss_recipe_trains_per_sample_on_trn_and_selects_on_baseval():
    cfg = load_config("configs/zeroshot/fss.yaml")
    assert (cfg.train.label_set, cfg.data.train_split, cfg.data.val_split) == ("per_sample", "train", "baseval")
    assert cfg.model.backbone == "resnet101" and cfg.data.holdout_classes == []
    steps_per_epoch = (4680 // 8) // cfg.train.batch_size  # 8 GPUs; drop-last sampler
    assert steps_per_epoch == 146 == cfg.eval.every and cfg.train.max_steps == 20 * steps_per_epoch
    assert cfg.optim.lr == 0.004 / 16 * cfg.train.batch_size
