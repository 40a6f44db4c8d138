"""Held-out classes: train without some classes of the label space, then score them (zero-shot, measured).

Why here, as ids and one lookup: a held-out class must leave no trace in training. Its prompt is
dropped from the list the text encoder sees during training, and its pixels become ignore before
the loss; both follow from one table built once, so the trainer applies a single gather per batch
and evaluation keeps scoring the full label space (label-space ids), where the unseen classes are.

A class is named as its prompt (``road barrier``) or as the raw identifier (``road_barrier``);
matching ignores case, underscores and repeated spaces. An unknown name is a one-line error with
the closest class as a suggestion.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lseg.data.errors import DataError
from lseg.data.names import label_space, readable
from lseg.data.taxonomy import IGNORE_INDEX


@dataclass(frozen=True)
class Holdout:
    """The training view of a label space with some classes held out."""

    train_prompts: list[str]  # seen classes' prompts, in label-space order
    train_lut: torch.Tensor  # int64[256]: label-space id -> training index; held-out ids and 255 -> 255
    unseen_ids: list[int]  # label-space ids of the held-out classes, ascending

    @property
    def active(self) -> bool:
        return bool(self.unseen_ids)


def _key(name: str) -> str:
    return readable(str(name)).casefold()


def resolve_holdout(prompts: Sequence[str], holdout: Sequence[str], identifiers: Sequence[str] | None = None,
                    space: str = "universal", label_as: str | None = None) -> Holdout:
    """Split ``prompts`` (index = label-space id) into seen and held-out classes.

    ``identifiers``: the label space's raw class names (same order), also accepted in ``holdout``;
    ``space`` only names the label space in messages. ``label_as``: a seen class that takes the held-out
    pixels in training (the official zero-shot recipe's "others"); None ignores them.
    """
    if len(prompts) > IGNORE_INDEX:
        raise DataError(f"label space '{space}' has {len(prompts)} classes; ids must stay below {IGNORE_INDEX}")
    by_key: dict[str, int] = {}
    for names in (identifiers or [], prompts):
        for cid, name in enumerate(names):
            by_key.setdefault(_key(name), cid)
    unseen = set()
    for name in holdout:
        cid = by_key.get(_key(name))
        if cid is None:
            close = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"data.holdout_classes: '{name}' is not a class of the label space '{space}'{hint}")
        unseen.add(cid)
    if len(unseen) == len(prompts):
        raise DataError(f"data.holdout_classes: holds out all {len(prompts)} classes of '{space}'; "
                        "at least one class must stay for training")
    seen = [c for c in range(len(prompts)) if c not in unseen]
    lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    lut[torch.tensor(seen)] = torch.arange(len(seen))
    if label_as is not None and unseen:
        target = by_key.get(_key(label_as))
        if target is None or target in unseen:
            what = "a held-out class" if target is not None else f"not a class of the label space '{space}'"
            raise DataError(f"data.holdout_label_as: '{label_as}' is {what}; name a seen class such as 'others'")
        lut[torch.tensor(sorted(unseen))] = int(lut[target])
    return Holdout([prompts[c] for c in seen], lut, sorted(unseen))


def unseen_classes(target_map: torch.Tensor, unseen_ids: Sequence[int]) -> list[int]:
    """Classes of an evaluation label set that count as unseen, given its ``target_map`` (int64[256]:
    label-space id -> evaluated class, 255 = ignore) and the held-out label-space ids.

    A class is unseen when every label-space id scored as it is held out; a class that also takes
    pixels of a seen class was partly trained on, so it counts as seen.
    """
    held = set(int(u) for u in unseen_ids)
    sources: dict[int, set[int]] = {}
    for uid, cls in enumerate(target_map.tolist()):
        if cls != IGNORE_INDEX and uid != IGNORE_INDEX:
            sources.setdefault(int(cls), set()).add(uid)
    return sorted(c for c, ids in sources.items() if ids <= held)


def run_holdout(cfg: Any, prompts: Sequence[str]) -> Holdout:
    """The run's held-out classes (``data.holdout_classes``) among ``prompts``, the prompts of its label
    space (``data.label_space``); the space's class identifiers are accepted too."""
    d = getattr(cfg, "data", cfg)
    identifiers = list(label_space(d).classes) if d.holdout_classes else None  # read only when needed
    return resolve_holdout(prompts, d.holdout_classes, identifiers, d.label_space, d.holdout_label_as)
