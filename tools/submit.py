#!/usr/bin/env python
"""Submit LSeg training to Slurm through submitit (or run it on this machine with ``--local``).

    python tools/submit.py --config configs/lseg_vitl16_480_mseg.yaml --output-dir runs/mseg \\
        --nodes 2 --partition gpu --timeout 24:00:00 [key=value ...]

Scheduler flags sit on top of the training CLI (``--config``, ``--output-dir``, ``key=value``), so a
run launched here and one launched with ``python -m lseg.train`` read the same config the same way.
Flags and config are validated before anything is submitted: a mistake fails here, in one line.
Signals, exit codes and requeueing: see ``lseg.launch.train_job`` and ``lseg.engine.preemption``.
"""
from __future__ import annotations

import argparse
import sys

from lseg.cli import cli_main, parse_args
from lseg.config import add_config_args
from lseg.launch import LaunchError, add_scheduler_args
from lseg.launch.train_job import submit_training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/submit.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", default=None,
                        help="run directory (sets train.output_dir; default: the config's)")
    add_scheduler_args(parser)
    r = parser.add_argument_group("run")
    r.add_argument("--dry-run", action="store_true", help="print the job script and resolved config; submit nothing")
    r.add_argument("--wait", action="store_true", help="wait for the job and print its result (--local always waits)")
    return parser


@cli_main(LaunchError)  # config errors, conflicting flags, an unwritable run dir, ...: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    return submit_training(parse_args(build_parser(), argv))


if __name__ == "__main__":
    sys.exit(main())
