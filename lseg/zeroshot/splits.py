"""The split and label files of the official zero-shot protocol, read from inside the package.

Why packed: the episode lists are functions of these exact files (their line order feeds the
PASCAL wrap-around and the COCO random draws), so they ship with the code instead of being looked
up in a checkout at run time. COCO's class -> image lists are stored as JSON (the originals are
Python pickles, which are never loaded here) and gzip-compressed; everything else is a byte copy.
``SHA256`` holds the digest of each original (for COCO: of its JSON form), checked when packing
and by the tests.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from functools import lru_cache
from importlib import resources

#: sha256 of every packed file's content (COCO: the JSON text before compression).
SHA256 = {
    "pascal/trn/fold0.txt": "40fded8be6afbc4b70953277f2a178af8055cddd4e73fb4646b7bf19704b9da2",
    "pascal/trn/fold1.txt": "558167c3c6fea0cda1bb7c7a275e66d5de7bc13cbc97e00c5872ac84d5f0954e",
    "pascal/trn/fold2.txt": "d07e35f4a4ae95774c619bafb57d65d682dbd5b9f33c7f71a4f5cef8e3f99609",
    "pascal/trn/fold3.txt": "ffe09100c0c4d9c19d074a33b0f29fe5a89a730579ba39a9f9e908186298ac17",
    "pascal/val/fold0.txt": "748e2f4732ac502cb3aa1f3768936b394bd7ba4e611ac5bf959291a268e249df",
    "pascal/val/fold1.txt": "afce1929e4dacbc13c07f9a26d4ce7738d415e1b18443fe173e58303836f5c14",
    "pascal/val/fold2.txt": "50b1f5218e8f882ca65d85da5be230b978a70067e9b3e0e9fca1528f546bd7fb",
    "pascal/val/fold3.txt": "c3825d7c52d1608d4c62c5b85d6ef3f74cf5898032bc068a94c971df17bdf71a",
    "fss/trn.txt": "815bce03f2502719ba3bd9c1f79111b74ec8ab63e6111830ff7312de49b1cf17",
    "fss/val.txt": "9cac02c58602f2789b4e6393200e450e3ba1edae6673d6a87ae2063d0c547aee",
    "fss/test.txt": "26f1b9e9dd0c4a58c01db306aeb5bccb5de361d544ec1b15f219efc4b74c0bf1",
    "labels/fewshot_pascal.txt": "7d877f185c807bc51b4cfb4f4202fc0b4e1c6724b782ba245fe36f8d254f0ad7",
    "labels/fewshot_coco.txt": "3ccf800c20ccafc41fb0954368d338bd2cd11f9191978763fda565129ba1657a",
    "labels/fewshot_fss.txt": "016a9a5b5356f1c60357cbfc2067bad487dd24e86266b1697fb6182fecfd090d",
    "coco/trn/fold0.json": "4d8eadccefa07f926ad6d49da28720e3c58d41d13013f492fc347d3ec2c68901",
    "coco/trn/fold1.json": "f763de56288dab6edd20972237e7d8d8cf57eb5fdf4bc8df71d9a48e9bbfba5b",
    "coco/trn/fold2.json": "bd34b4362edf25826dd88c67c486ba05a73f448adfad9d354804b92b4f8b010d",
    "coco/trn/fold3.json": "253ec934c165482132d9f3f28366f852b6a5e237e3044d7767a5a59bab674a10",
    "coco/val/fold0.json": "d9fb6b271f0bd68d35987fa5661617f8dcc31eb15c8ef57782e727565b9e6957",
    "coco/val/fold1.json": "2a3248f7e359c1a96bffbfd90fe4ddbe118b2a78c21caf87d26120bdf4c4ec44",
    "coco/val/fold2.json": "0e916b6995c2ab2b8ea41118606ac2fd16a544fe6a8f0dbfa7f65065b39b27bb",
    "coco/val/fold3.json": "b7ca6a75bc8fa509ca0fe766a02aecfbe18246d52a488fe96668b68f6bb3b89b",
}
#: Files stored gzip-compressed (name in the package = name + ".gz").
COMPRESSED_SUFFIX = ".json"
SPLITS = ("trn", "val")


def packed_name(name: str) -> str:
    """The file name inside ``packed/`` for a logical name such as ``coco/val/fold0.json``."""
    return name + ".gz" if name.endswith(COMPRESSED_SUFFIX) else name


def read_bytes(name: str) -> bytes:
    """The original bytes of a packed file (decompressed where it is stored compressed)."""
    if name not in SHA256:
        raise KeyError(f"no packed file {name!r}")
    data = resources.files("lseg.zeroshot").joinpath("packed", *packed_name(name).split("/")).read_bytes()
    return gzip.decompress(data) if name.endswith(COMPRESSED_SUFFIX) else data


def lines(name: str) -> list[str]:
    """Lines of a packed text file as the official readers see them: split on LF, ``\\r`` stripped,
    the empty piece after a final newline dropped (a file without one keeps its last line)."""
    parts = read_bytes(name).decode("utf-8").split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [p.rstrip("\r") for p in parts]


def verify() -> list[str]:
    """Names of the packed files whose content does not match ``SHA256`` (empty when all match)."""
    return [n for n, digest in SHA256.items() if hashlib.sha256(read_bytes(n)).hexdigest() != digest]


@lru_cache(maxsize=None)
def label_names(benchmark_file: str) -> tuple[str, ...]:
    """Class names of ``labels/fewshot_<x>.txt``, whitespace-stripped, used verbatim as text."""
    return tuple(line.strip() for line in lines(f"labels/{benchmark_file}"))


@lru_cache(maxsize=None)
def pascal_pairs(split: str, fold: int) -> tuple[tuple[str, int], ...]:
    """(VOC image id, 0-based class) per line of ``pascal/<split>/fold<f>.txt``, in file order."""
    out = []
    for line in lines(f"pascal/{split}/fold{fold}.txt"):
        image, cls = line.split("__")
        out.append((image, int(cls) - 1))
    return tuple(out)


@lru_cache(maxsize=None)
def coco_lists(split: str, fold: int) -> dict[int, tuple[str, ...]]:
    """COCO class index -> ordered image paths (relative to ``COCO2014/``) of ``coco/<split>/fold<f>``."""
    data = json.loads(read_bytes(f"coco/{split}/fold{fold}.json"))
    return {int(k): tuple(v) for k, v in data.items()}


@lru_cache(maxsize=None)
def fss_categories(split: str) -> tuple[str, ...]:
    """FSS-1000 category folders of ``fss/<split>.txt`` (trn | val | test), sorted as the official reader does."""
    return tuple(sorted(lines(f"fss/{split}.txt")))
