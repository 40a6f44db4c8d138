"""lseg.data.registry + builtin + synthetic layouts: datasets, label spaces, remapping, bad data."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.config import load_config
from lseg.data import (
    DataError, DatasetSpec, Encoding, build_train_loader, build_val_loader, class_names, label_space, load_taxonomy,
    open_dataset, register, write_class_names,
)
from lseg.data import registry
from lseg.data.builtin import ade20k_classes, scan_pairs
from lseg.data.datasets import BadSample, SegmentationSet
from lseg.data.registry import ClassList, Source
from lseg.data.synthetic import FOLDER_CLASSES, FOODSEG103_CLASSES, LAYOUTS, make_synthetic
from lseg.data.taxonomy import read_names

from helpers import SMOKE

ADE150, FOOD = "ade20k-150", "foodseg103"
NUM_TRAIN, NUM_VAL = 6, 3


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, mseg_root) -> Path:
    """Every layout in one data root (as a user could keep them), 48x64 images."""
    out = tmp_path_factory.mktemp("layouts")
    for layout in LAYOUTS:
        make_synthetic(out, layout, NUM_TRAIN, NUM_VAL, size=(48, 64), seed=1, num_classes=10, mseg_root=mseg_root)
    return out


def cfg_for(root: Path, dataset: str, space: str | None = None, *overrides: str):
    return load_config(SMOKE, [f"data.root={root}", "data.num_workers=0", "train.batch_size=2",
                               f"data.train_datasets=[{dataset}]", f"data.val_datasets=[{dataset}]",
                               f"data.label_space={space or dataset}", *overrides])


def raw_pairs(root: Path, dataset: str, split: str = "train") -> list[tuple[Path, Path]]:
    d = cfg_for(root, dataset).data
    return registry.get(dataset).pairs(registry.source(d, dataset), split)


def untransformed(ds) -> SegmentationSet:
    return SegmentationSet([ds], lambda image, label, seed: (image, label), "error", replace="resample")


# ------------------------------------------------------------------------------------ the registry


def test_builtin_names_and_unknown_dataset_suggestion():
    assert registry.names()[:5] == ("ade20k-150-relabeled", "coco-panoptic-133-relabeled", ADE150, FOOD, "folder")
    with pytest.raises(DataError, match=r"unknown dataset 'foodseg' \(did you mean 'foodseg103'\?\): supported are"):
        registry.get("foodseg")


def test_encoding_tables_are_exact():
    ade = Encoding(ignore=(0,), offset=1).class_table(150)
    assert ade[0] == 255 and ade[1] == 0 and ade[150] == 149 and ade[151] == -1 and ade[255] == -1
    food = Encoding().class_table(104)
    assert food[:104].tolist() == list(range(104)) and food[255] == 255 and (food[104:255] == -1).all()
    assert Encoding(ignore=(0,), offset=1).describe(150) == "1..150, 0"
    assert Encoding().describe(104) == "0..103, 255"


def test_a_new_dataset_is_one_entry(tmp_path, monkeypatch):
    """A spec supplying its own pair listing and class names trains through the common loader."""
    (tmp_path / "toy").mkdir()
    img, mask = tmp_path / "toy/a.jpg", tmp_path / "toy/a.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(img)
    Image.fromarray(np.array([[1, 2], [3, 9]], dtype=np.uint8).repeat(16, 0).repeat(16, 1)).save(mask)
    spec = DatasetSpec("toy-3", "toy", lambda src, split: [(src.root / "a.jpg", src.root / "a.png")],
                       lambda src: ClassList(("x", "y", "z"), ("ex", "why", "zed")),
                       lambda src: Encoding(ignore=(9,), offset=1))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register(spec)
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    cfg = cfg_for(tmp_path, "toy-3")
    assert class_names(cfg) == ["ex", "why", "zed"]
    sample = untransformed(open_dataset(cfg.data, "toy-3", "train"))[0]
    assert torch.equal(sample["label"][::16, ::16], torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8))


def test_data_roots_override_and_missing_folders(layouts, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(layouts / "FoodSeg103", moved)
    cfg = cfg_for(tmp_path / "empty_root_is_unused", FOOD, None, f"data.roots.foodseg103={moved}")
    assert open_dataset(cfg.data, FOOD, "train").pairs[0][0].parent == moved / "Images/img_dir/train"
    with pytest.raises(DataError, match=f"data.roots.foodseg103 not found: {tmp_path / 'nope'}"):
        open_dataset(cfg_for(layouts, FOOD, None, f"data.roots.foodseg103={tmp_path / 'nope'}").data, FOOD, "train")
    with pytest.raises(DataError, match=r"dataset folder not found: .*FoodSeg103 \(foodseg103 under data.root=.*"
                                        r"or set data.roots.foodseg103=/path/to/it\)"):
        open_dataset(cfg_for(tmp_path, FOOD).data, FOOD, "train")
    with pytest.raises(DataError, match="foodseg103 has no split 'testing'"):
        open_dataset(cfg_for(layouts, FOOD, None, "data.val_split=testing").data, FOOD, "testing")


# ------------------------------------------------------------------------------------ label spaces


def test_ade20k_150_names_prompts_and_universal_table(mseg_root):
    ade = ade20k_classes()
    assert len(ade.names) == len(set(ade.names)) == 150 and len(ade.prompts) == 150
    assert read_names(Path(mseg_root), "ade20k-151") == ["unlabeled", *ade.names]  # ADE's mask-value order
    # the official prompts: first synonym cut at ';' (multi-word names truncated, 'screen' twice)
    assert ade.prompts[:4] == ("wall", "building", "sky", "floor")
    assert (ade.names[64], ade.prompts[64]) == ("coffee table", "coffee")
    assert [i for i, p in enumerate(ade.prompts) if p == "screen"] == [58, 130]
    tax = load_taxonomy(mseg_root)
    src = Source(ADE150, Path("."), load_config(None).data)
    lut = registry.space_table(src, "universal").lut
    uni = {raw: tax.universal[lut[raw]] if lut[raw] != 255 else None for raw in range(151)}
    assert uni[0] is None  # ADE 0 = unlabeled
    assert (uni[1], uni[3], uni[5], uni[9], uni[10], uni[13], uni[18]) == (
        "wall", "sky", "vegetation", "window", "terrain", "person", None)  # plant has no universal class
    own = registry.space_table(src, ADE150)
    assert own.lut[1:151].tolist() == list(range(150)) and own.lut[0] == 255
    assert own.invalid == tuple(range(151, 256)) and own.valid_text == "1..150, 0"


def test_class_names_follow_the_label_space(layouts, tmp_path, mseg_root):
    assert class_names(cfg_for(layouts, ADE150)) == list(ade20k_classes().prompts)
    assert class_names(cfg_for(layouts, FOOD)) == list(FOODSEG103_CLASSES)
    assert class_names(cfg_for(layouts, "folder")) == list(FOLDER_CLASSES)
    assert len(class_names(cfg_for(layouts, ADE150, "universal"))) == 194
    over = tmp_path / "food.yaml"
    over.write_text("french fries: chips\n0: plate\n")
    cfg = cfg_for(layouts, FOOD, None, f"data.class_names_file={over}")
    names = class_names(cfg)
    assert names[3] == "chips" and names[0] == "plate" and names[1] == "candy"
    assert label_space(cfg).classes[3] == "french fries"  # identifiers stay the dataset's
    assert write_class_names(cfg, tmp_path / "run").read_text().splitlines() == names
    over.write_text("frenchfries: chips\n")
    with pytest.raises(DataError, match="'frenchfries' is not a foodseg103 class name or id"):
        class_names(cfg)


def test_datasets_must_map_into_the_label_space(layouts):
    with pytest.raises(DataError) as exc:
        class_names(cfg_for(layouts, FOOD, "universal"))
    assert str(exc.value) == ("data.train_datasets: foodseg103 has no mapping into data.label_space=universal "
                              "(it maps into foodseg103): set data.label_space=foodseg103 or use another dataset")
    with pytest.raises(DataError, match="data.val_datasets: folder has no mapping into data.label_space=foodseg103"):
        class_names(cfg_for(layouts, FOOD, None, "data.val_datasets=[folder]"))
    with pytest.raises(DataError, match=r"unknown label space 'ade20k' \(did you mean 'ade20k-150'\?\)"):
        class_names(cfg_for(layouts, ADE150, "ade20k"))


# ------------------------------------------------------------------------------------ loaders per layout


@pytest.mark.parametrize("dataset, space, split_dir", [
    (ADE150, ADE150, "images/training"), (ADE150, "universal", "images/training"),
    (FOOD, FOOD, "Images/img_dir/train"), ("folder", "folder", "images"),
])
def test_labels_are_label_space_ids_of_the_raw_masks(layouts, dataset, space, split_dir):
    cfg = cfg_for(layouts, dataset, space)
    ds = open_dataset(cfg.data, dataset, "train")
    assert len(ds) == NUM_TRAIN and split_dir in str(ds.pairs[0][0])
    table = registry.space_table(registry.source(cfg.data, dataset), space).lut
    for i in range(len(ds)):
        raw = np.asarray(Image.open(ds.pairs[i][1]))
        assert torch.equal(untransformed(ds)[i]["label"], torch.from_numpy(table[raw]))
    batch = next(iter(build_train_loader(cfg, 0, 1, epoch=0)))
    assert batch["label"].shape == (2, 96, 96) and int(batch["label"][batch["label"] != 255].max()) < len(class_names(cfg))
    val = [b["index"].tolist() for b in build_val_loader(cfg, dataset, max_samples=None)]
    assert sum(val, []) == list(range(NUM_VAL))


def test_synthetic_layouts_match_the_releases(layouts):
    food = layouts / "FoodSeg103"
    lines = (food / "category_id.txt").read_text().splitlines()
    assert len(lines) == 104 and lines[0] == "0\tbackground" and lines[103] == "103\tother ingredients"
    assert sorted(p.name for p in (food / "Images/img_dir/test").iterdir()) == [f"{i:08d}.jpg" for i in (1, 2, 3)]
    ade = layouts / "ADEChallengeData2016"
    assert (ade / "annotations/validation/ADE_val_00000001.png").is_file()
    ade_values = set(np.unique(np.concatenate([np.asarray(Image.open(m)).ravel()
                                               for _, m in raw_pairs(layouts, ADE150)])).tolist())
    assert ade_values <= set(range(151)) and 0 in ade_values  # 0 = unlabeled blobs
    assert (layouts / "train.txt").read_text().split() == [f"train_{i:05d}" for i in range(1, NUM_TRAIN + 1)]
    assert (layouts / "classes.txt").read_text().splitlines() == list(FOLDER_CLASSES)


def test_folder_list_files_scan_and_encoding(layouts, tmp_path):
    root = tmp_path / "mine"
    for sub in ("images", "masks"):
        shutil.copytree(layouts / sub, root / sub)
    shutil.copy(layouts / "classes.txt", root)
    cfg = cfg_for(root, "folder")
    assert len(open_dataset(cfg.data, "folder", "train")) == len(open_dataset(cfg.data, "folder", "val")) == 9
    (root / "train.txt").write_text("train_00002\ntrain_00001.jpg\n")
    assert [p.stem for p, _ in open_dataset(cfg.data, "folder", "train").pairs] == ["train_00002", "train_00001"]
    with pytest.raises(DataError, match="split list for data split 'val' not found: .*val.txt"):
        open_dataset(cfg.data, "folder", "val")
    (root / "val.txt").write_text("val_00009\n")
    with pytest.raises(DataError, match=r"val.txt line 1: no image 'val_00009\.\*' in"):
        open_dataset(cfg.data, "folder", "val")
    src = registry.source(cfg_for(root, "folder", None, "data.folder.zero_is=ignore",
                                  "data.folder.ignore_index=200").data, "folder")
    t = registry.space_table(src, "folder")
    assert t.lut[0] == 255 and t.lut[1] == 0 and t.lut[12] == 11 and t.lut[200] == 255 and 13 in t.invalid


# ------------------------------------------------------------------------------------ bad data


def test_class_list_files_missing_duplicate_or_malformed(layouts, tmp_path):
    food = tmp_path / "FoodSeg103"
    shutil.copytree(layouts / "FoodSeg103", food)
    cat = food / "category_id.txt"
    cfg = cfg_for(tmp_path, FOOD)
    cat.write_text("0\tbackground\n1\tcandy\n2\tcandy\n")
    with pytest.raises(DataError, match=f"{cat}: class name 'candy' appears twice \\(lines 2 and 3\\)"):
        class_names(cfg)
    cat.write_text("0\tbackground\n2\tcandy\n")
    with pytest.raises(DataError, match=f"{cat} line 2: expected '1<TAB><class name>'"):
        class_names(cfg)
    cat.unlink()
    with pytest.raises(DataError, match=f"FoodSeg103 category_id.txt not found: {cat} \\(the release's file"):
        class_names(cfg)
    (tmp_path / "classes.txt").write_text("sky\ngrass\nsky\n")
    with pytest.raises(DataError, match="classes.txt: class name 'sky' appears twice"):
        class_names(cfg_for(tmp_path, "folder"))
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match=f"classes.txt not found: {tmp_path / 'classes.txt'}"):
        class_names(cfg_for(tmp_path, "folder"))


def test_colour_masks_stop_with_the_conversion(layouts, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(layouts / "FoodSeg103", root / "FoodSeg103")
    cfg = cfg_for(root, FOOD)
    ds = open_dataset(cfg.data, FOOD, "train")
    mask = ds.pairs[0][1]
    Image.open(mask).convert("RGB").save(mask)
    for policy in ("error", "skip"):  # a colour mask is not a bad sample that skipping would hide
        with pytest.raises(DataError) as exc:
            SegmentationSet([ds], lambda i, l, s: (i, l), policy)[0]
        msg = str(exc.value)
        assert msg.startswith(f"mask {mask} is a colour image (mode RGB), not an index PNG: ") and "\n" not in msg
        assert "Image.fromarray(ids.astype(np.uint8)).save(path)" in msg


def test_values_outside_the_class_list_and_images_without_masks(layouts, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(layouts / "ADEChallengeData2016", root / "ADEChallengeData2016")
    cfg = cfg_for(root, ADE150)
    ds = open_dataset(cfg.data, ADE150, "train")
    Image.new("L", (64, 48), 151).save(ds.pairs[0][1])
    ds.pairs[1][1].unlink()  # an image without its mask stays listed: reading it is a bad sample
    assert len(scan_pairs(registry.source(cfg.data, ADE150), ds.pairs[0][0].parent, ds.pairs[0][1].parent)) == 6
    with pytest.raises(BadSample, match=r"label values \[151\] outside the ade20k-150 taxonomy \(1..150, 0\)"):
        ds.load(0)
    with pytest.raises(BadSample, match="missing label file"):
        ds.load(1)
    skip = SegmentationSet([ds], lambda i, l, s: (i, l), "skip")
    assert skip[(1, 5)]["num_bad"] >= 1 and skip[(1, 5)]["index"] not in (1,)
