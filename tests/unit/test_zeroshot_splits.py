"""lseg.zeroshot.splits / pack: the packed split and label files equal the official ones."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.pack import PACKED, pack
from lseg.zeroshot.splits import (
    SHA256, coco_lists, fss_categories, label_names, lines, packed_name, pascal_pairs, read_bytes, verify,
)

from helpers import REPO


def test_every_packed_file_matches_the_official_checksum():
    assert len(SHA256) == 22 and verify() == []


def test_package_data_ships_every_packed_file():
    patterns = re.search(r'"lseg\.zeroshot": \[([^\]]*)\]', (REPO / "setup.py").read_text()).group(1)
    shipped = {p for pat in re.findall(r'"([^"]+)"', patterns) for p in (REPO / "lseg/zeroshot").glob(pat)}
    assert shipped == {p for p in PACKED.rglob("*") if p.is_file()}
    assert {str(p.relative_to(PACKED)) for p in shipped} == {packed_name(n) for n in SHA256}


def _source(tmp_path: Path) -> Path:
    """The original layout (label_files/, COCO as plain JSON) rebuilt from the package's own bytes."""
    src = tmp_path / "src"
    for name in SHA256:
        path = src / name.replace("labels/", "label_files/", 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read_bytes(name))
    return src


def test_packing_is_deterministic_and_checks_the_source(tmp_path):
    src = _source(tmp_path)
    written = pack(src, tmp_path / "out")
    assert len(written) == 22
    for name in SHA256:
        assert (tmp_path / "out" / packed_name(name)).read_bytes() == (PACKED / packed_name(name)).read_bytes()
    (src / "pascal/val/fold2.txt").write_text("2007_000033__11\n")
    with pytest.raises(ZeroShotError, match=r"fold2.txt: sha256 differs from the official file's; not packing"):
        pack(src, tmp_path / "again")
    assert not (tmp_path / "again").exists()  # nothing written before every file checks out
    (src / "pascal/val/fold2.txt").write_bytes(read_bytes("pascal/val/fold2.txt"))
    (src / "fss/test.txt").unlink()
    with pytest.raises(ZeroShotError, match=r"fss/test.txt: not found"):
        pack(src, tmp_path / "again")


def test_gzip_only_for_the_coco_lists():
    gz = sorted(str(p.relative_to(PACKED)) for p in PACKED.rglob("*.gz"))
    assert gz == [f"coco/{s}/fold{f}.json.gz" for s in ("trn", "val") for f in range(4)]
    raw = gzip.decompress((PACKED / "coco/val/fold0.json.gz").read_bytes())
    assert raw == read_bytes("coco/val/fold0.json") and raw.startswith(b'{\n"0":["val2014/COCO_val2014_000000429717.jpg"')


def test_split_facts():
    assert [len(label_names(f)) for f in ("fewshot_pascal.txt", "fewshot_coco.txt", "fewshot_fss.txt")] == [20, 80, 1000]
    assert label_names("fewshot_pascal.txt")[:2] == ("aeroplane", "bicycle")
    assert label_names("fewshot_coco.txt")[9] == "trafficlight"
    # fss/test.txt has CRLF endings; the lines come back without "\r"
    assert b"\r\n" in read_bytes("fss/test.txt") and not any("\r" in x for x in lines("fss/test.txt"))
    assert [len(fss_categories(s)) for s in ("trn", "val", "test")] == [520, 240, 240]
    assert label_names("fewshot_fss.txt") == fss_categories("trn") + fss_categories("val") + fss_categories("test")
    assert pascal_pairs("val", 0)[:2] == (("2007_000033", 0), ("2007_000061", 3))
    assert [len(pascal_pairs("val", f)) for f in range(4)] == [346, 451, 725, 346]
    val = coco_lists("val", 1)
    assert sorted(val) == list(range(80)) and [c for c in val if val[c]] == list(range(1, 80, 4))
    assert sum(map(len, val.values())) == 17912
    trn = coco_lists("trn", 0)
    assert [c for c in trn if not trn[c]] == list(range(0, 80, 4))
