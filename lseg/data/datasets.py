"""Relabeled MSeg datasets (COCOPanoptic, ADE20K) read through mseg-api split lists.

Two layers, because they fail differently:

* :class:`RelabeledDataset` knows one dataset's files: it parses the split list, decodes an
  (image, label) pair and checks it (file present, decodable, sizes equal, label ids inside the
  dataset's relabeled taxonomy). A check failure is a :class:`BadSample`, never a silent fix.
* :class:`SegmentationSet` concatenates datasets into one index space, applies the seeded
  transform and the relabeled -> universal lookup, and enforces ``data.on_bad_sample``: ``error``
  raises one line naming the file; ``skip`` logs the file once, replaces the sample by another one
  of the same dataset chosen deterministically from the sample seed, and counts the bad attempts
  in ``num_bad`` so the batch size stays constant and the trainer can watch the bad fraction.
  For evaluation (``replace="blank"``) a bad sample becomes an all-ignore label instead, so no
  image is scored twice.
"""
from __future__ import annotations

import bisect
import logging
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from lseg.data.errors import DataError
from lseg.data.paths import DATASET_DIRS, check_dataset_name, split_list_path
from lseg.data.taxonomy import IGNORE_INDEX, Taxonomy
from lseg.data.transforms import to_tensors

log = logging.getLogger("lseg.data")

MAX_CONSECUTIVE_BAD = 64
_LOGGED_BAD: set[str] = set()  # per process: each bad file is logged once


