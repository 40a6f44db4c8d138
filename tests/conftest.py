"""Shared fixtures: MSeg taxonomy files from ../shared/mseg and a tiny synthetic MSeg dataset."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if "MSEG_ROOT" not in os.environ and (REPO.parent / "shared" / "mseg").is_dir():
    os.environ["MSEG_ROOT"] = str(REPO.parent / "shared" / "mseg")


@pytest.fixture(scope="session")
def mseg_root() -> str:
    """The MSeg taxonomy files; a missing checkout fails loudly instead of skipping."""
    root = os.environ.get("MSEG_ROOT") or str(REPO.parent / "shared" / "mseg")
    if not (Path(root) / "mseg" / "class_remapping_files" / "MSeg_master.tsv").is_file():
        pytest.fail(f"MSeg taxonomy files not found under {root}: set MSEG_ROOT (e.g. ../shared/mseg)")
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """8 train / 4 val images per dataset, 64x80, written by the real generator."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, str(REPO / "tools/make_synthetic_mseg.py"), "--output", str(out),
                    "--num-train", "8", "--num-val", "4", "--size", "64", "80", "--num-classes", "12"],
                   check=True, capture_output=True)
    return out
