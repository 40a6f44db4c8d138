#!/usr/bin/env python
"""Pack the official zero-shot split and label files into lseg/zeroshot/packed/ (maintainers, once).

    python tools/pack_fewshot_splits.py --source DIR

DIR holds pascal/{trn,val}/fold*.txt, fss/{trn,val,test}.txt, label_files/fewshot_*.txt (byte
copies from a lang-seg checkout) and coco/{trn,val}/fold*.json (its pickles converted to JSON).
Each file must match the sha256 recorded in lseg/zeroshot/splits.py, or nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable

from lseg.cli import cli_main, parse_args
from lseg.zeroshot.pack import PACKED, pack


@cli_main()
def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/pack_fewshot_splits.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="folder with the original split and label files")
    p.add_argument("--dest", default=str(PACKED), help="output folder (default: the package's packed/)")
    a = parse_args(p, argv)
    if a.overrides:
        p.error(f"unexpected argument {a.overrides[0]!r}")
    names = pack(a.source, a.dest)
    print(f"packed {len(names)} files into {a.dest} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
