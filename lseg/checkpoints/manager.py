"""The trainer's checkpoint folder: saving, retention, and the checkpoint to resume from.

Retention keeps the last ``keep_last`` saves, every save whose step is a multiple of
``keep_every`` (for averaging) and the best one by ``eval/mIoU`` (``eval/mIoU_seen`` when classes are
held out: choosing by a score that includes the held-out classes would select on them); ``index.json`` records them, so
the rules survive restarts. Resume never trusts ``last.pt`` or the index blindly: it tries every
``step_*.pt`` newest first and skips files that do not load.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from lseg.checkpoint_io import CheckpointError, load_checkpoint, save_atomic
from lseg.checkpoints.files import read_index, step_filename, step_files, write_index

log = logging.getLogger("lseg")
BEST_METRIC = "eval/mIoU"
BEST_METRIC_HOLDOUT = "eval/mIoU_seen"


class CheckpointManager:
    """Saves, prunes and finds checkpoints in ``RUN/checkpoints``. Only rank 0 writes."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3, keep_every: int = 0,
                 best_metric: str = BEST_METRIC) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.best_metric = best_metric

    def step_files(self) -> list[tuple[int, Path]]:
        """All ``step_*.pt`` files, newest first."""
        return step_files(self.dir)

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
        index = read_index(self.dir)
        entries = [e for e in index["checkpoints"] if e["step"] != step]
        entries.append({"path": path.name, "step": step, "metrics": dict(metrics or {})})
        index["checkpoints"] = sorted(entries, key=lambda e: e["step"])
        write_index(self.dir, index)
        self.prune()
        return path

    def record_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Attach eval metrics to the save of ``step`` and update ``best.pt``."""
        index = read_index(self.dir)
        for entry in index["checkpoints"]:
            if entry["step"] == step:
                entry["metrics"].update(metrics)
        best = index["best"]
        value = metrics.get(self.best_metric)
        if value is not None and value == value and (best is None or value > best["value"]):
            path = self.dir / step_filename(step)
            if path.exists():
                self._link(path, self.dir / "best.pt")
                index["best"] = {"step": step, "path": path.name, "metric": self.best_metric, "value": value}
        write_index(self.dir, index)
        self.prune()

    def prune(self) -> None:
        """Delete saves that no retention rule keeps (last K, every M-th, best)."""
        index = read_index(self.dir)
        steps = [s for s, _ in self.step_files()]
        keep = set(steps[: self.keep_last])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        if index["best"]:
            keep.add(index["best"]["step"])
        for s, p in self.step_files():
            if s not in keep:
                p.unlink(missing_ok=True)
        index["checkpoints"] = [e for e in index["checkpoints"] if e["step"] in keep]
        write_index(self.dir, index)

    @staticmethod
    def _link(target: Path, link: Path) -> None:
        """Atomically make ``link`` a hard link to ``target`` (copy where links are unsupported)."""
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError:
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
