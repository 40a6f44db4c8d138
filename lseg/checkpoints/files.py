"""A run's checkpoint folder as data: file names, ``index.json``, listing and selection.

Layout written by :class:`lseg.checkpoints.CheckpointManager`::

    RUN/checkpoints/step_00001000.pt   one file per save
    RUN/checkpoints/last.pt, best.pt   hard links to a step file (aliases, never listed)
    RUN/checkpoints/index.json         {"checkpoints": [{"path", "step", "metrics"}, ...],
                                        "best": {"step", "path", "metric", "value"} | null}

The step files on disk are the truth; the index only adds the metrics recorded for each save (and
``RUN/metrics.jsonl`` fills in what an interrupted run never copied into the index).
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lseg.checkpoint_io import CheckpointError, write_text_atomic

log = logging.getLogger("lseg")

#: Names of the per-save files; the zero padding keeps ``ls`` in step order.
STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")
INDEX = "index.json"


def step_filename(step: int) -> str:
    return f"step_{step:08d}.pt"


def step_of(path: str | Path) -> int | None:
    """The step a ``step_*.pt`` file was saved at; None for any other name (``last.pt``, averages)."""
    m = STEP_FILE.match(Path(path).name)
    return int(m.group(1)) if m else None


def step_files(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every step file in ``ckpt_dir``, newest first (none if it does not exist)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(step, p) for p in ckpt_dir.iterdir() if (step := step_of(p)) is not None]
    return sorted(found, reverse=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_index(ckpt_dir: str | Path) -> dict[str, Any]:
    """``index.json`` as the manager writes it; missing, unreadable or malformed parts read as empty.

    Why lenient: the index is bookkeeping next to the files, and a run must stay usable (resume,
    averaging, sweeps) when it is lost or hand-edited; entries without an integer step are dropped.
    """
    path = Path(ckpt_dir) / INDEX
    empty: dict[str, Any] = {"checkpoints": [], "best": None}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); using the step files alone", path, exc)
        return empty
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        log.warning("%s: unexpected content; using the step files alone", path)
        return empty
    entries = []
    for e in data["checkpoints"]:
        if isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e["step"], bool):
            metrics = e.get("metrics") if isinstance(e.get("metrics"), dict) else {}
            entries.append({"path": str(e.get("path") or step_filename(e["step"])), "step": e["step"],
                            "metrics": {k: float(v) for k, v in metrics.items() if _number(v)}})
    best = data.get("best")
    if not (isinstance(best, dict) and isinstance(best.get("step"), int) and _number(best.get("value"))):
        best = None
    return {"checkpoints": entries, "best": best}


def write_index(ckpt_dir: str | Path, index: dict[str, Any]) -> None:
    write_text_atomic(json.dumps(index, indent=2, sort_keys=True) + "\n", Path(ckpt_dir) / INDEX)


def _metrics_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> scalars from ``RUN/metrics.jsonl`` (names with a '/', as the writers log them)."""
    out: dict[int, dict[str, float]] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.setdefault(rec["step"], {}).update(
                {k: float(v) for k, v in rec.items() if "/" in k and _number(v)})
    return out


@dataclass
class RunCheckpoint:
    """One step file of a run and the metrics recorded for its step (e.g. ``eval/mIoU``)."""

    path: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


def list_run_checkpoints(run_dir: str | Path) -> list[RunCheckpoint]:
    """The step checkpoints of a training run dir, oldest first, with their recorded metrics.

    Raises :class:`CheckpointError` (one line) when the run has no step checkpoint, so every
    caller reports an empty or mistyped run dir the same way.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    files = step_files(ckpt_dir)
    if not files:
        where = ckpt_dir if ckpt_dir.is_dir() else run_dir
        raise CheckpointError(f"{where}: no step checkpoints (step_*.pt) found")
    recorded = {e["step"]: e["metrics"] for e in read_index(ckpt_dir)["checkpoints"]}
    logged = _metrics_by_step(run_dir)
    return [RunCheckpoint(path, step, {**logged.get(step, {}), **recorded.get(step, {})})
            for step, path in reversed(files)]


def select_last(ckpts: Sequence[RunCheckpoint], n: int) -> list[RunCheckpoint]:
    """The ``n`` newest checkpoints, oldest first; asking for zero or more than exist is an error."""
    if not 1 <= n <= len(ckpts):
        raise CheckpointError(f"cannot select the last {n} checkpoint(s): {_run(ckpts)} has {len(ckpts)} "
                              f"(steps {_steps(ckpts)})")
    return list(ckpts)[-n:]


def select_top(ckpts: Sequence[RunCheckpoint], n: int, metric: str, maximize: bool = True) -> list[RunCheckpoint]:
    """The ``n`` best checkpoints by ``metric`` (ties: the newer wins), oldest first.

    Only checkpoints with the metric recorded compete; asking for more of them than exist is an
    error, never a silently shorter selection.
    """
    scored = [c for c in ckpts if metric in c.metrics and not math.isnan(c.metrics[metric])]
    if not scored:
        available = sorted({k for c in ckpts for k in c.metrics})
        raise CheckpointError(f"no checkpoint has a recorded '{metric}' (recorded: {', '.join(available) or 'none'})")
    if not 1 <= n <= len(scored):
        raise CheckpointError(f"cannot select the top {n} checkpoint(s) by '{metric}': {len(scored)} of the "
                              f"{len(ckpts)} in {_run(ckpts)} have it recorded (steps {_steps(scored)})")
    sign = 1.0 if maximize else -1.0
    best = sorted(scored, key=lambda c: (sign * c.metrics[metric], c.step), reverse=True)[:n]
    return sorted(best, key=lambda c: c.step)


def _run(ckpts: Sequence[RunCheckpoint]) -> str:
    """The run dir holding ``ckpts`` (``RUN/checkpoints/step_*.pt``), for messages."""
    return str(ckpts[0].path.parent.parent) if ckpts else "the run"


def _steps(ckpts: Sequence[RunCheckpoint]) -> str:
    steps = [str(c.step) for c in ckpts]
    return ", ".join(steps) if len(steps) <= 6 else f"{', '.join(steps[:3])}, ..., {', '.join(steps[-2:])}"
