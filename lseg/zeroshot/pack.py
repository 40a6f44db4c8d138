"""Build ``lseg/zeroshot/packed/`` from the original split and label files (run once, by a maintainer).

Source folder layout: the lang-seg split files (``fewshot_data/data/splits/{pascal,fss}``) and label
files (``label_files/``) as they are, with COCO's pickles converted to JSON (``coco/{trn,val}/fold<f>.json``:
an object keyed "0".."79", values the image lists in their original order):

    SOURCE/pascal/{trn,val}/fold{0..3}.txt   SOURCE/fss/{trn,val,test}.txt
    SOURCE/coco/{trn,val}/fold{0..3}.json    SOURCE/label_files/fewshot_{pascal,coco,fss}.txt

Every source file must match :data:`lseg.zeroshot.splits.SHA256` before anything is written, and
the written package files are read back and checked again. Gzip output is deterministic (no name,
mtime 0), so packing twice gives the same bytes.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.splits import SHA256, packed_name

PACKED = Path(__file__).resolve().parent / "packed"


def source_path(source: Path, name: str) -> Path:
    """Where the original of a packed name lives in the source folder."""
    return source / name.replace("labels/", "label_files/", 1)


def pack(source: str | Path, dest: str | Path = PACKED) -> list[str]:
    """Check every source file's sha256, then write the packed copies; returns the packed names."""
    source, dest = Path(source), Path(dest)
    blobs = {}
    for name, digest in SHA256.items():
        path = source_path(source, name)
        if not path.is_file():
            raise ZeroShotError(f"{path}: not found (expected the lang-seg split/label files, COCO as JSON)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ZeroShotError(f"{path}: sha256 differs from the official file's; not packing")
        blobs[name] = data
    written = []
    for name, data in blobs.items():
        out = dest / packed_name(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = gzip.compress(data, compresslevel=9, mtime=0) if out.suffix == ".gz" else data
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(out)
        back = out.read_bytes()
        if hashlib.sha256(gzip.decompress(back) if out.suffix == ".gz" else back).hexdigest() != SHA256[name]:
            raise ZeroShotError(f"{out}: read-back check failed")
        written.append(str(out.relative_to(dest)))
    return written
