"""Zero-shot results: one JSON record per (checkpoint, benchmark, protocol, fold), tables rebuilt from them.

Why per-fold files: folds run as separate array tasks writing into one folder, in any order; each
writes its record and then rebuilds ``results.csv``, ``per_class.csv`` and ``results.md`` from all
records under the folder lock (the same scheme as the evaluation sweep). The tables put the
official and the fair protocol side by side and add the mean over the folds present.
"""
from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

from lseg.checkpoint_io import write_text_atomic
from lseg.evaluation.reports import csv_text, locked, pct
from lseg.zeroshot.protocol import FoldResult

CSV_COLUMNS = ["checkpoint", "benchmark", "protocol", "fold", "mIoU", "FB_IoU", "episodes", "image_size",
               "max_episodes", "precision", "world_size", "seconds", "finished_at", "checkpoint_path"]


def record_name(rec: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{rec['checkpoint']}__{rec['benchmark']}__{rec['protocol']}")
    return f"{slug}__fold{rec['fold']}.json"


def fold_record(result: FoldResult, **settings: Any) -> dict:
    return {**settings, "benchmark": result.benchmark, "protocol": result.protocol, "fold": result.fold,
            "mIoU": result.mIoU, "FB_IoU": result.FB_IoU, "episodes": result.episodes,
            "seconds": round(result.seconds, 2), "per_class_iou": result.per_class_iou,
            "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}


def load_records(out_dir: Path) -> list[dict]:
    recs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out_dir / "folds").glob("*.json"))]
    return sorted(recs, key=lambda r: (r["checkpoint"], r["benchmark"], r["protocol"] != "official", r["fold"]))


def summary_rows(recs: list[dict]) -> list[dict]:
    """Per-fold rows plus, per (checkpoint, benchmark, protocol) with several folds, a ``mean`` row."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((r["checkpoint"], r["benchmark"], r["protocol"]), []).append(r)
    rows = []
    for rs in groups.values():
        rows += rs
        if len(rs) > 1:
            rows.append({**{k: rs[0].get(k) for k in CSV_COLUMNS}, "fold": "mean", "seconds": None,
                         "finished_at": None, "mIoU": sum(r["mIoU"] for r in rs) / len(rs),
                         "FB_IoU": sum(r["FB_IoU"] for r in rs) / len(rs), "episodes": sum(r["episodes"] for r in rs)})
    return rows


def write_tables(out_dir: Path) -> list[dict]:
    rows = summary_rows(load_records(out_dir))
    write_text_atomic(csv_text([CSV_COLUMNS] + [[r.get(c) for c in CSV_COLUMNS] for r in rows]),
                      out_dir / "results.csv")
    per_class = [["checkpoint", "benchmark", "protocol", "fold", "class", "iou"]]
    for r in rows:
        for name, iou in (r.get("per_class_iou") or {}).items():
            per_class.append([r["checkpoint"], r["benchmark"], r["protocol"], r["fold"], name, iou])
    write_text_atomic(csv_text(per_class), out_dir / "per_class.csv")
    lines = ["| checkpoint | benchmark | protocol | fold | episodes | mIoU | FB-IoU |", "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        fold = "**mean**" if r["fold"] == "mean" else r["fold"]
        lines.append(f"| {r['checkpoint']} | {r['benchmark']} | {r['protocol']} | {fold} | {r['episodes']} | "
                     f"{pct(r['mIoU'])} | {pct(r['FB_IoU'])} |")
    note = ("\nValues in %. official = the lang-seg zero-shot test (its episode lists, 480x480 scoring); "
            "fair = every (image, class) pair once at the original resolution. mIoU averages the fold's "
            "novel classes; FB-IoU pools background and foreground areas over the fold.\n")
    write_text_atomic("\n".join(lines) + "\n" + note, out_dir / "results.md")
    return rows


def publish(out_dir: Path, rec: dict, writer=None) -> None:
    """Write a fold's record, rebuild the tables, and log ``<benchmark>/<protocol>/{mIoU,FB-IoU}`` at step = fold."""
    write_text_atomic(json.dumps(rec, indent=1, sort_keys=True) + "\n", out_dir / "folds" / record_name(rec))
    with locked(out_dir):
        write_tables(out_dir)
    if writer is not None:
        tag = f"{rec['benchmark']}/{rec['protocol']}"
        writer.add_scalar(f"{tag}/mIoU", 100 * rec["mIoU"], rec["fold"])
        writer.add_scalar(f"{tag}/FB-IoU", 100 * rec["FB_IoU"], rec["fold"])
        writer.flush()
