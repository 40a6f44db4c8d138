"""Where the MSeg taxonomy files, split lists and dataset folders are.

Why one module: three places (config, env ``MSEG_ROOT``, the ``mseg/`` submodule) can supply the
taxonomy, and split lists can come from mseg-api or from a synthetic data root. Resolving them in
one place keeps the precedence identical for the trainer, the CLIs and the tests.
"""
from __future__ import annotations

import os
from pathlib import Path

from lseg.data.errors import DataError

# Path of the taxonomy table inside an mseg-api checkout.
MASTER_TSV = Path("mseg/class_remapping_files/MSeg_master.tsv")
DATASET_LISTS = Path("mseg/dataset_lists")

# Relabeled dataset name -> its folder under data.root (MSeg's download/relabel scripts' layout).
DATASET_DIRS: dict[str, str] = {
    "ade20k-150-relabeled": "ADE20K/ADEChallengeData2016",
    "coco-panoptic-133-relabeled": "COCOPanoptic",
}
SUPPORTED_DATASETS: tuple[str, ...] = tuple(DATASET_DIRS)

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _has_taxonomy(root: Path) -> bool:
    return (root / MASTER_TSV).is_file()


def _normalise(root: Path) -> Path:
    """Accept both the mseg-api checkout and its inner ``mseg/`` package folder."""
    if not _has_taxonomy(root) and (root / "class_remapping_files" / "MSeg_master.tsv").is_file():
        return root.parent
    return root


def resolve_mseg_root(mseg_root: str | os.PathLike | None = None) -> Path:
    """Return the mseg-api checkout to read taxonomy files and split lists from.

    Precedence: the explicit argument (``data.mseg_root``), else env ``MSEG_ROOT``, else ``mseg/``
    next to the package (the git submodule), else ``mseg/`` in the working directory. An explicit
    or env setting that lacks the files is an error rather than a silent fall-through, so a typo
    never picks up a different taxonomy.
    """
    if mseg_root is not None:
        candidates, source = [Path(mseg_root).expanduser()], "data.mseg_root"
    elif os.environ.get("MSEG_ROOT"):
        candidates, source = [Path(os.environ["MSEG_ROOT"]).expanduser()], "MSEG_ROOT"
    else:
        candidates, source = [_REPO_ROOT / "mseg", Path.cwd() / "mseg"], "default"
    for cand in candidates:
        cand = _normalise(cand)
        if _has_taxonomy(cand):
            return cand.resolve()
    looked = ", ".join(str(c / MASTER_TSV) for c in dict.fromkeys(candidates))
    raise DataError(
        f"MSeg taxonomy files not found ({source}; looked for {looked}): run "
        "`git submodule update --init mseg` or set MSEG_ROOT=/path/to/mseg-api (or data.mseg_root)"
    )


def resolve_lists_root(data_root: str | os.PathLike, lists_root: str | os.PathLike | None,
                       mseg_root: str | os.PathLike | None) -> Path:
    """Folder holding ``<dataset>/list/<split>.txt``.

    ``data.lists_root`` wins; otherwise a data root that carries its own ``dataset_lists/`` (the
    synthetic generator writes one) uses it; otherwise mseg-api's lists. Real MSeg data roots have
    no ``dataset_lists/`` folder, so they always read the pinned mseg-api lists.
    """
    if lists_root is not None:
        return Path(lists_root).expanduser()
    own = Path(data_root).expanduser() / "dataset_lists"
    if own.is_dir():
        return own
    return resolve_mseg_root(mseg_root) / DATASET_LISTS


def split_list_path(lists_root: Path, dataset: str, split: str) -> Path:
    return lists_root / dataset / "list" / f"{split}.txt"
