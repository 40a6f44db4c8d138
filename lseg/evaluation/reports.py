"""Sweep results: one JSON record per finished cell, tables rebuilt from them, TensorBoard, progress.

Why the per-cell files are the truth: cells finish in any order, on any number of array tasks
writing to one folder, and a rerun skips what exists. So each finished cell writes its own record
and confusion matrix, and ``results.csv``, ``per_class.csv`` and ``results.md`` are rebuilt from all
records under a file lock, never appended to.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from lseg.checkpoint_io import save_atomic, write_text_atomic
from lseg.metrics import seen_unseen_metrics, segmentation_metrics

CSV_COLUMNS = [
    "checkpoint", "step", "dataset", "label_set", "protocol", "scales", "flip", "base_size", "crop_size",
    "stride", "weights", "precision", "num_images", "num_bad", "num_classes", "classes_present",
    "mIoU", "pixel_acc", "fwIoU", "mIoU_sub", "seconds", "world_size", "device", "finished_at",
    "checkpoint_path", "cell_id", "per_class_iou",
]
PER_CLASS_COLUMNS = ["cell_id", "checkpoint", "step", "dataset", "label_set", "protocol", "class", "iou", "gt_pixels"]
#: Added after ``mIoU_sub`` (CSV) / as the last column (per-class CSV) only when a cell has held-out classes.
HOLDOUT_COLUMNS = ["mIoU_seen", "mIoU_unseen", "hIoU", "unseen_classes"]
#: Cell settings logged as TensorBoard hparams.
HPARAM_KEYS = ("checkpoint", "step", "dataset", "label_set", "protocol", "scales", "flip", "base_size", "crop_size",
               "stride", "weights", "precision")
SCALAR_KEYS = ("mIoU", "pixel_acc", "fwIoU", "mIoU_sub", "mIoU_seen", "mIoU_unseen", "hIoU")


def cell_record(conf: torch.Tensor, class_names: list[str], substituted: list[bool], images: int, bad: int,
                seconds: float, unseen: list[int] | None = None, **settings: Any) -> dict[str, Any]:
    """The JSON record of one finished cell: ``settings`` (ids, checkpoint, protocol, ...) plus metrics.

    ``mIoU_sub`` averages the substituted (synonym) classes that occur; None when there are none.
    ``unseen``: the classes the checkpoint was trained without (held out); when given, the record
    adds ``mIoU_seen``, ``mIoU_unseen``, ``hIoU`` and ``unseen_classes`` (names).
    """
    m = segmentation_metrics(conf)
    held = {} if unseen is None else {**seen_unseen_metrics(conf, unseen),
                                      "unseen_classes": [class_names[c] for c in unseen]}
    iou = m["per_class_iou"]
    sub = [iou[c] for c in range(len(class_names)) if substituted[c] and m["present"][c]]
    return {
        **settings,
        "num_images": images, "num_bad": bad, "num_classes": len(class_names),
        "classes_present": int(sum(m["present"])),
        "mIoU": m["mIoU"], "pixel_acc": m["pixel_acc"], "fwIoU": m["fwIoU"],
        "mIoU_sub": (sum(sub) / len(sub)) if sub else None,
        **held,
        "seconds": round(seconds, 2),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "per_class_iou": {class_names[c]: (None if math.isnan(v) else v) for c, v in enumerate(iou)},
        "gt_pixels": {class_names[c]: int(v) for c, v in enumerate(conf.sum(1).tolist())},
    }


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise table rebuilds of concurrent array tasks writing to one output folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return buf.getvalue()


#: The same lock and CSV text for other result folders (the zero-shot benchmark tables).
locked, csv_text = _locked, _csv


def pct(v: Any) -> str:
    """A 0..1 metric as a percentage with two decimals ('–' when absent)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def done_cells(out_dir: Path) -> set[str]:
    """Ids of the cells whose record exists in ``out_dir``."""
    cells = out_dir / "cells"
    return {p.stem for p in cells.glob("*.json")} if cells.is_dir() else set()


def load_records(out_dir: Path) -> list[dict]:
    recs = []
    for p in sorted((out_dir / "cells").glob("*.json")):
        try:
            recs.append(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, OSError):
            print(f"warning: unreadable cell file {p} (it will be recomputed)", file=sys.stderr)
    return sorted(recs, key=lambda r: (r["dataset"], r["label_set"], r["protocol"],
                                       r["step"] if r["step"] is not None else -1, r["checkpoint"]))


