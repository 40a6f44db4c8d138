"""Label sets of an evaluation sweep: which prompts the text encoder gets, and how the ground truth maps.

Why label sets: one LSeg checkpoint answers any list of text queries, so "how good is it" depends
on the queries. A sweep compares the training names (``universal``), a dataset's own, smaller class
list (``dataset``: fewer distractors) and unseen wordings of the same classes (``synonyms`` or a
user's file) on the same images.

  ``universal``  the 194 readable universal names; ground truth = universal ids (datasets with a
                 mapping into the MSeg taxonomy only).
  ``dataset``    the dataset's own class names only: for MSeg's relabeled sets scored on their
                 relabeled ids (universal ids mapped back through the MSeg table); for every other
                 registered dataset (ADE20K-150, FoodSeg103, folder, ...) its own class list and
                 prompts, ground truth read in the dataset's own label space.
  ``synonyms``   shorthand for configs/label_sets/universal_synonyms.yaml.
  ``X.yaml``     a substitution set: ``substitutions: {class_name: synonym | [synonyms]}``; other
                 classes keep their training name. ``label_space: <dataset>`` keys it by that
                 dataset's own class names (default: universal names).
  ``X.txt``      one prompt per class, id order: 194 lines (universal) or one per class of the
                 dataset's own list; ``a | b`` gives alternatives.

Each label set says which label space its ground truth is read in (``space``); the sweep builds
one loader per (dataset, space).

Several prompts for one class are scored by the maximum of their logits
(:func:`lseg.inference.reduce_prompts`).
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from lseg.evaluation import SweepError
from lseg.metrics import IGNORE_INDEX

SYNONYMS_FILE = Path(__file__).resolve().parents[2] / "configs" / "label_sets" / "universal_synonyms.yaml"


@dataclass
class LabelSet:
    """Prompts given to the text encoder and how the ground truth maps onto their classes."""

    name: str
    class_names: list[str]  # per evaluated class (taxonomy identifiers, for per-class reports)
    prompts: list[str]  # text queries; several may belong to one class
    groups: list[int]  # class index of each prompt
    gt_lut: torch.Tensor  # int64[256]: universal id -> evaluated class id (255 = ignore)
    substituted: list[bool]  # per class: prompt differs from the training name
    fingerprint: str = ""  # content hash, part of the cell id
    space: str = "universal"  # label space the loader delivers the ground truth in

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def identity_lut(n: int) -> torch.Tensor:
    """Ids 0..n-1 map to themselves, everything else to the ignore index."""
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[:n] = torch.arange(n)
    return lut


def fingerprint(*parts: Any) -> str:
    """Short content hash (12 hex digits) of JSON-able parts; ids of label sets and sweep cells."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _split_alternatives(text: str) -> list[str]:
    alts = [" ".join(a.split()) for a in str(text).split("|")]
    return [a for a in alts if a]


def build_label_set(name: str, class_names: list[str], per_class: list[list[str]], lut: torch.Tensor,
                    substituted: list[bool], space: str = "universal") -> LabelSet:
    """A label set from the prompts of each class (in class order); ``space``: where its ground truth is."""
    prompts, groups = [], []
    for c, alts in enumerate(per_class):
        for a in alts:
            prompts.append(a)
            groups.append(c)
    return LabelSet(name, class_names, prompts, groups, lut, substituted,
                    fingerprint(name, class_names, per_class, lut.tolist()), space)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"label set file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"malformed YAML in label set {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"label set {path}: expected a mapping with 'substitutions'")
    return data


def load_substitutions(path: Path, universal: Sequence[str], space: str = "universal",
                       prompts: Sequence[str] = ()) -> tuple[str, dict[int, list[str]]]:
    """(set name, class id -> prompts) from a substitution YAML keyed by ``space``'s class names
    (``universal``: the raw or readable universal names; a dataset: its names or prompts).
    Unknown classes are an error."""
    data = _read_yaml(path)
    subs = data.get("substitutions", data if "name" not in data else None)
    if not isinstance(subs, dict) or not subs:
        raise SweepError(f"label set {path}: 'substitutions' must be a non-empty mapping class -> synonym")
    by_name = {n: i for i, n in enumerate(universal)}
    for i, n in [*enumerate(n.replace("_", " ") for n in universal), *enumerate(prompts)]:
        by_name.setdefault(n, i)
    out: dict[int, list[str]] = {}
    for key, value in subs.items():
        if str(key) not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SweepError(f"label set {path}: '{key}' is not a {space} class{hint}")
        values = value if isinstance(value, list) else [value]
        prompts = [p for v in values for p in _split_alternatives(v)]
        if not prompts:
            raise SweepError(f"label set {path}: empty synonym for '{key}'")
        out[by_name[str(key)]] = prompts
    return str(data.get("name") or path.stem), out


