"""Readable class names for the text encoder, with per-class overrides.

Why: the text encoder sees the class names as prompts, and MSeg's identifiers (``road_barrier``,
``pier_wharf``) are not natural language. The default is the identifier with underscores turned
into spaces; a YAML or TSV file (``data.class_names_file``) can replace any class's text, e.g.
``pier_wharf: pier or wharf``. The list actually used is written into the run directory so an
evaluation months later can reproduce the prompts exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lseg.data.errors import DataError
from lseg.data.taxonomy import load_taxonomy

CLASS_NAMES_FILE = "class_names.txt"


def readable(name: str) -> str:
    """``road_barrier`` -> ``road barrier`` (whitespace collapsed)."""
    return " ".join(name.replace("_", " ").split())


def _read_override_entries(path: Path) -> list[tuple[Any, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data.class_names_file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DataError(f"cannot read data.class_names_file {path}: {reason}") from None
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


def load_overrides(path: str | os.PathLike, universal: tuple[str, ...]) -> dict[int, str]:
    """Universal id -> replacement text, from a YAML mapping or a two-column TSV.

    Keys may be the raw universal name (``pier_wharf``) or the universal id; unknown keys are an
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
            raise DataError(f"data.class_names_file {path}: '{key}' is not a universal class name or id")
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


def _data_cfg(cfg: Any) -> Any:
    return getattr(cfg, "data", cfg)


def class_names(cfg: Any) -> list[str]:
    """The 194 prompts of a run (accepts a ``Config`` or a ``DataConfig``)."""
    d = _data_cfg(cfg)
    return universal_class_names(d.mseg_root, d.class_names_file)


def write_class_names(cfg: Any, run_dir: str | os.PathLike) -> Path:
    """Write ``<run_dir>/class_names.txt`` (one name per line, line number = universal id)."""
    path = Path(run_dir) / CLASS_NAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("\n".join(class_names(cfg)) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Inverse of :func:`write_class_names` (for evaluation of a finished run)."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]
