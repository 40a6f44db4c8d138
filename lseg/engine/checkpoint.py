"""Training checkpoints: what goes in them, retention, and finding the one to resume from.

Layout (DESIGN §5)::

    RUN/checkpoints/step_00001000.pt   one file per save, written atomically
    RUN/checkpoints/last.pt            hard link to the newest save
    RUN/checkpoints/best.pt            hard link to the best save by eval/mIoU
    RUN/checkpoints/index.json         retention bookkeeping (survives restarts)

Retention keeps the last ``keep_last`` saves, every save whose step is a multiple of
``keep_every`` (for averaging) and the best one. Resume never trusts ``last.pt`` or the index
blindly: it tries every ``step_*.pt`` newest first and skips files that do not load.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lseg.checkpoint_io import CheckpointError, load_checkpoint, save_atomic, write_text_atomic

log = logging.getLogger("lseg")
BEST_METRIC = "eval/mIoU"
_STEP_RE = re.compile(r"^step_(\d{8,})\.pt$")


def step_filename(step: int) -> str:
    return f"step_{step:08d}.pt"


# ------------------------------------------------------------------ state pieces


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors/plain types so that weights_only loading accepts them."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    import ast

    version, internal, gauss = ast.literal_eval(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def provenance(world_size: int) -> dict[str, Any]:
    """Where a checkpoint came from: code version, library versions, world size."""
    import timm

    try:
        import open_clip

        oc = open_clip.__version__
    except Exception:  # noqa: BLE001 - provenance must never break a save
        oc = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {"git_sha": sha, "torch": str(torch.__version__), "timm": str(timm.__version__), "open_clip": str(oc),
            "python": platform.python_version(), "world_size": world_size, "host": platform.node()}


# ------------------------------------------------------------------ manager


class CheckpointManager:
    """Saves, prunes and finds checkpoints in ``RUN/checkpoints``. Only rank 0 writes."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3, keep_every: int = 0) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.index_path = self.dir / "index.json"

    # bookkeeping -------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index_path.read_text())
            if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
                return data
            log.warning("%s: unexpected content, rebuilding it from the files", self.index_path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s), rebuilding it from the files", self.index_path, exc)
        return {"checkpoints": [], "best": None}

    def _write_index(self, index: dict[str, Any]) -> None:
        write_text_atomic(json.dumps(index, indent=2, sort_keys=True) + "\n", self.index_path)

    def step_files(self) -> list[tuple[int, Path]]:
        """All ``step_*.pt`` files, newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_RE.match(p.name))]
        return sorted(found, reverse=True)

    # save ---------------------------------------------------------------------
    def save(self, state: dict[str, Any], step: int, metrics: dict[str, float] | None = None) -> Path:
        """Write ``step_N.pt`` atomically, point ``last.pt`` at it, update index and retention."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / step_filename(step)
        try:
            save_atomic(state, path)
        except CheckpointError as exc:
            newest = next((p for s, p in self.step_files() if s != step), None)
            raise CheckpointError(f"{exc}; newest checkpoint still intact: {newest or 'none'}") from None
        self._link(path, self.dir / "last.pt")
        index = self.read_index()
        entries = [e for e in index["checkpoints"] if e.get("step") != step]
        entries.append({"path": path.name, "step": step, "metrics": dict(metrics or {})})
        index["checkpoints"] = sorted(entries, key=lambda e: e["step"])
        self._write_index(index)
        self.prune()
        return path

    def record_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Attach eval metrics to the save of ``step`` and update ``best.pt``."""
        index = self.read_index()
        for entry in index["checkpoints"]:
            if entry["step"] == step:
                entry["metrics"].update(metrics)
        best = index.get("best")
        value = metrics.get(BEST_METRIC)
        if value is not None and value == value and (best is None or value > best["value"]):
            path = self.dir / step_filename(step)
            if path.exists():
                self._link(path, self.dir / "best.pt")
                index["best"] = {"step": step, "path": path.name, "metric": BEST_METRIC, "value": value}
        self._write_index(index)
        self.prune()

    def prune(self) -> None:
        """Delete saves that no retention rule keeps (last K, every M-th, best)."""
        index = self.read_index()
        steps = sorted((s for s, _ in self.step_files()), reverse=True)
        keep = set(steps[: self.keep_last])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        if index.get("best"):
            keep.add(index["best"]["step"])
        for s, p in self.step_files():
            if s not in keep:
                p.unlink(missing_ok=True)
        index["checkpoints"] = [e for e in index["checkpoints"] if e["step"] in keep]
        self._write_index(index)

    @staticmethod
    def _link(target: Path, link: Path) -> None:
        """Atomically make ``link`` a hard link to ``target`` (copy where links are unsupported)."""
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError:
            import shutil

            shutil.copyfile(target, tmp)
        os.replace(tmp, link)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files of saves that never finished (a process killed mid-write).

        Only the trainer's rank 0 calls this, at start-up, before it writes anything: a temp file
        then cannot belong to a save in progress. Without it, every kill -9 during a save would
        leave a checkpoint-sized file behind until the disk fills.
        """
        if not self.dir.is_dir():
            return []
        stale = [p for p in self.dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for p in stale:
            p.unlink(missing_ok=True)
            log.info("removed unfinished save %s", p.name)
        return stale

    # resume -------------------------------------------------------------------
    def latest_valid(self) -> tuple[Path, dict[str, Any]] | None:
        """Newest checkpoint that loads; corrupt or truncated files are reported and skipped."""
        for _, path in self.step_files():
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("skipping unusable checkpoint: %s", exc)
                continue
            if "model" not in state or "step" not in state:
                log.warning("skipping %s: not a training checkpoint (no model/step)", path)
                continue
            return path, state
        return None
