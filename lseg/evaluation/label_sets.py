"""Label sets of an evaluation sweep: which prompts the text encoder gets, and how the ground truth maps.

Why label sets: one LSeg checkpoint answers any list of text queries, so "how good is it" depends
on the queries. A sweep compares the training names (``universal``), a dataset's own, smaller class
list (``dataset``: fewer distractors) and unseen wordings of the same classes (``synonyms`` or a
user's file) on the same images.

  ``universal``  the 194 readable universal names; ground truth = universal ids.
  ``dataset``    the dataset's own (relabeled) class names only, scored on that dataset's relabeled
                 ids (universal ids mapped back through the MSeg table).
  ``synonyms``   shorthand for configs/label_sets/universal_synonyms.yaml.
  ``X.yaml``     a substitution set: ``substitutions: {universal_name: synonym | [synonyms]}``;
                 other classes keep their training name.
  ``X.txt``      one prompt per universal class (194 lines, id order); ``a | b`` gives alternatives.

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
                    substituted: list[bool]) -> LabelSet:
    """A label set from the prompts of each class (in class order)."""
    prompts, groups = [], []
    for c, alts in enumerate(per_class):
        for a in alts:
            prompts.append(a)
            groups.append(c)
    return LabelSet(name, class_names, prompts, groups, lut, substituted,
                    fingerprint(name, class_names, per_class, lut.tolist()))


def load_substitutions(path: Path, universal: Sequence[str]) -> tuple[str, dict[int, list[str]]]:
    """(set name, universal id -> prompts) from a substitution YAML; unknown classes are an error."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"label set file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"malformed YAML in label set {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"label set {path}: expected a mapping with 'substitutions'")
    subs = data.get("substitutions", data if "name" not in data else None)
    if not isinstance(subs, dict) or not subs:
        raise SweepError(f"label set {path}: 'substitutions' must be a non-empty mapping class -> synonym")
    by_name = {n: i for i, n in enumerate(universal)}
    by_name.update({n.replace("_", " "): i for i, n in enumerate(universal)})
    out: dict[int, list[str]] = {}
    for key, value in subs.items():
        if str(key) not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SweepError(f"label set {path}: '{key}' is not a universal class{hint}")
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


def resolve_label_set(spec: str, dataset: str, taxonomy, universal_prompts: Sequence[str]) -> LabelSet:
    """Turn a ``--label-sets`` entry into a :class:`LabelSet` for ``dataset``."""
    universal = list(taxonomy.universal)
    n = len(universal)
    if len(universal_prompts) != n:
        raise SweepError(f"expected {n} universal class names, got {len(universal_prompts)}")
    if spec == "universal":
        return build_label_set("universal", universal, [[p] for p in universal_prompts], identity_lut(n),
                               [False] * n)
    if spec in ("dataset", "own"):
        return _dataset_label_set(dataset, taxonomy, universal_prompts)
    path = SYNONYMS_FILE if spec == "synonyms" else Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        name, subs = load_substitutions(path, universal)
        per_class = [subs.get(i, [universal_prompts[i]]) for i in range(n)]
        return build_label_set(name, universal, per_class, identity_lut(n), [i in subs for i in range(n)])
    if not path.is_file():
        raise SweepError(f"unknown label set '{spec}': use universal, dataset, synonyms, a .yaml "
                         "substitution set or a .txt file with one prompt per universal class")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != n or any(not ln for ln in lines):
        raise SweepError(f"label set {path}: need {n} non-empty lines (one per universal class, id order), "
                         f"got {len(lines)}")
    per_class = [_split_alternatives(ln) for ln in lines]
    subst = [per_class[i] != [universal_prompts[i]] for i in range(n)]
    return build_label_set(path.stem, universal, per_class, identity_lut(n), subst)