def write_tables(out_dir: Path) -> list[dict]:
    """Rebuild results.csv, per_class.csv and results.md from every finished cell."""
    recs = load_records(out_dir)
    holdout = any("unseen_classes" in r for r in recs)  # columns appear only when some checkpoint held out classes
    at = CSV_COLUMNS.index("mIoU_sub") + 1
    columns = CSV_COLUMNS[:at] + HOLDOUT_COLUMNS + CSV_COLUMNS[at:] if holdout else CSV_COLUMNS
    write_text_atomic(_csv([columns] + [[r.get(c) for c in columns] for r in recs]), out_dir / "results.csv")
    per_class: list[list[Any]] = [PER_CLASS_COLUMNS + (["unseen"] if holdout else [])]
    for r in recs:
        unseen = set(r.get("unseen_classes", ()))
        for name, iou in r["per_class_iou"].items():
            per_class.append([r["cell_id"], r["checkpoint"], r["step"], r["dataset"], r["label_set"], r["protocol"],
                              name, iou, r.get("gt_pixels", {}).get(name)] + ([name in unseen] if holdout else []))
    write_text_atomic(_csv(per_class), out_dir / "per_class.csv")
    extra = " mIoU seen | mIoU unseen | hIoU |" if holdout else ""
    lines = [
        "| checkpoint | step | dataset | label set | protocol | images | mIoU | pixel acc | fwIoU | mIoU (subst.) |"
        + extra,
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" * 3 if holdout else ""),
    ]
    for r in recs:
        held = "".join(f" {pct(r.get(k))} |" for k in HOLDOUT_COLUMNS[:3]) if holdout else ""
        lines.append(f"| {r['checkpoint']} | {r['step'] if r['step'] is not None else ''} | {r['dataset']} | "
                     f"{r['label_set']} | {r['protocol']} | {r['num_images']} | {pct(r['mIoU'])} | "
                     f"{pct(r['pixel_acc'])} | {pct(r['fwIoU'])} | {pct(r['mIoU_sub'])} |" + held)
    note = ("\nValues in %. mIoU averages the classes present in the ground truth or the prediction; "
            "'subst.' = substituted (synonym) classes only.\n")
    if holdout:
        note += ("'seen' / 'unseen': the classes a checkpoint was trained with / without (data.holdout_classes); "
                 "hIoU = 2 seen unseen / (seen + unseen).\n")
    write_text_atomic("\n".join(lines) + "\n" + note, out_dir / "results.md")
    return recs


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def publish(out_dir: Path, rec: dict, conf: torch.Tensor, writer=None) -> None:
    """Write one finished cell (JSON + confusion matrix), rebuild the tables, log to TensorBoard.

    TensorBoard: ``<dataset>/<label set>/<protocol>/<metric>`` over checkpoint steps, and the cell's
    settings as hparams (run name = cell id).
    """
    cells = out_dir / "cells"
    save_atomic({"confusion": conf, "classes": list(rec["per_class_iou"])}, cells / f"{rec['cell_id']}.conf.pt")
    write_text_atomic(json.dumps(rec, indent=1, sort_keys=True) + "\n", cells / f"{rec['cell_id']}.json")
    with _locked(out_dir):
        write_tables(out_dir)
    if writer is None:
        return
    tag = f"{rec['dataset']}/{rec['label_set']}/{rec['protocol']}"
    step = rec["step"] if rec["step"] is not None else 0
    for k in SCALAR_KEYS:
        if _finite(rec.get(k)):
            writer.add_scalar(f"{tag}/{k}", rec[k], step)
    hparams = {k: ("" if rec[k] is None else rec[k] if isinstance(rec[k], (int, float, str, bool)) else str(rec[k]))
               for k in HPARAM_KEYS if k in rec}
    metrics = {f"hparam/{k}": rec[k] for k in ("mIoU", "pixel_acc", "fwIoU", "hIoU") if _finite(rec.get(k))}
    writer.add_hparams(hparams, metrics, run_name=rec["cell_id"])
    writer.flush()


def _fmt_s(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


class Progress:
    """tqdm when installed (ETA over all pending images of all cells), else a plain line printer."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled, self.total, self.done, self.t0 = enabled, total, 0, time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass
        self._last_print = 0.0

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        """A message line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last_print > 10 or self.done == self.total):
            self._last_print = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"  {self.done}/{self.total} images, {rate:.2f} img/s, ETA {_fmt_s(eta)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
