"""The built-in datasets: MSeg's two relabeled sets, ADE20K-150, FoodSeg103 and a user's own folder.

Each entry is the on-disk layout of the real release (see README "Datasets"); the synthetic
generator (``lseg.data.synthetic``) writes the same layouts. Split names ``train`` / ``val`` are
translated to each release's folder names (ADE20K: training / validation, FoodSeg103: train / test);
the release's own names work too.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from lseg.data.errors import DataError, read_user_text
from lseg.data.names import readable
from lseg.data.paths import DATASET_DIRS, resolve_lists_root, resolve_mseg_root, split_list_path
from lseg.data.registry import ClassList, DatasetSpec, Encoding, Source, register
from lseg.data.taxonomy import column_ids, load_taxonomy, read_names

LABEL_FILES = Path(__file__).resolve().parent / "label_files"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def split_folder(src: Source, split: str, folders: dict[str, str]) -> str:
    """``train``/``val`` (or the release's own folder name) -> the release's folder name."""
    if split in folders:
        return folders[split]
    if split in folders.values():
        return split
    raise DataError(f"{src.name} has no split '{split}' (data.train_split / data.val_split: "
                    f"{', '.join(folders)} or {', '.join(folders.values())})")


def scan_pairs(src: Source, image_dir: Path, mask_dir: Path, exts: tuple[str, ...] = (".jpg",)) -> list[tuple[Path, Path]]:
    """Every image in ``image_dir`` (sorted by name) with the mask of the same stem in ``mask_dir``.

    An image whose mask is missing stays in the list: reading it is a bad sample (``data.on_bad_sample``).
    """
    if not image_dir.is_dir():
        raise DataError(f"{src.name}: image folder not found: {image_dir}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not images:
        raise DataError(f"{src.name}: no {'/'.join(exts)} images in {image_dir}")
    return [(p, mask_dir / f"{p.stem}.png") for p in images]


def _lines(path: Path, what: str, fix: str) -> list[str]:
    """Non-empty lines of a small text file; a missing or undecodable file is one line naming the fix."""
    lines = [ln.rstrip("\r") for ln in read_user_text(path, what, fix).split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def unique_names(names: list[str], path: Path) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if not n:
            raise DataError(f"{path} line {i + 1}: empty class name (one name per line, no blank lines)")
        if n in seen:
            raise DataError(f"{path}: class name '{n}' appears twice (lines {seen[n] + 1} and {i + 1}); "
                            "class names must be unique")
        seen[n] = i
    if not names:
        raise DataError(f"{path}: no class names")
    return tuple(names)


# ------------------------------------------------------------------ MSeg relabeled (split lists, universal ids)
def _mseg_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    from lseg.data.datasets import read_split_list

    d = src.data
    lists = resolve_lists_root(d.root, d.lists_root, d.mseg_root)
    return [(src.root / a, src.root / b) for a, b in read_split_list(split_list_path(lists, src.name, split))]


def _mseg_classes(src: Source) -> ClassList:
    names = load_taxonomy(src.data.mseg_root).dataset_classes[src.name]
    return ClassList(tuple(names), tuple(readable(n) for n in names))


def _mseg_universal(src: Source, classes: ClassList) -> np.ndarray:
    return load_taxonomy(src.data.mseg_root).table(src.name)[: len(classes.names)]


for _name, _folder in DATASET_DIRS.items():
    register(DatasetSpec(
        _name, _folder, _mseg_pairs, _mseg_classes, lambda src: Encoding(), {"universal": _mseg_universal},
        hint="point it at MSEG_DST_DIR/mseg_dataset, or run tools/make_synthetic_mseg.py --output {root}"))


# ------------------------------------------------------------------ ADE20K-150 (ADEChallengeData2016)
ADE_SPLITS = {"train": "training", "val": "validation"}


@functools.lru_cache(maxsize=1)
def ade20k_classes() -> ClassList:
    """The 150 classes in mask-value order: full names and the official LSeg prompts (a carried file)."""
    path = LABEL_FILES / "ade20k-150.tsv"
    rows = [ln.split("\t") for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    return ClassList(tuple(r[0] for r in rows), tuple(r[1] for r in rows))


def _ade_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    sub = split_folder(src, split, ADE_SPLITS)
    return scan_pairs(src, src.root / "images" / sub, src.root / "annotations" / sub)


def _ade_universal(src: Source, classes: ClassList) -> np.ndarray:
    """ADE id -> universal id through MSeg's ``ade20k-150`` column, matched by class name.

    MSeg's ``ade20k-151`` names file lists the classes in ADE's mask-value order ('unlabeled' first),
    which must agree with the carried names; several ADE classes share a universal class and a few
    (e.g. plant, screen, computer) have none (-> ignore).
    """
    root = resolve_mseg_root(src.data.mseg_root)
    order = read_names(root, "ade20k-151")
    if order[0] != "unlabeled" or tuple(order[1:]) != classes.names:
        raise DataError(f"{root}: MSeg's ade20k-151 names do not list ADE20K's 150 classes in mask-value order")
    ids = column_ids(root, "ade20k-150")
    return np.array([ids[n] for n in classes.names], dtype=np.int64)


register(DatasetSpec(
    "ade20k-150", "ADEChallengeData2016", _ade_pairs, lambda src: ade20k_classes(),
    lambda src: Encoding(ignore=(0,), offset=1), {"universal": _ade_universal},
    hint="point it at the folder holding ADEChallengeData2016, set data.roots.ade20k-150, or run "
         "tools/make_synthetic_mseg.py --layout ade20k-150 --output {root}"))


# ------------------------------------------------------------------ FoodSeg103
FOODSEG_SPLITS = {"train": "train", "val": "test"}


def _food_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    sub = split_folder(src, split, FOODSEG_SPLITS)
    return scan_pairs(src, src.root / "Images" / "img_dir" / sub, src.root / "Images" / "ann_dir" / sub)


def _food_classes(src: Source) -> ClassList:
    """``category_id.txt``: ``<id>\\t<name>`` per line, ids 0, 1, 2, ... in order (0 = background, a class)."""
    path = src.root / "category_id.txt"
    names = []
    for i, line in enumerate(_lines(path, "FoodSeg103 category_id.txt",
                                    "the release's file: lines '<id><TAB><name>', 0 = background"), 1):
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != i - 1:
            raise DataError(f"{path} line {i}: expected '{i - 1}<TAB><class name>', got {line!r}")
        names.append(" ".join(parts[1].split()))
    names_t = unique_names(names, path)
    return ClassList(names_t, names_t)


register(DatasetSpec(
    "foodseg103", "FoodSeg103", _food_pairs, _food_classes, lambda src: Encoding(),
    hint="point it at the folder holding FoodSeg103, set data.roots.foodseg103, or run "
         "tools/make_synthetic_mseg.py --layout foodseg103 --output {root}"))


# ------------------------------------------------------------------ a user's own folder
def _folder_pairs(src: Source, split: str) -> list[tuple[Path, Path]]:
    """``<split>.txt`` (stems) when the folder has any list file, else every image for every split."""
    images = scan_pairs(src, src.root / "images", src.root / "masks", IMAGE_EXTS)
    lists = sorted(p.name for p in src.root.glob("*.txt") if p.name != "classes.txt")
    if not lists:
        return images
    by_stem: dict[str, tuple[Path, Path]] = {}
    for pair in images:
        if pair[0].stem in by_stem:
            raise DataError(f"{src.name}: two images with stem '{pair[0].stem}' in {src.root / 'images'}")
        by_stem[pair[0].stem] = pair
    path = src.root / f"{split}.txt"
    stems = _lines(path, f"split list for data split '{split}'", f"this folder has {', '.join(lists)}: "
                   "list the image stems of every split, or remove the list files to use all images")
    out = []
    for i, stem in enumerate(stems, 1):
        stem = Path(stem.strip()).stem
        if stem not in by_stem:
            raise DataError(f"{path} line {i}: no image '{stem}.*' in {src.root / 'images'}")
        out.append(by_stem[stem])
    if not out:
        raise DataError(f"split list is empty: {path}")
    return out


def _folder_classes(src: Source) -> ClassList:
    path = src.root / "classes.txt"
    names = unique_names([ln.strip() for ln in _lines(path, "classes.txt", "one class name per line, in "
                                                      "mask-value order (data.folder.zero_is)")], path)
    return ClassList(names, tuple(readable(n) for n in names))


def _folder_encoding(src: Source) -> Encoding:
    f = src.data.folder
    if f.zero_is == "ignore":
        return Encoding(ignore=tuple(sorted({0, f.ignore_index})), offset=1)
    return Encoding(ignore=(f.ignore_index,), offset=0)


register(DatasetSpec(
    "folder", ".", _folder_pairs, _folder_classes, _folder_encoding,
    hint="point it at your folder with images/, masks/ and classes.txt, or set data.roots.folder"))
