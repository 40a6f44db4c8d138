"""lseg.zeroshot.episodes: the official episode lists, bit for bit, and the fair pair lists."""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest

from lseg.zeroshot.benchmarks import get_benchmark
from lseg.zeroshot.episodes import Episode, fair_pairs, fss_queries, official_episodes, serialize

PASCAL, COCO, FSS = (get_benchmark(n) for n in ("pascal-5i", "coco-20i", "fss-1000"))

#: sha256 of the published official episode lists (one JSON array per line), PASCAL and COCO folds 0-3.
OFFICIAL_SHA256 = {
    ("pascal-5i", 0): "0019fa53b9b76fa42d31884a1c35d97f237c30753d2c48db5128bc63615c9131",
    ("pascal-5i", 1): "513f7d2a1dc6c41a7e2fbd3407f43e08f2ae2ee3a44663a7a33249d7b4a606fb",
    ("pascal-5i", 2): "a6693bf744c38203bf621da724d03961f514e8c4e73808fd20e9837a036af17b",
    ("pascal-5i", 3): "4eb68935ad09def4b9f946e606f088310a75a67a334a248743ef9c3f10274093",
    ("coco-20i", 0): "47bf9cf5e573ba30c16680097a99edcd98809a40396f9c5c73ad550dc2f7a20e",
    ("coco-20i", 1): "867e29c731cd525b6d7af06ed816ec687a70d9484db37391bcd132f5b2d2681a",
    ("coco-20i", 2): "e6bc8925aac1c66345c2cb5eaade422bf4d0329811ba6ef26058278c65685142",
    ("coco-20i", 3): "c1b061ad36878ba4f1b0a9b3e364c81d0b3663d0aa5088e0ff56af5fb65eeea3",
}
SIZES = {("pascal-5i", 0): 20003, ("pascal-5i", 2): 21003, ("coco-20i", 0): 46874, ("coco-20i", 2): 46904}


@pytest.mark.parametrize("name,fold", sorted(OFFICIAL_SHA256))
def test_official_lists_equal_the_published_ones_bit_for_bit(name, fold):
    data = serialize(get_benchmark(name), official_episodes(get_benchmark(name), fold))
    assert hashlib.sha256(data).hexdigest() == OFFICIAL_SHA256[(name, fold)]
    if (name, fold) in SIZES:
        assert len(data) == SIZES[(name, fold)]


def test_pascal_wraps_its_list_to_1000():
    eps = official_episodes(PASCAL, 0)
    assert len(eps) == 1000 and eps[0] == Episode(0, "2007_000033") and eps[346] == eps[0] and eps[692] == eps[0]
    assert eps[999] == eps[307] and eps[654] == eps[308]  # entries 0..307 three times, 308..345 twice
    assert dict(collections.Counter(e.class_id for e in eps)) == {0: 229, 1: 164, 2: 250, 3: 166, 4: 191}
    assert dict(collections.Counter(e.class_id for e in official_episodes(PASCAL, 2))) == \
        {10: 99, 11: 163, 12: 103, 13: 94, 14: 541}


def test_coco_draws_replay_seed_0_without_touching_numpy_global_rng():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    eps = official_episodes(COCO, 0)
    assert np.array_equal(np.random.get_state()[1], before)
    assert eps[0] == Episode(72, "val2014/COCO_val2014_000000507081.jpg")
    assert eps[1] == Episode(32, "val2014/COCO_val2014_000000205594.jpg")
    assert eps[-1] == Episode(40, "val2014/COCO_val2014_000000107405.jpg")
    assert len({e.key for e in eps}) == 943 and {e.class_id for e in eps} == set(range(0, 80, 4))
    assert official_episodes(COCO, 0) == eps  # a pure function of the fold


def test_fair_lists_hold_every_pair_once():
    assert [len(fair_pairs(PASCAL, f)) for f in range(4)] == [346, 451, 725, 346]
    assert [len(fair_pairs(COCO, f)) for f in range(4)] == [35783, 17912, 14563, 14315]
    pairs = fair_pairs(COCO, 3)
    assert len(set(pairs)) == len(pairs) and pairs[0].class_id == 3 and pairs[-1].class_id == 79


def test_fss_queries_are_every_jpg_in_sorted_order(tmp_path):
    from lseg.zeroshot.splits import fss_categories

    cats = fss_categories("test")
    for cat in cats:
        (tmp_path / "FSS-1000" / cat).mkdir(parents=True)
    for n in ("1.jpg", "1.png", "10.jpg", "10.png", "2.jpg", "2.png", "notes.txt"):
        (tmp_path / "FSS-1000" / cats[1] / n).write_bytes(b"")
    eps = fss_queries(tmp_path)
    assert eps == [Episode(761, f"{cats[1]}/{n}") for n in ("1.jpg", "10.jpg", "2.jpg")]
    assert official_episodes(FSS, 0, tmp_path) == fair_pairs(FSS, 0, tmp_path) == eps


def test_serialized_format_is_one_json_array_per_line():
    assert serialize(PASCAL, [Episode(0, "2007_000033"), Episode(3, "2007_000061")]) == \
        b'[\n["2007_000033", 0],\n["2007_000061", 3]\n]\n'
    assert serialize(COCO, [Episode(72, "val2014/x.jpg")]) == b'[\n[72, "val2014/x.jpg"]\n]\n'
