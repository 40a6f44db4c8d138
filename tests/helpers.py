"""Helpers shared by the test files: paths, the training command, comparisons and failure checks.

Fixtures live in conftest.py files; plain functions live here so any test module can import them
(``tests/`` is on ``sys.path`` through pytest.ini's ``pythonpath``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import resource
import socket
import subprocess
import sys
from pathlib import Path

import torch

from lseg.checkpoint_io import FORMAT, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
ADE = "ade20k-150-relabeled"
ADE_DIR = "ADE20K/ADEChallengeData2016"


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools are scripts, not package modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def base_overrides(data_root: Path) -> list[str]:
    return [f"data.root={data_root}", "data.num_workers=0", "data.crop_size=64", "data.base_size=72",
            "data.eval_size=64", "train.batch_size=2", "eval.batch_size=4", "eval.max_samples=4",
            "log.every=1", "optim.warmup_steps=2", "model.text.layers=1"]


def train_cmd(out: Path, data_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lseg.train", "--config", str(REPO / "configs/smoke.yaml"),
            "--output-dir", str(out), *base_overrides(data_root), *overrides]


def run_train(out: Path, data_root: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(out, data_root, *overrides), capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def final_model(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints/last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]



def one_error_line(capsys, prefix: str = "error: ") -> str:
    """The error line of a failed CLI call: exactly one, the last line of stderr, no traceback.

    (eval_sweep prints a progress line such as "3 cell(s): 0 done, 3 to run" before it works.)
    """
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


class _Evil:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model": {"w": _Evil(marker)}, "config": {}, "step": 9}, path)
    return path


def broken_copy(src: Path, dst: Path) -> Path:
    """A copy of the synthetic data root (ADE20K only is broken by the callers)."""
    shutil.copytree(src, dst)
    return dst


def ade_files(root: Path, kind: str) -> list[Path]:
    sub = "images/training" if kind == "image" else "annotations_semseg150_relabeled/training"
    return sorted((root / ADE_DIR / sub).iterdir())


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def limit_file_size(max_bytes: int):
    """preexec_fn: writes past ``max_bytes`` fail with EFBIG (SIGXFSZ ignored), as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_logged(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\] step (\d+)/", text)]
