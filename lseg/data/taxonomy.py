"""MSeg universal taxonomy: class list and dataset-id -> universal-id lookup tables.

Why lookup tables: a relabeled label PNG holds ids of its dataset's taxonomy (line numbers of the
names file, alphabetical), while the model is trained on universal ids (row order of
``MSeg_master.tsv``). A 256-entry ``uint8`` table turns remapping a whole label image into one
vectorised lookup (``table[label]`` or ``PIL.Image.point``), with 255 = ignore kept as 255.

CLI: ``python -m lseg.data.taxonomy [--mseg-root DIR] [--json]`` prints the universal classes and
each supported dataset's relabeled-id -> universal-id table.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lseg.data.errors import DataError
from lseg.data.paths import DATASET_LISTS, MASTER_TSV, SUPPORTED_DATASETS, resolve_mseg_root

IGNORE_INDEX = 255
UNIVERSAL_COLUMN = "universal"
UNLABELED = "unlabeled"


def read_lines(path: Path) -> list[str]:
    """Lines of a text file without line endings; tolerates CRLF and a missing final newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"taxonomy file not found: {path}") from None
    return [line.rstrip("\r") for line in text.split("\n")]


def parse_cell(cell: str) -> list[str]:
    """Class names in one TSV cell: empty, ``name`` or ``{a, b,c}`` (irregular spacing)."""
    cell = cell.strip()
    if cell.startswith("{") and cell.endswith("}"):
        cell = cell[1:-1]
    return [part.strip() for part in cell.split(",") if part.strip()]


def read_names(mseg_root: Path, dataset: str) -> list[str]:
    """Class names of a dataset taxonomy; the id is the 0-based line number."""
    path = mseg_root / DATASET_LISTS / dataset / f"{dataset}_names.txt"
    names = [line.strip() for line in read_lines(path)]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise DataError(f"malformed names file (empty line): {path}")
    return names


@dataclass(frozen=True)
class Taxonomy:
    """The universal class list plus, per supported dataset, its classes and lookup table."""

    universal: tuple[str, ...]  # universal id -> raw universal name (e.g. 'road_barrier')
    dataset_classes: dict[str, tuple[str, ...]]  # dataset -> its class names (id = position)
    tables: dict[str, np.ndarray]  # dataset -> uint8[256]: dataset id -> universal id, 255 ignore

    @property
    def num_classes(self) -> int:
        return len(self.universal)

    def table(self, dataset: str) -> np.ndarray:
        if dataset not in self.tables:
            raise DataError(f"unknown dataset '{dataset}': supported are {', '.join(self.tables)}")
        return self.tables[dataset]

    def remap(self, dataset: str, label: np.ndarray) -> np.ndarray:
        """Dataset ids -> universal ids for a whole uint8 label array (one table lookup)."""
        return self.table(dataset)[label]


def _build_table(rows: list[list[str]], col: int, dataset: str, names: list[str],
                 universal: list[str], tsv: Path) -> np.ndarray:
    """Invert the dataset column: each dataset class must sit in exactly one row."""
    where: dict[str, int] = {}
    index = {n: i for i, n in enumerate(names)}
    for row_id, row in enumerate(rows):
        for name in parse_cell(row[col]):
            if name not in index:
                raise DataError(f"{tsv}: class '{name}' of column {dataset} is not in its names file")
            if name in where:
                raise DataError(f"{tsv}: class '{name}' of column {dataset} appears in two rows")
            where[name] = row_id
    missing = [n for n in names if n not in where]
    if missing:
        raise DataError(f"{tsv}: {dataset} classes missing from the table: {', '.join(missing)}")
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for dataset_id, name in enumerate(names):
        row_id = where[name]
        table[dataset_id] = IGNORE_INDEX if row_id >= len(universal) else row_id
    return table