def _dataset_label_set(dataset: str, taxonomy, universal_prompts: Sequence[str]) -> LabelSet:
    classes = list(taxonomy.dataset_classes[dataset])
    table = taxonomy.table(dataset)
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    per_class = []
    for did in range(len(classes)):
        uid = int(table[did])
        if uid == IGNORE_INDEX:
            per_class.append([classes[did].replace("_", " ")])
            continue
        if lut[uid] != IGNORE_INDEX:
            raise SweepError(f"{dataset}: classes '{classes[int(lut[uid])]}' and '{classes[did]}' share "
                             f"universal id {uid}; the dataset label set needs a one-to-one table")
        lut[uid] = did
        per_class.append([universal_prompts[uid]])
    return build_label_set("dataset", classes, per_class, lut, [False] * len(classes))


def _own_label_set(dataset: str, own) -> LabelSet:
    n = len(own.classes)
    return build_label_set("dataset", list(own.classes), [[p] for p in own.prompts], identity_lut(n),
                           [False] * n, space=dataset)


def resolve_label_set(spec: str, dataset: str, taxonomy, universal_prompts: Sequence[str], own=None,
                      spaces: Sequence[str] = ("universal",)) -> LabelSet:
    """Turn a ``--label-sets`` entry into a :class:`LabelSet` for ``dataset``.

    ``own``: the dataset's own :class:`lseg.data.LabelSpace` (None for MSeg's relabeled sets, whose
    classes come from ``taxonomy``); ``spaces``: the label spaces the dataset maps into.
    """
    universal = list(taxonomy.universal)
    n = len(universal)
    if len(universal_prompts) != n:
        raise SweepError(f"expected {n} universal class names, got {len(universal_prompts)}")

    def need_universal(what: str) -> None:
        if "universal" not in spaces:
            raise SweepError(f"label set '{what}': dataset {dataset} has no mapping into the universal classes; "
                             f"use --label-sets dataset or a substitution file with 'label_space: {dataset}'")

    if spec == "universal":
        need_universal(spec)
        return build_label_set("universal", universal, [[p] for p in universal_prompts], identity_lut(n),
                               [False] * n)
    if spec in ("dataset", "own"):
        return _dataset_label_set(dataset, taxonomy, universal_prompts) if own is None else _own_label_set(dataset, own)
    path = SYNONYMS_FILE if spec == "synonyms" else Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        space = str(_read_yaml(path).get("label_space") or "universal")
        if space == "universal":
            need_universal(spec)
            name, subs = load_substitutions(path, universal)
            per_class = [subs.get(i, [universal_prompts[i]]) for i in range(n)]
            return build_label_set(name, universal, per_class, identity_lut(n), [i in subs for i in range(n)])
        if own is None or space != dataset:
            raise SweepError(f"label set {path} is keyed by {space}'s classes (label_space: {space}); "
                             f"it cannot score dataset {dataset}")
        name, subs = load_substitutions(path, own.classes, space, own.prompts)
        k = len(own.classes)
        per_class = [subs.get(i, [own.prompts[i]]) for i in range(k)]
        return build_label_set(name, list(own.classes), per_class, identity_lut(k), [i in subs for i in range(k)],
                               space=dataset)
    if not path.is_file():
        raise SweepError(f"unknown label set '{spec}': use universal, dataset, synonyms, a .yaml "
                         "substitution set or a .txt file with one prompt per class")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if any(not ln for ln in lines):
        raise SweepError(f"label set {path}: empty line {lines.index('') + 1} (one prompt per class, id order)")
    per_class = [_split_alternatives(ln) for ln in lines]
    if own is not None and len(lines) == len(own.classes):
        subst = [per_class[i] != [own.prompts[i]] for i in range(len(lines))]
        return build_label_set(path.stem, list(own.classes), per_class, identity_lut(len(lines)), subst,
                               space=dataset)
    if len(lines) != n:
        own_n = f" or {len(own.classes)} ({dataset}'s classes)" if own is not None else ""
        raise SweepError(f"label set {path}: need {n} non-empty lines (one per universal class, id order){own_n}, "
                         f"got {len(lines)}")
    need_universal(spec)
    subst = [per_class[i] != [universal_prompts[i]] for i in range(n)]
    return build_label_set(path.stem, universal, per_class, identity_lut(n), subst)
