#!/usr/bin/env python
"""GPU acceptance check: ViT-L/16 480² training steps, the real loader and the official eval, within a budget.

    python tools/gpu_check.py --out DIR [--budget-s 420] [--dry-run] [key=value ...]

Measures, on one GPU and in this order: bf16 training steps at batch 8 and 16 with activation
checkpointing off/on and one fp16 row (images/s, MFU, peak memory), a 200-step run through the real
loader on synthetic data (data wait), the official evaluation protocol's images/s, then the same
steps under torch.compile while the budget lasts. Writes DIR/gpu_check.md and DIR/gpu_check.json
after every case. ``--dry-run`` does all of it on the CPU with the tiny smoke config and 2 steps.
How to run it on a lent GPU: README, "Benchmarks".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lseg.bench import acceptance
from lseg.cli import cli_main, parse_args, positive_float


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    p.add_argument("--budget-s", type=positive_float, default=420.0,
                   help="no case starts once its minimum time no longer fits in this many seconds (default 420)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny smoke config, 2 steps per case")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every case")
    return p


@cli_main()  # bad override, missing taxonomy or unwritable --out: one line, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    acceptance.run(Path(args.out), args.budget_s, args.dry_run, tuple(args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
