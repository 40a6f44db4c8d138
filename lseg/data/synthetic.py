"""Synthetic datasets in exactly the on-disk layout of each registered dataset.

Why: the quickstart, the tests and the loader benchmark need data that exercises the real code
path (split lists or folder scans, JPEG + 8-bit PNG decoding, raw values -> label-space ids)
without the 100+ GB download. ``layout="mseg"`` (:func:`make_synthetic_mseg`) writes under ``output``::

    ADE20K/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ADE20K/ADEChallengeData2016/annotations_semseg150_relabeled/{training,validation}/<stem>.png
    COCOPanoptic/images/{train2017,val2017}/%012d.jpg
    COCOPanoptic/semantic_relabeled133/{train2017,val2017}/<stem>.png
    dataset_lists/<dataset>/list/{train,val}.txt      (mseg-api's list format)

``data.root=<output>`` then finds ``<output>/dataset_lists`` on its own (see
``lseg.data.paths.resolve_lists_root``). Labels hold ids of each dataset's *real* relabeled
taxonomy. Every universal class has its own colour (a 6x6x6 RGB grid, ids spread by a stride so
neighbouring ids look different) plus mild noise, so a tiny model learns colour -> class quickly.

The other layouts (:func:`make_synthetic`) follow the real releases::

    ade20k-150   ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg,
                 ADEChallengeData2016/annotations/{training,validation}/<stem>.png (0 = unlabeled, k = class k-1)
    foodseg103   FoodSeg103/category_id.txt (the real 104 names), FoodSeg103/Images/img_dir/{train,test}/%08d.jpg,
                 FoodSeg103/Images/ann_dir/{train,test}/<stem>.png (0 = background, a class)
    folder       classes.txt, images/%05d.jpg, masks/<stem>.png (255 = unlabeled), train.txt / val.txt (stems)

Colours there follow the dataset's own class id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lseg.data.paths import DATASET_DIRS, SUPPORTED_DATASETS
from lseg.data.taxonomy import IGNORE_INDEX, Taxonomy, load_taxonomy

_LEVELS = np.array([0, 51, 102, 153, 204, 255], dtype=np.int16)
_IGNORE_COLOUR = (90, 90, 90)


@dataclass(frozen=True)
class _Layout:
    images: str
    labels: str
    split_dirs: dict[str, str]
    stem: str  # format with (split word, number)


_LAYOUTS = {
    "ade20k-150-relabeled": _Layout("images", "annotations_semseg150_relabeled",
                                    {"train": "training", "val": "validation"}, "ADE_{word}_{num:08d}"),
    "coco-panoptic-133-relabeled": _Layout("images", "semantic_relabeled133",
                                           {"train": "train2017", "val": "val2017"}, "{num:012d}"),
}


def class_colour(uid: int) -> tuple[int, int, int]:
    """Distinct RGB colour of universal class ``uid`` (0..215 are all different)."""
    cell = (uid * 67) % 216  # 67 is coprime with 216: a bijection that scatters neighbours
    return int(_LEVELS[cell // 36]), int(_LEVELS[(cell // 6) % 6]), int(_LEVELS[cell % 6])


def _palette(tax: Taxonomy, dataset: str) -> np.ndarray:
    """(256, 3) colour of each dataset id (via its universal id); 255 gets a neutral grey."""
    pal = np.tile(np.array(_IGNORE_COLOUR, dtype=np.int16), (256, 1))
    table = tax.table(dataset)
    for did in range(len(tax.dataset_classes[dataset])):
        uid = int(table[did])
        if uid != IGNORE_INDEX:
            pal[did] = class_colour(uid)
    return pal


def class_pool(tax: Taxonomy, datasets: list[str], num_classes: int, seed: int) -> list[int]:
    """Universal ids to draw from: ``num_classes`` shared by all datasets (0 = each one's all)."""
    covered = [set(int(u) for u in tax.table(ds)[: len(tax.dataset_classes[ds])]) for ds in datasets]
    shared = sorted(set.intersection(*covered) - {IGNORE_INDEX})
    if num_classes <= 0 or num_classes >= len(shared):
        return shared if num_classes > 0 else []
    rng = np.random.default_rng([seed, 7])
    return sorted(int(u) for u in rng.choice(shared, size=num_classes, replace=False))


def _draw_label(rng: np.random.Generator, ids: np.ndarray, h: int, w: int,
                unlabeled: int | None = IGNORE_INDEX) -> Image.Image:
    """Background class plus 1-4 rectangles/ellipses of other classes, sometimes an unlabeled blob."""
    label = Image.new("L", (w, h), int(rng.choice(ids)))
    draw = ImageDraw.Draw(label)
    shapes = [(int(rng.choice(ids)), None) for _ in range(int(rng.integers(1, 5)))]
    if rng.random() < 0.3 and unlabeled is not None:
        shapes.append((unlabeled, "ellipse"))
    for value, kind in shapes:
        bw, bh = int(w * rng.uniform(0.2, 0.6)), int(h * rng.uniform(0.2, 0.6))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        kind = kind or ("ellipse" if rng.random() < 0.5 else "rectangle")
        if value == unlabeled:
            bw, bh = max(2, bw // 3), max(2, bh // 3)
        box = (x0, y0, x0 + bw - 1, y0 + bh - 1)
        (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=value)
    return label


def _render(rng: np.random.Generator, label: Image.Image, palette: np.ndarray) -> Image.Image:
    arr = palette[np.asarray(label)] + rng.normal(0.0, 6.0, size=(label.size[1], label.size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def make_synthetic_mseg(output: str | Path, num_train: int = 48, num_val: int = 16,
                        size: tuple[int, int] = (120, 160), seed: int = 0, num_classes: int = 24,
                        datasets: list[str] | None = None, mseg_root: str | Path | None = None,
                        jpeg_quality: int = 90) -> dict[str, dict[str, int]]:
    """Write the synthetic datasets; returns {dataset: {split: count}}. ``size`` is (H, W)."""
    out = Path(output)
    datasets = list(datasets or SUPPORTED_DATASETS)
    tax = load_taxonomy(mseg_root)
    pool = class_pool(tax, datasets, num_classes, seed)
    h, w = size
    written: dict[str, dict[str, int]] = {}
    for d_num, ds in enumerate(datasets):
        layout, root = _LAYOUTS[ds], out / DATASET_DIRS[ds]
        n_classes = len(tax.dataset_classes[ds])
        to_ds = {int(tax.table(ds)[k]): k for k in range(n_classes)}
        ids = np.array([to_ds[u] for u in pool] if pool else list(range(n_classes)), dtype=np.int64)
        palette = _palette(tax, ds)
        written[ds] = {}
        for s_num, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            sub = layout.split_dirs[split]
            (root / layout.images / sub).mkdir(parents=True, exist_ok=True)
            (root / layout.labels / sub).mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(count):
                rng = np.random.default_rng([seed, d_num, s_num, i])
                stem = layout.stem.format(word=split, num=i + 1)
                label = _draw_label(rng, ids, h, w)
                image_rel = f"{layout.images}/{sub}/{stem}.jpg"
                label_rel = f"{layout.labels}/{sub}/{stem}.png"
                _render(rng, label, palette).save(root / image_rel, quality=jpeg_quality)
                label.save(root / label_rel)
                lines.append(f"{image_rel} {label_rel}\n")
            list_path = out / "dataset_lists" / ds / "list" / f"{split}.txt"
            list_path.parent.mkdir(parents=True, exist_ok=True)
            list_path.write_text("".join(lines))
            written[ds][split] = count
    info = {"generator": "tools/make_synthetic_mseg.py", "seed": seed, "size_hw": [h, w],
            "universal_class_pool": pool, "counts": written}
    (out / "synthetic_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return written


# ------------------------------------------------------------------ the other layouts
#: FoodSeg103's category_id.txt, in id order (0 = background).
FOODSEG103_CLASSES = (
    "background", "candy", "egg tart", "french fries", "chocolate", "biscuit", "popcorn", "pudding", "ice cream",
    "cheese butter", "cake", "wine", "milkshake", "coffee", "juice", "milk", "tea", "almond", "red beans",
    "cashew", "dried cranberries", "soy", "walnut", "peanut", "egg", "apple", "date", "apricot", "avocado",
    "banana", "strawberry", "cherry", "blueberry", "raspberry", "mango", "olives", "peach", "lemon", "pear",
    "fig", "pineapple", "grape", "kiwi", "melon", "orange", "watermelon", "steak", "pork", "chicken duck",
    "sausage", "fried meat", "lamb", "sauce", "crab", "fish", "shellfish", "shrimp", "soup", "bread", "corn",
    "hamburg", "pizza", "hanamaki baozi", "wonton dumplings", "pasta", "noodles", "rice", "pie", "tofu",
    "eggplant", "potato", "garlic", "cauliflower", "tomato", "kelp", "seaweed", "spring onion", "rape", "ginger",
    "okra", "lettuce", "pumpkin", "cucumber", "white radish", "carrot", "asparagus", "bamboo shoots", "broccoli",
    "celery stick", "cilantro mint", "snow peas", "cabbage", "bean sprouts", "onion", "pepper", "green beans",
    "French beans", "king oyster mushroom", "shiitake", "enoki mushroom", "oyster mushroom",
    "white button mushroom", "salad", "other ingredients",
)
FOLDER_CLASSES = ("sky", "grass", "road", "building", "tree", "water", "person", "car", "dog", "cat", "bicycle", "boat")
LAYOUTS = ("mseg", "ade20k-150", "foodseg103", "folder")


@dataclass(frozen=True)
class _Release:
    root: str  # folder under output
    images: str  # format with split folder
    masks: str
    splits: dict[str, str]
    stem: str  # format with (word, num)
    num_classes: int
    offset: int  # mask value of class 0
    unlabeled: int | None  # mask value of unlabeled blobs (None: the release has none)


_RELEASES = {
    "ade20k-150": _Release("ADEChallengeData2016", "images/{split}", "annotations/{split}",
                           {"train": "training", "val": "validation"}, "ADE_{word}_{num:08d}", 150, 1, 0),
    "foodseg103": _Release("FoodSeg103", "Images/img_dir/{split}", "Images/ann_dir/{split}",
                           {"train": "train", "val": "test"}, "{num:08d}", len(FOODSEG103_CLASSES), 0, None),
    "folder": _Release(".", "images", "masks", {"train": "train", "val": "val"}, "{word}_{num:05d}",
                       len(FOLDER_CLASSES), 0, IGNORE_INDEX),
}


def make_synthetic(output: str | Path, layout: str = "mseg", num_train: int = 48, num_val: int = 16,
                   size: tuple[int, int] = (120, 160), seed: int = 0, num_classes: int = 24,
                   datasets: list[str] | None = None, mseg_root: str | Path | None = None,
                   jpeg_quality: int = 90) -> dict[str, dict[str, int]]:
    """Write one layout (``LAYOUTS``); returns {dataset: {split: count}}. ``size`` is (H, W).

    ``num_classes``: classes drawn from (0 = all of the dataset's); ``datasets`` only for ``mseg``.
    """
    if layout == "mseg":
        return make_synthetic_mseg(output, num_train, num_val, size, seed, num_classes, datasets, mseg_root,
                                   jpeg_quality)
    if layout not in _RELEASES:
        raise ValueError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    rel, out = _RELEASES[layout], Path(output)
    root = out / rel.root
    n = rel.num_classes
    classes = np.arange(n) if num_classes <= 0 or num_classes >= n else \
        np.sort(np.random.default_rng([seed, 11]).choice(n, size=num_classes, replace=False))
    palette = np.tile(np.array(_IGNORE_COLOUR, dtype=np.int16), (256, 1))
    for c in range(n):
        palette[c + rel.offset] = class_colour(c)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "foodseg103":
        (root / "category_id.txt").write_text("".join(f"{i}\t{name}\n" for i, name in enumerate(FOODSEG103_CLASSES)))
    elif layout == "folder":
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in FOLDER_CLASSES))
    h, w = size
    written: dict[str, int] = {}
    for s_num, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        sub = rel.splits[split]
        image_dir, mask_dir = root / rel.images.format(split=sub), root / rel.masks.format(split=sub)
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        stems = []
        for i in range(count):
            rng = np.random.default_rng([seed, 100 + LAYOUTS.index(layout), s_num, i])
            stem = rel.stem.format(word=split, num=i + 1)
            label = _draw_label(rng, classes + rel.offset, h, w, rel.unlabeled)
            _render(rng, label, palette).save(image_dir / f"{stem}.jpg", quality=jpeg_quality)
            label.save(mask_dir / f"{stem}.png")
            stems.append(stem)
        if layout == "folder":
            (root / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
        written[split] = count
    return {layout: written}
