#!/usr/bin/env python
"""Zero-shot benchmarks: PASCAL-5i, COCO-20i, FSS-1000 in the HSNet layout -> CSV, Markdown, TensorBoard.

    python tools/eval_zeroshot.py --benchmark pascal-5i --checkpoint ckpt.pt --data-root /data/hsnet \\
        --output-dir runs/zs/pascal                        # folds 0-3, official and fair protocols
    torchrun --nproc_per_node 8 tools/eval_zeroshot.py --benchmark coco-20i --folds 0 --protocol official ...
    python tools/eval_zeroshot.py --benchmark coco-20i ... --submit --partition gpu   # one array task per fold
    python tools/eval_zeroshot.py --benchmark pascal-5i --checkpoint ckpts/pascal_fold{fold}.pt ...  # a model per fold

official: the lang-seg zero-shot test exactly (1000 wrapped PASCAL episodes, 1000 seeded COCO draws,
every FSS test image; 480x480 scoring). fair: every (image, class) pair of the fold once, at the
image's own resolution. FSS-1000 has no folds: only --folds 0 (the default) is accepted.
Details: README, "Zero-shot benchmarks".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

from lseg.cli import cli_main, non_negative_int, parse_args, positive_int
from lseg.launch import LaunchError, add_scheduler_args
from lseg.runtime import DEVICES, PRECISIONS
from lseg.zeroshot.benchmarks import BENCHMARKS, IMAGE_SIZE
from lseg.zeroshot.protocol import PROTOCOLS
from lseg.zeroshot.run import SUBMIT_TIMEOUT_MIN, ZeroShotSettings, run_zeroshot


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval_zeroshot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    p.add_argument("--checkpoint", required=True,
                   help="any lseg-hpc checkpoint (training, averaged, converted); {fold} in the path = one file "
                        "per fold, e.g. ckpts/pascal_fold{fold}.pt")
    p.add_argument("--data-root", required=True, help="folder holding VOC2012/, COCO2014/ or FSS-1000/")
    p.add_argument("--output-dir", required=True, help="results folder")
    p.add_argument("--folds", type=non_negative_int, nargs="+", default=None,
                   help="default: all (0 1 2 3; FSS-1000: 0)")
    p.add_argument("--protocol", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                   help="official, fair or both (default both)")
    p.add_argument("--label-file", default=None, help="class texts, one per line (default: the official list)")
    p.add_argument("--image-size", type=positive_int, default=IMAGE_SIZE,
                   help=f"model input side (official: {IMAGE_SIZE}; smaller only for smoke tests)")
    p.add_argument("--max-episodes", type=positive_int, default=None,
                   help="only the first N episodes of each fold (smoke tests; not the benchmark's numbers)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast for the image side")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--ema", action="store_true", help="the EMA weights of a training checkpoint")
    p.add_argument("--submit", action="store_true", help="one Slurm array task per fold")
    p.add_argument("--dry-run", action="store_true", help="with --submit: print what would be submitted")
    p.add_argument("--logs-dir", default=None, help="with --submit: submitit log folder (default OUT/submitit)")
    add_scheduler_args(p, gpus_per_node=1, job_arrays=True)
    p.set_defaults(timeout=SUBMIT_TIMEOUT_MIN)
    return p


@cli_main(LaunchError)
def main(argv: Iterable[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(build_parser(), argv)
    return run_zeroshot(ZeroShotSettings(
        benchmark=a.benchmark, checkpoint=a.checkpoint, data_root=a.data_root, output_dir=a.output_dir,
        folds=a.folds, protocols=a.protocol, label_file=a.label_file, image_size=a.image_size,
        max_episodes=a.max_episodes, precision=a.precision, device=a.device, ema=a.ema, overrides=a.overrides,
        submit=a.submit, dry_run=a.dry_run, logs_dir=a.logs_dir,
        rerun=[sys.executable, str(Path(__file__).resolve()), *argv], scheduler=a))


if __name__ == "__main__":
    sys.exit(main())
