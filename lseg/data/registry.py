"""The dataset registry: one frozen entry per dataset says how to read it and where its labels go.

Why a registry: datasets differ in exactly five ways (where their files are, how a split's pairs are
found, where the class names come from, what a mask value means, which label spaces their classes
map into). Writing those down as data keeps one loader, one bad-sample policy and one remapping
path for every dataset, and adding a dataset is one :func:`register` call
(``lseg.data.builtin`` holds the built-in entries).

A run trains on one *label space*: ``universal`` (the MSeg taxonomy) or a registered dataset's own
class list. Each dataset's raw mask values go through ONE 256-entry table into that space
(:func:`space_table`): raw value -> the dataset's class id (:class:`Encoding`) -> label-space id
(the spec's mapping), with 255 = ignore.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lseg.data.errors import DataError

IGNORE_INDEX = 255
UNIVERSAL = "universal"


@dataclass(frozen=True)
class Encoding:
    """How mask values become class ids: values in ``ignore`` are unlabelled, value v is class v - offset.

    ``threshold``: binary grey masks (one object per image): the mask is read as grey and binarised on
    load, value >= threshold -> 1, below -> 0, before the transform pads with 255 (ignore); the table
    then maps those 0 / 1 values."""

    ignore: tuple[int, ...] = (IGNORE_INDEX,)
    offset: int = 0
    threshold: int | None = None

    def class_table(self, num_classes: int) -> np.ndarray:
        """int16[256]: raw value -> class id, 255 for ignore, -1 for a value outside the class list."""
        table = np.full(256, -1, dtype=np.int16)
        for v in range(self.offset, min(self.offset + num_classes, 256)):
            table[v] = v - self.offset
        for v in self.ignore:
            if 0 <= v < 256:
                table[v] = IGNORE_INDEX
        return table

    def describe(self, num_classes: int) -> str:
        """The valid raw values, for messages: ``0..103, 255`` (classes, then the ignore values)."""
        if self.threshold is not None:
            return f"grey 0..255 (>= {self.threshold} = object)"
        first = self.offset
        return f"{first}..{first + num_classes - 1}, {', '.join(str(v) for v in sorted(self.ignore))}"


@dataclass(frozen=True)
class ClassList:
    """A dataset's classes: identifiers (unique; keys of overrides and per-class reports) and prompts."""

    names: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """What a spec's functions get: the dataset, its resolved folder and the data config."""

    name: str
    root: Path
    data: Any  # DataConfig (read by attribute)


