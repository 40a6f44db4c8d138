#!/usr/bin/env python
"""The main job on its built-in default: synthetic data -> train -> eval -> TensorBoard -> predictions.

    python tools/demo.py [--output-dir runs/demo] [--data-root data/synthetic] [key=value ...]
"""
from __future__ import annotations

import argparse
import sys

from lseg.cli import cli_main, parse_args
from lseg.demo import DemoError, run_demo


@cli_main(DemoError)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/demo", help="run dir (relative to the checkout)")
    parser.add_argument("--data-root", default="data/synthetic", help="synthetic data (written when missing)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra trainer overrides")
    args = parse_args(parser, argv)
    run_demo(args.output_dir, args.data_root, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
