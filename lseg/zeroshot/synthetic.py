"""Tiny benchmarks in the exact HSNet layouts, with the real class lists and split files.

Why: the protocols, readers and the evaluation tool must run end to end in tests and on a laptop
without the real datasets. Each benchmark gets only the images its episodes need: for each
requested fold, the images of the first ``episodes`` official episodes and of the first
``episodes`` fair pairs (``episodes=1000`` covers the whole official lists), plus the first
``train_images`` entries of each training list. Masks follow each encoding: PASCAL class + 1 with
a one-pixel 255 void ring, COCO class + 1 with a small 255 blob (background there), FSS grayscale
0 / 255 with a soft 100 / 160 edge (the 128 threshold decides). An image's mask holds every class
the split files list for it, so every episode finds its class.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from lseg.zeroshot.benchmarks import BENCHMARKS, FSS_TEST_OFFSET, get_benchmark
from lseg.zeroshot.episodes import Episode, fair_pairs, official_episodes
from lseg.zeroshot.splits import coco_lists, fss_categories, pascal_pairs


def _rng(key: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(key.encode()), seed])


def _colour(class_id: int) -> np.ndarray:
    return np.array([(class_id * 67) % 256, (class_id * 131 + 80) % 256, (class_id * 29 + 160) % 256], np.uint8)


def _draw(key: str, classes: Iterable[int], size: int, seed: int, void_ring: bool,
          value: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB image and class-index mask (class + 1, or ``value``) with one rectangle per class."""
    rng = _rng(key, seed)
    h, w = size, size + size // 4  # not square: the official resize distorts the aspect ratio
    image = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for c in sorted(set(classes)):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + int(rng.integers(h // 4, h // 2)), x0 + int(rng.integers(w // 4, w // 2))
        if void_ring:
            mask[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 255
        mask[y0:y1, x0:x1] = c + 1 if value is None else value
        image[y0:y1, x0:x1] = _colour(c)
    return image, mask


def _save(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path, quality=92)
    Image.fromarray(mask, mode="L").save(mask_path)


def _needed(name: str, folds: Sequence[int], episodes: int, root: Path) -> list[Episode]:
    bench = get_benchmark(name)
    out: list[Episode] = []
    for f in folds:
        out += official_episodes(bench, f, root)[:episodes] + fair_pairs(bench, f, root)[:episodes]
    return out


def write_pascal(root: Path, folds: Sequence[int], episodes: int, train_images: int, size: int, seed: int) -> int:
    classes: dict[str, set[int]] = {}
    for split in ("val", "trn"):
        for f in range(4):
            for image, c in pascal_pairs(split, f):
                classes.setdefault(image, set()).add(c)
    keys = {e.key for e in _needed("pascal-5i", folds, episodes, root)}
    for f in range(4):
        keys |= {image for image, _ in pascal_pairs("trn", f)[:train_images]}
    for key in sorted(keys):
        image, mask = _draw(key, classes[key], size, seed, void_ring=True)
        _save(image, mask, root / "VOC2012/JPEGImages" / f"{key}.jpg", root / "VOC2012/SegmentationClassAug" / f"{key}.png")
    return len(keys)


def write_coco(root: Path, folds: Sequence[int], episodes: int, train_images: int, size: int, seed: int) -> int:
    classes: dict[str, set[int]] = {}
    for split in ("val", "trn"):
        for f in range(4):
            for c, paths in coco_lists(split, f).items():
                for p in paths:
                    classes.setdefault(p, set()).add(c)
    keys = {e.key for e in _needed("coco-20i", folds, episodes, root)}
    for f in folds:
        keys |= {p for paths in coco_lists("trn", f).values() for p in paths[:train_images]}
    for sub in ("train2014", "val2014"):
        (root / "COCO2014" / sub).mkdir(parents=True, exist_ok=True)
        (root / "COCO2014/annotations" / sub).mkdir(parents=True, exist_ok=True)
    for key in sorted(keys):
        image, mask = _draw(key, classes[key], size, seed, void_ring=False)
        mask[-3:, -3:] = 255  # HSNet COCO masks may hold 255: background for every episode
        _save(image, mask, root / "COCO2014" / key, root / "COCO2014/annotations" / (key[:-4] + ".png"))
    return len(keys)


def write_fss(root: Path, images_per_class: int, train_images: int, size: int, seed: int) -> int:
    count = 0
    for split, n in (("test", images_per_class), ("trn", train_images), ("val", train_images)):
        for rank, cat in enumerate(fss_categories(split)):
            folder = root / "FSS-1000" / cat
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(1, n + 1):
                cls = FSS_TEST_OFFSET + rank if split == "test" else rank
                image, mask = _draw(f"{cat}/{i}", [cls], size, seed, void_ring=True, value=1)
                gray = np.where(mask == 255, 100, np.where(mask > 0, 255, 0)).astype(np.uint8)
                gray[(mask > 0) & (mask != 255) & (np.arange(mask.shape[1]) % 7 == 0)] = 160
                _save(image, gray, folder / f"{i}.jpg", folder / f"{i}.png")
                count += 1
    return count


def write_synthetic(out: str | Path, benchmarks: Sequence[str] = tuple(BENCHMARKS), folds: Sequence[int] = (0, 1, 2, 3),
                    episodes: int = 1000, train_images: int = 2, fss_images: int = 2, size: int = 32,
                    seed: int = 0) -> dict[str, int]:
    """Write the benchmarks under ``out``; returns the number of images written per benchmark."""
    root = Path(out)
    written = {}
    for name in benchmarks:
        if name == "pascal-5i":
            written[name] = write_pascal(root, folds, episodes, train_images, size, seed)
        elif name == "coco-20i":
            written[name] = write_coco(root, folds, episodes, train_images, size, seed)
        else:
            written[name] = write_fss(root, fss_images, train_images, size, seed)
    return written
