#!/usr/bin/env python
"""Evaluation sweep: checkpoints × datasets × label sets × protocols -> CSV, Markdown, TensorBoard.

    python tools/eval_sweep.py --run-dir RUN --last 3 --output-dir RUN/sweep \\
        --datasets ade20k-150-relabeled coco-panoptic-133-relabeled \\
        --label-sets universal dataset synonyms --protocols single official data.root=/data/mseg_dataset
    torchrun --nproc_per_node 8 tools/eval_sweep.py --checkpoints avg.pt --protocols official --output-dir OUT
    python tools/eval_sweep.py --run-dir RUN --protocols official --output-dir OUT --submit --partition gpu

Each finished cell is written at once (OUT/cells/<id>.json + its confusion matrix), then
results.csv, per_class.csv and results.md are rebuilt and TensorBoard gets the cell's scalars; a
rerun skips finished cells. Label sets: universal | dataset | synonyms | FILE.yaml (substitutions)
| FILE.txt (one prompt per universal class). Protocols: single (one sliding pass at the base size),
official (scales 0.5…1.75, flip, 480² windows with stride 320, raw logits summed), whole (original
resolution, one pass). Metrics: mIoU, pixel accuracy, fwIoU and per-class IoU from one
dataset-level confusion matrix summed over ranks. Details: README, "Evaluation sweeps".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

from lseg.cli import cli_main, non_negative_int, parse_args, positive_float, positive_int
from lseg.config import add_config_args
from lseg.evaluation import SweepError
from lseg.evaluation.sweep import PROTOCOLS, SUBMIT_TIMEOUT_MIN, SweepSettings, run_sweep
from lseg.inference import ProtocolError
from lseg.launch import LaunchError, add_scheduler_args
from lseg.runtime import DEVICES, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval_sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (training, averaged, converted)")
    src.add_argument("--run-dir", metavar="RUN", help="evaluate the step checkpoints of a run")
    p.add_argument("--last", type=positive_int, default=None, metavar="N",
                   help="with --run-dir: only the N newest (default all)")
    p.add_argument("--datasets", nargs="+", default=None, help="default: data.val_datasets")
    p.add_argument("--label-sets", nargs="+", default=["universal"],
                   help="universal | dataset | synonyms | FILE.yaml | FILE.txt (default universal)")
    p.add_argument("--protocols", nargs="+", default=["single"], choices=PROTOCOLS, help="default single")
    p.add_argument("--scales", type=positive_float, nargs="+", default=None, help="official protocol scales")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="official protocol flip")
    p.add_argument("--base-size", type=positive_int, default=None, help="long side at scale 1 (default data.base_size)")
    p.add_argument("--crop-size", type=positive_int, default=None, help="sliding window (default data.crop_size)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="window stride, at most the crop size (default 2/3 of the crop)")
    p.add_argument("--window-batch", type=positive_int, default=8, help="windows per forward pass (memory only)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="first N images of each dataset")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of training checkpoints")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast for the model")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--num-workers", type=non_negative_int, default=None,
                   help="decoding workers (default data.num_workers)")
    p.add_argument("--output-dir", required=True, help="results folder (reruns skip finished cells)")
    p.add_argument("--list", action="store_true", help="print the cells and whether they are done, then exit")
    p.add_argument("--cell", action="append", default=None, help=argparse.SUPPRESS)  # one array task's cell(s)
    p.add_argument("--submit", action="store_true", help="submit one job-array task per pending cell")
    p.add_argument("--dry-run", action="store_true", help="list the cells, or with --submit what would be submitted")
    p.add_argument("--logs-dir", default=None, help="with --submit: submitit log folder (default OUT/submitit)")
    add_scheduler_args(p, gpus_per_node=1, job_arrays=True)
    p.set_defaults(timeout=SUBMIT_TIMEOUT_MIN)  # one cell per task: hours, not the training day
    return p


@cli_main(SweepError, ProtocolError, LaunchError)
def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(build_parser(), argv)
    return run_sweep(SweepSettings(
        output_dir=a.output_dir, checkpoints=a.checkpoints or (), run_dir=a.run_dir, last=a.last, config=a.config,
        overrides=a.overrides, datasets=a.datasets, label_sets=a.label_sets, protocols=a.protocols, scales=a.scales,
        flip=a.flip, base_size=a.base_size, crop_size=a.crop_size, stride=a.stride, window_batch=a.window_batch,
        max_samples=a.max_samples, ema=a.ema, precision=a.precision, device=a.device, num_workers=a.num_workers,
        list_only=a.list, cells=a.cell, submit=a.submit, dry_run=a.dry_run, logs_dir=a.logs_dir,
        rerun=[sys.executable, str(Path(__file__).resolve()), *argv], scheduler=a))


if __name__ == "__main__":
    sys.exit(main())
