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
import time
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


# ------------------------------------------------------------------ small checkpoints for averaging tests
def averaging_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict with every dtype averaging treats differently (fp32/fp16/bf16, int and bool buffers)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "half.weight": torch.randn(5, generator=g).to(torch.float16),
        "bf.weight": torch.randn(6, generator=g).to(torch.bfloat16),
        "bn.running_mean": torch.randn(4, generator=g),
        "bn.num_batches_tracked": torch.tensor(100 * (seed + 1)),
        "mask": torch.tensor([True, seed % 2 == 0]),
    }


def write_model_checkpoint(path: Path, state: dict, step: int, ema: dict | None = None) -> Path:
    """A training-like checkpoint file (with optimizer state, which averaging must drop)."""
    payload = {"format": FORMAT, "model": state, "config": {"model": {"features": 8}}, "step": step,
               "optimizer": {"state": {}}}
    if ema is not None:
        payload["ema"] = ema
    from lseg.checkpoint_io import save_atomic

    save_atomic(payload, path)
    return path


def fake_run(root: Path) -> Path:
    """A run dir with steps 100-400 (eval/mIoU 0.2, 0.5, 0.4, 0.1); step 300's metric only in metrics.jsonl."""
    run = root / "run"
    ck = run / "checkpoints"
    entries = []
    for step, miou in {100: 0.2, 200: 0.5, 300: 0.4, 400: 0.1}.items():
        write_model_checkpoint(ck / f"step_{step:08d}.pt", averaging_state(step), step)
        if step != 300:
            entries.append({"path": f"step_{step:08d}.pt", "step": step, "metrics": {"eval/mIoU": miou}})
    (ck / "index.json").write_text(json.dumps({"checkpoints": entries, "best": None}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 300, "epoch": 2, "eval/mIoU": 0.4}) + "\nnot json\n" + json.dumps({"step": 10, "loss": 1.0}) + "\n")
    shutil.copyfile(ck / "step_00000400.pt", ck / "last.pt")
    return run


# ------------------------------------------------------------------ the web demo (python -m lseg.app)
def skip_or_fail_in_ci(reason: str) -> None:
    """Skip with a visible reason locally; under CI (CI=true) a missing dependency must not pass silently."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)


def start_app(checkpoint: Path, log: Path, *flags: str, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``python -m lseg.app`` on a free loopback port, output to ``log``; (process, URL) once it serves."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lseg.app", "--checkpoint", str(checkpoint),
                                 "--port", str(port), *flags], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while f"lseg demo on {url}" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            stop_app(proc)
            raise AssertionError(f"the demo did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, url


def stop_app(proc: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops the demo (then SIGKILL if it hangs); the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