PairsFn = Callable[[Source, str], list[tuple[Path, Path]]]
ClassesFn = Callable[[Source], ClassList]
EncodingFn = Callable[[Source], Encoding]
MappingFn = Callable[[Source, ClassList], np.ndarray]
#: (the classes a sample can show, class id of each pair of ``pairs(source, split)`` in that order)
SampleClassesFn = Callable[[Source, str], tuple[ClassList, list[int]]]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset. ``pairs(source, split)`` lists (image, mask) paths in a fixed order (list files or a
    sorted scan); ``classes(source)`` reads its class names; ``encoding(source)`` says what mask values
    mean; ``mappings[space](source, classes)`` gives class id -> id in that label space (255 = none).
    Its own name is always a label space (identity); ``universal`` only where a mapping exists.
    ``hint``: the fix named when its folder is missing. ``sample_classes``: for datasets whose masks mark
    one class per image (label 1 = the image's class, e.g. FSS-1000), the class of each sample; trained
    with ``train.label_set=per_sample``."""

    name: str
    folder: str
    pairs: PairsFn
    classes: ClassesFn
    encoding: EncodingFn
    mappings: dict[str, MappingFn] = field(default_factory=dict)
    hint: str = ""
    sample_classes: SampleClassesFn | None = None

    def spaces(self) -> tuple[str, ...]:
        return (self.name, *self.mappings)


#: Modules whose import registers the built-in datasets.
BUILTIN_MODULES = ("lseg.data.builtin", "lseg.zeroshot.datasets")
_REGISTRY: dict[str, DatasetSpec] = {}
_BUILTIN_LOADED = False


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec``; a second entry with the same name is a bug, not an override."""
    if spec.name in _REGISTRY or spec.name == UNIVERSAL:
        raise ValueError(f"dataset '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def names() -> tuple[str, ...]:
    """Registered dataset names, in registration order (built-in ones first)."""
    _ensure_builtin()
    return tuple(_REGISTRY)


def get(name: str) -> DatasetSpec:
    """The spec of ``name``; an unknown name is a one-line error with the closest match."""
    _ensure_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"unknown dataset '{name}'{hint}: supported are {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def dataset_root(data: Any, name: str) -> Path:
    """``data.roots[name]`` if set, else ``<data.root>/<the spec's folder>``; checked to exist."""
    spec = get(name)
    if name in data.roots:
        root = Path(data.roots[name]).expanduser()
        if not root.is_dir():
            what = "is not a directory" if root.exists() else "not found"
            raise DataError(f"data.roots.{name} {what}: {root}")
        return root
    base = Path(data.root).expanduser()
    if not base.is_dir():
        what = "is not a directory" if base.exists() else "not found"
        fix = spec.hint.format(root=base) if spec.hint else f"point it at the folder holding {spec.folder}"
        raise DataError(f"data.root {what}: {base} ({fix})")
    root = base / spec.folder
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} ({name} under data.root={base}; "
                        f"or set data.roots.{name}=/path/to/it)")
    return root


def source(data: Any, name: str) -> Source:
    return Source(name, dataset_root(data, name), data)


def check_maps_into(name: str, space: str, what: str = "dataset") -> None:
    """One line naming the dataset and the fix when ``name``'s labels cannot be expressed in ``space``."""
    spec = get(name)
    if space != UNIVERSAL:
        get(space)  # an unknown label space is named as such
    if space not in spec.spaces():
        raise DataError(f"{what} {name} has no mapping into data.label_space={space} (it maps into "
                        f"{', '.join(spec.spaces())}): set data.label_space={name} or use another dataset")


def check_label_space(data: Any) -> None:
    """Every training and validation dataset is registered and maps into ``data.label_space``."""
    if data.label_space != UNIVERSAL and data.label_space not in names():
        close = difflib.get_close_matches(data.label_space, [UNIVERSAL, *names()], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"data.label_space: unknown label space '{data.label_space}'{hint}: use universal "
                        f"or a dataset name ({', '.join(names())})")
    for key in ("train_datasets", "val_datasets"):
        for name in getattr(data, key):
            check_maps_into(name, data.label_space, f"data.{key}:")


def read_classes(src: Source) -> ClassList:
    """The dataset's own classes, checked: at least one, no empty or duplicate identifier."""
    classes = get(src.name).classes(src)
    seen: dict[str, int] = {}
    for i, n in enumerate(classes.names):
        if not n.strip():
            raise DataError(f"{src.name}: class {i} has an empty name")
        if n in seen:
            raise DataError(f"{src.name}: class name '{n}' appears twice (ids {seen[n]} and {i}); "
                            "class names must be unique")
        seen[n] = i
    if not classes.names or len(classes.names) != len(classes.prompts):
        raise DataError(f"{src.name}: no classes found")
    if len(classes.names) > IGNORE_INDEX:
        raise DataError(f"{src.name}: {len(classes.names)} classes; label ids must stay below {IGNORE_INDEX}")
    return classes


@dataclass(frozen=True)
class SpaceTable:
    """The one lookup of a dataset into a label space, plus what messages need about invalid values."""

    lut: np.ndarray  # uint8[256]: raw mask value -> label-space id, 255 = ignore (also for invalid values)
    invalid: tuple[int, ...]  # raw values outside the class list (a mask holding one is a bad sample)
    valid_text: str  # e.g. "0..103, 255"
    threshold: int | None = None  # Encoding.threshold: binarise the grey mask on load


def space_table(src: Source, space: str, classes: ClassList | None = None) -> SpaceTable:
    """Raw mask value -> ``space`` id for dataset ``src.name`` (composition of encoding and mapping)."""
    spec = get(src.name)
    check_maps_into(src.name, space)
    classes = classes or read_classes(src)
    n = len(classes.names)
    enc = spec.encoding(src)
    raw = enc.class_table(n)
    if space == src.name:
        to_space = np.arange(n, dtype=np.int64)
    else:
        to_space = np.asarray(spec.mappings[space](src, classes), dtype=np.int64)
        if to_space.shape != (n,):
            raise ValueError(f"{src.name} -> {space}: mapping has shape {to_space.shape}, expected ({n},)")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    valid = raw >= 0
    cls = raw[valid & (raw != IGNORE_INDEX)]
    lut[np.flatnonzero(valid & (raw != IGNORE_INDEX))] = to_space[cls]
    invalid = tuple(int(v) for v in np.flatnonzero(~valid))
    return SpaceTable(lut, invalid, enc.describe(n), enc.threshold)
