"""Episode lists: which (image, class) pairs a protocol scores, in which order.

Official (lang-seg's zero-shot test, shots = 0):
* PASCAL-5i: exactly 1000 episodes; episode k is line k mod N of ``pascal/val/fold<f>.txt``, so the
  first lines of the (id-sorted) list count two or three times.
* COCO-20i: exactly 1000 episodes drawn with NumPy's legacy RandomState seeded with 0: per episode a
  class from the 20 novel ids, then an image from that class's list, both with
  ``choice(population, 1, replace=False)`` (that call form draws a full permutation, so only it
  replays the official stream). A private RandomState is used; NumPy's global one is not touched.
* FSS-1000: every ``*.jpg`` of the 240 test folders once (categories sorted, file names sorted as
  strings), read from the data root.

Fair: every (image, class) pair of the fold's test data exactly once (PASCAL: the list's pairs;
COCO: each novel class's images, classes ascending; FSS: as official).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.benchmarks import FSS_TEST_OFFSET, Benchmark
from lseg.zeroshot.splits import coco_lists, fss_categories, pascal_pairs

#: Episodes per fold of the official PASCAL and COCO tests.
OFFICIAL_EPISODES = 1000
#: Seed of the official COCO draws.
COCO_SEED = 0


@dataclass(frozen=True)
class Episode:
    """One query: ``key`` = VOC id (PASCAL), path under COCO2014/ (COCO), ``<category>/<n>.jpg`` (FSS)."""

    class_id: int
    key: str


def pascal_official(fold: int) -> list[Episode]:
    pairs = pascal_pairs("val", fold)
    return [Episode(pairs[k % len(pairs)][1], pairs[k % len(pairs)][0]) for k in range(OFFICIAL_EPISODES)]


def coco_official(fold: int, novel: list[int], seed: int = COCO_SEED) -> list[Episode]:
    lists = coco_lists("val", fold)
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(OFFICIAL_EPISODES):
        cls = int(rng.choice(novel, 1, replace=False)[0])
        out.append(Episode(cls, str(rng.choice(lists[cls], 1, replace=False)[0])))
    return out


def fss_queries(root: str | Path, split: str = "test") -> list[Episode]:
    """Every jpg of each ``split`` (trn | val | test) category folder under ``root/FSS-1000``, in the
    official order; class ids index the FSS label file (trn 0..519, val 520..759, test 760..999)."""
    base = Path(root) / "FSS-1000"
    offset = {"trn": 0, "val": len(fss_categories("trn")), "test": FSS_TEST_OFFSET}[split]
    out = []
    for rank, cat in enumerate(fss_categories(split)):
        try:
            names = sorted(os.listdir(base / cat))
        except FileNotFoundError:
            raise ZeroShotError(f"{base / cat}: missing; expected FSS-1000/<category>/<n>.jpg and <n>.png "
                                f"for each of the {len(fss_categories(split))} {split} categories") from None
        out += [Episode(offset + rank, f"{cat}/{n}") for n in names if n.split(".", 1)[-1] == "jpg"]
    return out


def official_episodes(bench: Benchmark, fold: int, root: str | Path | None = None) -> list[Episode]:
    """The official episode list of a fold (FSS-1000 needs the data root: its list is the folder contents)."""
    if bench.name == "pascal-5i":
        return pascal_official(fold)
    if bench.name == "coco-20i":
        return coco_official(fold, bench.novel_classes(fold))
    return fss_queries(_need_root(root))


def fair_pairs(bench: Benchmark, fold: int, root: str | Path | None = None) -> list[Episode]:
    """Every (image, class) pair of the fold's test data once, in a fixed order."""
    if bench.name == "pascal-5i":
        pairs = [Episode(c, image) for image, c in pascal_pairs("val", fold)]
    elif bench.name == "coco-20i":
        lists = coco_lists("val", fold)
        pairs = [Episode(c, path) for c in bench.novel_classes(fold) for path in lists[c]]
    else:
        pairs = fss_queries(_need_root(root))
    return list(dict.fromkeys(pairs))


def _need_root(root: str | Path | None) -> Path:
    if root is None:
        raise ZeroShotError("fss-1000 episodes are the test folders' images: a data root is needed")
    return Path(root)


def serialize(bench: Benchmark, episodes: list[Episode]) -> bytes:
    """One JSON array per line inside a JSON list: ``[voc_id, class]`` (PASCAL) or ``[class, path]``
    (COCO, FSS), the format of the published official episode lists."""
    rows = [[e.key, e.class_id] if bench.name == "pascal-5i" else [e.class_id, e.key] for e in episodes]
    return ("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n").encode("utf-8")
