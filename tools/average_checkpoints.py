#!/usr/bin/env python
"""Uniform average of model weights from several checkpoints (model-only output).

    python tools/average_checkpoints.py --checkpoints A.pt B.pt C.pt --output avg.pt
    python tools/average_checkpoints.py --run-dir RUN --last 5 --output RUN/avg_last5.pt
    python tools/average_checkpoints.py --run-dir RUN --top 3 --metric eval/mIoU --output RUN/avg_top3.pt

Floating tensors are averaged in float64, integer buffers come from the last checkpoint, key sets
and shapes must agree, EMA weights are used when every checkpoint has them (lseg.checkpoints.average).
The output is {"format", "model", "config", "step", "sources", "averaged"}: it loads with
lseg.models.load_model (eval_sweep.py, predict.py) and holds no optimizer state.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lseg.checkpoint_io import save_atomic
from lseg.checkpoints.average import AverageError, average_checkpoints, select_checkpoints
from lseg.cli import cli_main, parse_args

DEFAULT_METRIC = "eval/mIoU"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="explicit checkpoint files")
    src.add_argument("--run-dir", metavar="RUN", help="a training run directory (default: all its step checkpoints)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--last", type=int, metavar="N", help="with --run-dir: the N newest step checkpoints")
    sel.add_argument("--top", type=int, metavar="N", help="with --run-dir: the N best by --metric")
    p.add_argument("--metric", help=f"with --top: the metric recorded in index.json or metrics.jsonl "
                                    f"(default {DEFAULT_METRIC})")
    p.add_argument("--minimize", action="store_true", help="with --top: pick the smallest values (e.g. a loss)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: average the EMA weights (error if a checkpoint has none); --no-ema: the raw "
                        "model weights; default: EMA if every checkpoint has it")
    p.add_argument("--output", "-o", required=True, help="output checkpoint path")
    p.add_argument("--dry-run", action="store_true", help="print the selection and exit")
    return p


def check_flags(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express; each mistake is one line naming the flag."""
    if args.overrides:
        raise AverageError(f"unexpected argument {args.overrides[0]!r}: averaging takes no config overrides")
    if args.checkpoints and (args.last is not None or args.top is not None):
        raise AverageError("--last/--top need --run-dir")
    if args.top is None and (args.metric is not None or args.minimize):
        raise AverageError("--metric/--minimize only apply to --top")


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    check_flags(args)
    paths = args.checkpoints or select_checkpoints(args.run_dir, args.last, args.top,
                                                   args.metric or DEFAULT_METRIC, maximize=not args.minimize)
    if Path(args.output).resolve() in {Path(p).resolve() for p in paths}:
        raise AverageError(f"--output {args.output} is one of the checkpoints to average; choose another path")
    print(f"averaging {len(paths)} checkpoint(s):")
    for p in paths:
        print(f"  {p}")
    if args.dry_run:
        return 0
    payload = average_checkpoints(paths, use_ema=args.ema)
    save_atomic(payload, args.output)
    print(f"wrote {args.output} ({payload['averaged']['weights']} weights, step {payload['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