class BadSample(Exception):
    """One unusable (image, label) pair; ``path`` is the offending file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_split_list(path: Path) -> list[tuple[str, str]]:
    """``<image> <label>`` pairs, relative to the dataset root; one-line errors name the file."""
    if not path.is_file():
        hint = ""
        if path.name == "train.txt" and "coco-panoptic" in str(path):
            hint = " (COCO's train list is not in the shared snapshot; use the mseg/ submodule)"
        what = "is not a file" if path.exists() else "not found"
        raise DataError(f"split list {what}: {path}{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read split list {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"split list {path} is not UTF-8 text (byte {exc.start}); is it the right file?") from None
    pairs = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{path} line {lineno}: expected '<image path> <label path>', got {line!r}")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise DataError(f"split list is empty: {path}")
    return pairs


def _open_image(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise BadSample(path, f"missing {what} file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadSample(path, f"cannot decode {what}: {exc}") from None


def _as_id_map(label: Image.Image, path: Path) -> Image.Image:
    """Single-channel 8-bit id map; palette indices are ids, 16/32-bit maps must fit in 8 bits."""
    if label.mode == "L":
        return label
    if label.mode == "P":
        return Image.frombytes("L", label.size, label.tobytes())
    if label.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(label)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadSample(path, f"label values outside 0..255 (mode {label.mode})")
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    raise BadSample(path, f"label is mode {label.mode}, expected a single-channel 8-bit id map")


class RelabeledDataset:
    """One MSeg relabeled dataset split: file list, decoding and per-sample checks."""

    def __init__(self, name: str, data_root: str | Path, lists_root: str | Path, split: str,
                 taxonomy: Taxonomy):
        self.name = check_dataset_name(name)
        root = Path(data_root).expanduser()
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "not found"
            raise DataError(f"data.root {what}: {root} (point it at MSEG_DST_DIR/mseg_dataset, or run "
                            f"tools/make_synthetic_mseg.py --output {root})")
        self.root = root / DATASET_DIRS[name]
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root} ({name} under data.root={root})")
        self.list_path = split_list_path(Path(lists_root), name, split)
        self.pairs = read_split_list(self.list_path)
        self.split = split
        self.num_classes = len(taxonomy.dataset_classes[name])
        table = taxonomy.table(name)
        self.lut: list[int] = [int(v) for v in table]  # for PIL Image.point
        self.invalid_ids = [k for k in range(256) if k >= self.num_classes and k != IGNORE_INDEX]

    def __len__(self) -> int:
        return len(self.pairs)

    def paths(self, i: int) -> tuple[Path, Path]:
        image_rel, label_rel = self.pairs[i]
        return self.root / image_rel, self.root / label_rel

    def load(self, i: int) -> tuple[Image.Image, Image.Image]:
        """Decoded, checked (RGB image, L label of dataset ids); raises :class:`BadSample`."""
        image_path, label_path = self.paths(i)
        image = _open_image(image_path, "image")
        label = _as_id_map(_open_image(label_path, "label"), label_path)
        if image.size != label.size:
            raise BadSample(label_path, f"size mismatch: image {image.size[0]}x{image.size[1]}, "
                                        f"label {label.size[0]}x{label.size[1]}")
        hist = label.histogram()
        bad_ids = [k for k in self.invalid_ids if hist[k]]
        if bad_ids:
            raise BadSample(label_path, f"label values {bad_ids[:8]} outside the {self.name} taxonomy "
                                        f"(0..{self.num_classes - 1}, 255)")
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image, label


Transform = Callable[[Image.Image, Image.Image, int], tuple[Image.Image, Image.Image]]


class SegmentationSet(torch.utils.data.Dataset):
    """Concatenated datasets -> dict samples of universal labels, with the bad-sample policy.

    Keys are ``(global index, seed)`` pairs from the sampler (a plain int means seed 0).
    """

    def __init__(self, datasets: Sequence[RelabeledDataset], transform: Transform,
                 on_bad_sample: str = "skip", replace: str = "resample"):
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be skip|error, got {on_bad_sample!r}")
        if replace not in ("resample", "blank"):
            raise ValueError(f"replace must be resample|blank, got {replace!r}")
        self.datasets = list(datasets)
        self.transform, self.on_bad_sample, self.replace = transform, on_bad_sample, replace
        self.offsets = [0]
        for ds in self.datasets:
            self.offsets.append(self.offsets[-1] + len(ds))

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def sizes(self) -> list[int]:
        return [len(ds) for ds in self.datasets]

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (dataset number, local index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range 0..{len(self) - 1}")
        d = bisect.bisect_right(self.offsets, index) - 1
        return d, index - self.offsets[d]

    def _report(self, bad: BadSample) -> None:
        if self.on_bad_sample == "error":
            raise DataError(f"bad sample {bad.path}: {bad.reason} (data.on_bad_sample=skip skips such samples)")
        key = str(bad.path)
        if key not in _LOGGED_BAD:
            _LOGGED_BAD.add(key)
            log.warning("skipping bad sample %s: %s", bad.path, bad.reason)

    def _finish(self, d: int, image: Image.Image, label: Image.Image, seed: int):
        image, label = self.transform(image, label, seed)
        label = label.point(self.datasets[d].lut)  # dataset ids -> universal ids (255 stays 255)
        return to_tensors(image, label)

    def __getitem__(self, key) -> dict:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        d, local = self.locate(index)
        ds = self.datasets[d]
        rng: random.Random | None = None
        num_bad = 0
        while True:
            try:
                image, label = ds.load(local)
                x, y = self._finish(d, image, label, seed)
                return {"image": x, "label": y, "index": self.offsets[d] + local, "num_bad": num_bad}
            except BadSample as bad:
                self._report(bad)
                num_bad += 1
            if self.replace == "blank":
                return self._blank(d, index, seed, num_bad)
            if num_bad >= MAX_CONSECUTIVE_BAD:
                raise DataError(f"{num_bad} bad samples in a row in {ds.name} ({ds.root}); check data.root")
            if rng is None:  # deterministic replacement: depends only on (index, seed)
                rng = random.Random(f"bad-sample:{index}:{seed}")
            local = rng.randrange(len(ds))

    def _blank(self, d: int, index: int, seed: int, num_bad: int) -> dict:
        """All-ignore stand-in for an unreadable evaluation sample (scores nothing).

        Shaped like the real sample would have been: the image header's size (when readable)
        goes through the same transform, so fixed-size and original-size evaluation both work.
        """
        size = (64, 64)
        try:
            with Image.open(self.datasets[d].paths(index - self.offsets[d])[0]) as probe:
                size = probe.size
        except Exception:  # header unreadable too: any size will do for a fixed-size transform
            pass
        x, y = self._finish(d, Image.new("RGB", size), Image.new("L", size, IGNORE_INDEX), seed)
        x.fill_(-1.0)
        y.fill_(IGNORE_INDEX)
        return {"image": x, "label": y, "index": index, "num_bad": num_bad}


def build_datasets(names: Sequence[str], data_root: str | Path, lists_root: str | Path, split: str,
                   taxonomy: Taxonomy) -> list[RelabeledDataset]:
    return [RelabeledDataset(n, data_root, lists_root, split, taxonomy) for n in names]
