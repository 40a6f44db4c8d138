"""Datasets of the registry (``lseg.data.registry``): pairs, decoding, checks, the bad-sample policy.

Two layers, because they fail differently:

* :class:`LabeledDataset` knows one dataset split's files: it decodes an (image, mask) pair and
  checks it (file present, decodable, sizes equal, mask values inside the dataset's class list).
  A check failure is a :class:`BadSample`, never a silent fix.
* :class:`SegmentationSet` concatenates datasets into one index space, applies the seeded
  transform and each dataset's raw value -> label-space lookup, and enforces ``data.on_bad_sample``:
  ``error`` raises one line naming the file; ``skip`` logs the file once, replaces the sample by
  another one of the same dataset chosen deterministically from the sample seed, and counts the bad
  attempts in ``num_bad`` so the batch size stays constant and the trainer can watch the bad
  fraction. For evaluation (``replace="blank"``) a bad sample becomes an all-ignore label instead,
  so no image is scored twice.
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

from lseg.data import registry
from lseg.data.errors import DataError
from lseg.data.registry import SpaceTable
from lseg.data.taxonomy import IGNORE_INDEX
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


RGB_MASK_FIX = ("masks must be single-channel index PNGs whose value is the class id: map each colour to its "
                "class id and save the ids as 8-bit grey, e.g. Image.fromarray(ids.astype(np.uint8)).save(path)")


def _as_id_map(label: Image.Image, path: Path) -> Image.Image:
    """Single-channel 8-bit id map; palette indices are ids, 16/32-bit maps must fit in 8 bits.

    A colour (RGB/RGBA) mask is not a bad sample but a dataset saved the wrong way: it stops the run
    with the conversion to do, whatever ``data.on_bad_sample`` says.
    """
    if label.mode == "L":
        return label
    if label.mode == "P":
        return Image.frombytes("L", label.size, label.tobytes())
    if label.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(label)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadSample(path, f"label values outside 0..255 (mode {label.mode})")
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    if label.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV"):
        raise DataError(f"mask {path} is a colour image (mode {label.mode}), not an index PNG: {RGB_MASK_FIX}")
    raise BadSample(path, f"label is mode {label.mode}, expected a single-channel 8-bit id map")


class LabeledDataset:
    """One dataset split: its (image, mask) pairs, decoding, per-sample checks and the label-space table."""

    def __init__(self, name: str, root: Path, pairs: Sequence[tuple[Path, Path]], table: SpaceTable, split: str,
                 sample_classes: tuple[registry.ClassList, list[int]] | None = None):
        """``sample_classes``: (class list, class id of each pair) for one-class-per-image datasets."""
        self.name, self.root, self.split = name, root, split
        self.pairs = list(pairs)
        self.sample_class_list, self.sample_class_ids = sample_classes or (None, None)
        self.threshold = table.threshold
        self.lut: list[int] = [int(v) for v in table.lut]  # for PIL Image.point: raw value -> label-space id
        self.invalid_ids = list(table.invalid)
        self.valid_text = table.valid_text

    def __len__(self) -> int:
        return len(self.pairs)

    def paths(self, i: int) -> tuple[Path, Path]:
        return self.pairs[i]

    def load(self, i: int) -> tuple[Image.Image, Image.Image]:
        """Decoded, checked (RGB image, L mask of raw values); raises :class:`BadSample`."""
        image_path, label_path = self.paths(i)
        image = _open_image(image_path, "image")
        raw = _open_image(label_path, "label")
        if self.threshold is None:
            label = _as_id_map(raw, label_path)
        else:  # binary grey mask (colour ones too): 0 / 1 now, so padding (255) stays ignore
            label = raw.convert("L").point([int(v >= self.threshold) for v in range(256)])
        if image.size != label.size:
            raise BadSample(label_path, f"size mismatch: image {image.size[0]}x{image.size[1]}, "
                                        f"label {label.size[0]}x{label.size[1]}")
        hist = label.histogram()
        bad_ids = [k for k in self.invalid_ids if hist[k]]
        if bad_ids:
            note = " (a palette PNG: its indices are read as class ids)" if raw.mode == "P" else ""
            raise BadSample(label_path, f"label values {bad_ids[:8]} outside the {self.name} taxonomy "
                                        f"({self.valid_text}){note}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image, label


def open_dataset(data, name: str, split: str, label_space: str | None = None) -> LabeledDataset:
    """Dataset ``name``'s ``split`` with labels in ``label_space`` (default ``data.label_space``).

    Paths, class list and the mapping are checked now, so a wrong folder or an impossible label
    space stops start-up with one line instead of failing inside a loader worker.
    """
    space = label_space or data.label_space
    registry.check_maps_into(name, space)
    src = registry.source(data, name)
    table = registry.space_table(src, space)
    spec = registry.get(name)
    pairs = spec.pairs(src, split)
    if not pairs:
        raise DataError(f"{name}: split '{split}' has no images ({src.root})")
    samples = spec.sample_classes(src, split) if spec.sample_classes else None
    if samples is not None and len(samples[1]) != len(pairs):
        raise ValueError(f"{name}: {len(samples[1])} sample classes for {len(pairs)} pairs")
    return LabeledDataset(name, src.root, pairs, table, split, samples)


Transform = Callable[[Image.Image, Image.Image, int], tuple[Image.Image, Image.Image]]


class SegmentationSet(torch.utils.data.Dataset):
    """Concatenated datasets -> dict samples of universal labels, with the bad-sample policy.

    Keys are ``(global index, seed)`` pairs from the sampler (a plain int means seed 0).
    """

    def __init__(self, datasets: Sequence[LabeledDataset], transform: Transform,
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
        label = label.point(self.datasets[d].lut)  # raw mask values -> label-space ids (255 = ignore)
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
                return {"image": x, "label": y, "index": self.offsets[d] + local, "num_bad": num_bad,
                        "class_id": self._class_id(d, local)}
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
        return {"image": x, "label": y, "index": index, "num_bad": num_bad,
                "class_id": self._class_id(d, index - self.offsets[d])}

    def _class_id(self, d: int, local: int) -> int:
        """The sample's class in its dataset's ``sample_class_list``; -1 for dense datasets."""
        ids = self.datasets[d].sample_class_ids
        return -1 if ids is None else ids[local]
