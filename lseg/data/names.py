"""Label spaces and their prompts for the text encoder, with per-class overrides.

Why: the text encoder sees the class names as prompts. A run's label space is the MSeg universal
taxonomy (``data.label_space: universal``), whose identifiers (``road_barrier``) become readable
text (``road barrier``), or a registered dataset's own class list (ADE20K-150's official prompts,
FoodSeg103's ``category_id.txt`` names, a folder's ``classes.txt``). A YAML or TSV file
(``data.class_names_file``) can replace any class's text, keyed by that space's class names, e.g.
``pier_wharf: pier or wharf``. The list actually used is written into the run directory so an
evaluation months later can reproduce the prompts exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from lseg.data.errors import DataError, read_user_text
from lseg.data.taxonomy import load_taxonomy

CLASS_NAMES_FILE = "class_names.txt"


def readable(name: str) -> str:
    """``road_barrier`` -> ``road barrier`` (whitespace collapsed)."""
    return " ".join(name.replace("_", " ").split())


def _read_override_entries(path: Path) -> list[tuple[Any, Any]]:
    text = read_user_text(path, "data.class_names_file")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise DataError(f"malformed YAML in data.class_names_file {path}: {problem}") from None
        if not isinstance(data, dict):
            raise DataError(f"data.class_names_file {path}: expected a mapping 'class: readable name'")
        return list(data.items())
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip():
            raise DataError(f"data.class_names_file {path} line {lineno}: expected 'class<TAB>readable name'")
        entries.append((parts[0].strip(), parts[1]))
    return entries


def load_overrides(path: str | os.PathLike, universal: Sequence[str], space: str = "universal") -> dict[int, str]:
    """Class id -> replacement text, from a YAML mapping or a two-column TSV.

    Keys may be the label space's class name (``pier_wharf``) or its id; unknown keys are an
    error (a typo would otherwise silently keep the default prompt).
    """
    path = Path(path)
    by_name = {n: i for i, n in enumerate(universal)}
    out: dict[int, str] = {}
    for key, value in _read_override_entries(path):
        if isinstance(key, int) and not isinstance(key, bool) or (isinstance(key, str) and key.isdigit()):
            uid = int(key)
            if not 0 <= uid < len(universal):
                raise DataError(f"data.class_names_file {path}: class id {uid} is not in 0..{len(universal) - 1}")
        elif isinstance(key, str) and key in by_name:
            uid = by_name[key]
        else:
            raise DataError(f"data.class_names_file {path}: '{key}' is not a {space} class name or id")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"data.class_names_file {path}: empty name for '{key}'")
        out[uid] = " ".join(value.split())
    return out


def universal_class_names(mseg_root: str | os.PathLike | None = None,
                          class_names_file: str | os.PathLike | None = None) -> list[str]:
    """Readable universal names (index = universal id), overrides applied."""
    universal = load_taxonomy(mseg_root).universal
    names = [readable(n) for n in universal]
    if class_names_file is not None:
        for uid, text in load_overrides(class_names_file, universal).items():
            names[uid] = text
    return names


@dataclass(frozen=True)
class LabelSpace:
    """The classes a run trains and scores on: identifiers (override keys, reports) and prompts (index = id)."""

    name: str
    classes: tuple[str, ...]
    prompts: tuple[str, ...]


def _data_cfg(cfg: Any) -> Any:
    return getattr(cfg, "data", cfg)


def label_space(cfg: Any, name: str | None = None) -> LabelSpace:
    """Label space ``name`` (default ``data.label_space``); ``data.class_names_file`` applies to the run's own.

    ``universal`` reads the MSeg taxonomy; a dataset name reads that dataset's class list (from the
    package for ADE20K-150, from the dataset folder for FoodSeg103 and ``folder``).
    """
    from lseg.data import registry

    d = _data_cfg(cfg)
    name = name or d.label_space
    overrides = d.class_names_file if name == d.label_space else None
    if name == registry.UNIVERSAL:
        universal = load_taxonomy(d.mseg_root).universal
        return LabelSpace(name, tuple(universal), tuple(universal_class_names(d.mseg_root, overrides)))
    classes = registry.read_classes(registry.source(d, name))
    prompts = list(classes.prompts)
    if overrides is not None:
        for cid, text in load_overrides(overrides, classes.names, name).items():
            prompts[cid] = text
    return LabelSpace(name, classes.names, tuple(prompts))


def class_names(cfg: Any) -> list[str]:
    """The prompts of a run's label space, index = label-space id (accepts a ``Config`` or a ``DataConfig``).

    Also checks that every training and validation dataset maps into that space: it is the first
    thing every consumer asks of a data config, so an impossible combination stops start-up here.
    """
    from lseg.data.registry import check_label_space

    d = _data_cfg(cfg)
    check_label_space(d)
    return list(label_space(d).prompts)


def write_class_names(cfg: Any, run_dir: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
    """Write ``<run_dir>/class_names.txt`` (one name per line, line number = label-space id).

    ``names``: the run's prompts when the caller holds them already (:func:`class_names` re-reads the
    class files and re-checks every dataset)."""
    path = Path(run_dir) / CLASS_NAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("\n".join(class_names(cfg) if names is None else names) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Inverse of :func:`write_class_names` (for evaluation of a finished run)."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
