"""The HSNet on-disk layouts of the three benchmarks: folder checks, file paths, masks.

    ROOT/VOC2012/JPEGImages/<id>.jpg            ROOT/VOC2012/SegmentationClassAug/<id>.png
    ROOT/COCO2014/{train2014,val2014}/<name>.jpg ROOT/COCO2014/annotations/{train2014,val2014}/<name>.png
    ROOT/FSS-1000/<category>/<n>.jpg             ROOT/FSS-1000/<category>/<n>.png

Mask encodings: PASCAL and COCO masks hold class index + 1 (0 background; PASCAL 255 = void,
ignored in scoring; COCO treats 255 as background like any value that is not the episode's class);
FSS masks are grayscale, >= 128 is the object. A value above the benchmark's classes (other than
255) means the folder holds something else (e.g. colour masks) and stops the run with the file name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.benchmarks import Benchmark
from lseg.zeroshot.episodes import Episode
from lseg.zeroshot.splits import fss_categories

IGNORE = 255
#: FSS-1000 masks are read as grey; a value >= FSS_OBJECT_MIN is the object.
FSS_OBJECT_MIN = 128
LAYOUTS = {
    "pascal-5i": "ROOT/VOC2012/JPEGImages/<id>.jpg and ROOT/VOC2012/SegmentationClassAug/<id>.png",
    "coco-20i": "ROOT/COCO2014/{train2014,val2014}/*.jpg and ROOT/COCO2014/annotations/{train2014,val2014}/*.png",
    "fss-1000": "ROOT/FSS-1000/<category>/<n>.jpg and <n>.png for each category",
}


def required_paths(bench: Benchmark, root: Path, split: str = "test") -> list[Path]:
    """Folders a split needs, most general first (so the first missing one is the one to name).

    ``split``: ``test`` (what the protocols score: PASCAL/COCO val lists, FSS test categories) or
    a training-side split (``trn``; FSS also ``val``)."""
    if bench.name == "pascal-5i":
        return [root, root / "VOC2012", root / "VOC2012/JPEGImages", root / "VOC2012/SegmentationClassAug"]
    if bench.name == "coco-20i":
        sub = "val2014" if split == "test" else "train2014"
        return [root, root / "COCO2014", root / "COCO2014" / sub, root / "COCO2014/annotations" / sub]
    cats = fss_categories(split)
    return [root, root / "FSS-1000", *(root / "FSS-1000" / c for c in cats)]


def check_layout(bench: Benchmark, root: str | Path, split: str = "test") -> Path:
    """The data root, if every folder the split needs is there; else a one-line error naming the
    first missing folder and the expected layout."""
    root = Path(root)
    for p in required_paths(bench, root, split):
        if not p.is_dir():
            raise ZeroShotError(f"{p}: not found; {bench.name} expects the HSNet layout {LAYOUTS[bench.name]}")
    return root


def paths(bench: Benchmark, root: Path, ep: Episode) -> tuple[Path, Path]:
    """(image, mask) files of an episode."""
    if bench.name == "pascal-5i":
        return root / "VOC2012/JPEGImages" / f"{ep.key}.jpg", root / "VOC2012/SegmentationClassAug" / f"{ep.key}.png"
    if bench.name == "coco-20i":
        return root / "COCO2014" / ep.key, root / "COCO2014/annotations" / (ep.key[:-len(".jpg")] + ".png")
    image = root / "FSS-1000" / ep.key
    return image, image.with_name(image.name.split(".", 1)[0] + ".png")


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise ZeroShotError(f"{path}: not found (listed by the benchmark's split files)") from None
    except (OSError, SyntaxError) as exc:
        raise ZeroShotError(f"{path}: cannot read ({' '.join(str(exc).split())})") from None


def read_mask(bench: Benchmark, path: Path) -> np.ndarray:
    """The raw mask (H, W) uint8, checked against the benchmark's encoding."""
    img = _open(path)
    if bench.mask_rule == "fss":
        return np.array(img.convert("L"), dtype=np.uint8)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise ZeroShotError(f"{path}: mode {img.mode} mask; {bench.name} needs single-channel class-index PNGs "
                            "(0 background, class id + 1, 255 void)")
    mask = np.asarray(img)
    top = bench.max_mask_value()
    bad = (mask > top) & (mask != IGNORE)
    if bad.any():
        raise ZeroShotError(f"{path}: mask value {int(mask[bad].max())} is outside {bench.name}'s classes "
                            f"(0..{top} and {IGNORE})")
    return mask.astype(np.uint8)


def read_episode(bench: Benchmark, root: Path, ep: Episode) -> tuple[Image.Image, np.ndarray]:
    """RGB image and raw mask of one episode."""
    image_path, mask_path = paths(bench, root, ep)
    return _open(image_path).convert("RGB"), read_mask(bench, mask_path)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest resize to size x size with PyTorch's ``nearest`` rule (source index
    floor(i * in / out)), the rule of the official test; not PIL's centre sampling."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].to(torch.uint8).numpy()


def binary_target(bench: Benchmark, mask: np.ndarray, class_id: int) -> torch.Tensor:
    """int64 (H, W): 1 = the episode's class, 0 = everything else, 255 = ignored (PASCAL void only)."""
    m = torch.from_numpy(np.ascontiguousarray(mask)).long()
    if bench.mask_rule == "fss":
        return (m >= FSS_OBJECT_MIN).long()
    target = (m == class_id + 1).long()
    if bench.mask_rule == "pascal":
        target[m == IGNORE] = IGNORE
    return target
