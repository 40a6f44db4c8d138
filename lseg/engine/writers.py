"""Where metrics go: console/log.txt, metrics.jsonl and TensorBoard — separate writers, one stream.

The trainer hands every writer the same (step, scalars, extras); writers only format and flush, so
a new destination never touches the training loop. Only rank 0 builds writers, so other ranks
never touch the run dir.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("lseg")


def setup_logging(run_dir: Path | None, is_main: bool, rank: int) -> None:
    """Rank 0 logs INFO to stdout and RUN/log.txt; other ranks only warnings, prefixed by rank."""
    root = logging.getLogger("lseg")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter(f"[%(asctime)s rank{rank}] %(message)s", datefmt="%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if is_main and run_dir is not None:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class ConsoleWriter:
    """One line per logged step: step, epoch, loss, lr, img/s, data-wait %, peak memory, ETA."""

    def write(self, step: int, scalars: dict[str, float], extra: dict[str, Any]) -> None:
        if "train/loss" not in scalars:
            if "eval/mIoU" in scalars:
                log.info("eval step %d: mIoU %.4f  pixel acc %.4f", step, scalars["eval/mIoU"],
                         scalars.get("eval/pixel_acc", float("nan")))
            return
        log.info(
            "step %d/%d  epoch %d  loss %.4f  lr %.3g  %.1f img/s  data-wait %.1f%%  mem %.0f MB  eta %s",
            step, extra.get("max_steps", 0), extra.get("epoch", 0), scalars["train/loss"],
            scalars.get("train/lr", float("nan")), scalars.get("train/img_per_s", float("nan")),
            100 * scalars.get("train/data_wait", float("nan")), scalars.get("train/mem", float("nan")),
            format_duration(extra.get("eta_s", float("nan"))),
        )


class JsonlWriter:
    """RUN/metrics.jsonl: one object per logged step or eval, appended (survives restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, step: int, scalars: dict[str, float], extra: dict[str, Any]) -> None:
        record = {"step": step, **{k: v for k, v in extra.items() if isinstance(v, (int, float, str))},
                  **scalars}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class TensorboardWriter:
    """RUN/tb: scalars, image panels and the resolved config as text."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, scalars: dict[str, float], extra: dict[str, Any]) -> None:
        for key, value in scalars.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        self.tb.add_text(tag, text, step)
        self.tb.flush()

    def add_image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.tb.add_image(tag, image_hwc, step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