def parse_master_tsv(mseg_root: Path, datasets: tuple[str, ...] = SUPPORTED_DATASETS) -> Taxonomy:
    """Read ``MSeg_master.tsv`` and the names files of ``datasets`` (columns looked up by header)."""
    tsv = mseg_root / MASTER_TSV
    lines = [line for line in read_lines(tsv) if line.strip()]
    header = [h.strip() for h in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:]]
    if any(len(r) != len(header) for r in rows):
        raise DataError(f"{tsv}: rows do not all have {len(header)} tab-separated columns")
    if UNIVERSAL_COLUMN not in header:
        raise DataError(f"{tsv}: no '{UNIVERSAL_COLUMN}' column")
    names_all = [r[header.index(UNIVERSAL_COLUMN)].strip() for r in rows]
    if names_all[-1] != UNLABELED:
        raise DataError(f"{tsv}: last row must be '{UNLABELED}', got '{names_all[-1]}'")
    universal = names_all[:-1]  # the final 'unlabeled' row is id 255, not a class
    classes, tables = {}, {}
    for ds in datasets:
        if ds not in header:
            raise DataError(f"{tsv}: no column for dataset '{ds}'")
        names = read_names(mseg_root, ds)
        classes[ds] = tuple(names)
        tables[ds] = _build_table(rows, header.index(ds), ds, names, universal, tsv)
    return Taxonomy(tuple(universal), classes, tables)


@functools.lru_cache(maxsize=8)
def _load_cached(root: str) -> Taxonomy:
    return parse_master_tsv(Path(root))


def load_taxonomy(mseg_root: str | os.PathLike | None = None) -> Taxonomy:
    """The taxonomy at ``mseg_root`` (resolved like ``data.mseg_root``), parsed once per process."""
    return _load_cached(str(resolve_mseg_root(mseg_root)))


@functools.lru_cache(maxsize=8)
def _column_cached(root: str, column: str) -> dict[str, int]:
    tsv = Path(root) / MASTER_TSV
    lines = [line for line in read_lines(tsv) if line.strip()]
    header = [h.strip() for h in lines[0].split("\t")]
    if column not in header:
        raise DataError(f"{tsv}: no column for dataset '{column}'")
    rows = [line.split("\t") for line in lines[1:]]
    last = len(rows) - 1  # the final 'unlabeled' row: ignore, not a class
    out: dict[str, int] = {}
    for row_id, row in enumerate(rows):
        for name in parse_cell(row[header.index(column)]):
            out[name] = IGNORE_INDEX if row_id >= last else row_id
    return out


def column_ids(mseg_root: str | os.PathLike | None, column: str) -> dict[str, int]:
    """Class name -> universal id (255 = unlabeled) of any dataset column of ``MSeg_master.tsv``.

    Why by name: MSeg numbers a dataset's classes by its own names file (alphabetical for
    ``ade20k-150``), which need not be the order of the dataset's mask values.
    """
    return _column_cached(str(resolve_mseg_root(mseg_root)), column)


def table_as_dict(table: np.ndarray, num_classes: int) -> dict[str, int]:
    return {str(i): int(table[i]) for i in range(num_classes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lseg.data.taxonomy",
        description="Print the MSeg universal classes and each dataset's relabeled-id -> universal-id table.",
    )
    parser.add_argument("--mseg-root", default=None,
                        help="mseg-api checkout (default: env MSEG_ROOT, else the mseg/ submodule)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        tax = load_taxonomy(args.mseg_root)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out: dict = {"universal": list(tax.universal)}
        for ds, names in tax.dataset_classes.items():
            out[ds] = table_as_dict(tax.tables[ds], len(names))
        print(json.dumps(out, indent=1))
        return 0
    print(f"universal: {tax.num_classes} classes (255 = unlabeled/ignore)")
    for uid, name in enumerate(tax.universal):
        print(f"  {uid:3d}  {name}")
    for ds, names in tax.dataset_classes.items():
        print(f"{ds}: {len(names)} classes -> universal id")
        for did, name in enumerate(names):
            uid = int(tax.tables[ds][did])
            print(f"  {did:3d}  {name:<24s} -> {uid:3d}  {tax.universal[uid] if uid < 255 else UNLABELED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
