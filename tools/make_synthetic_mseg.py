#!/usr/bin/env python
"""Write small synthetic datasets in the on-disk layout of a registered dataset (default: MSeg's relabeled sets).

Examples (data.root=<output> then finds them):
    python tools/make_synthetic_mseg.py --output data/synthetic
    python tools/make_synthetic_mseg.py --output data/bench --num-train 64 --num-val 8 --size 480 640
    python tools/make_synthetic_mseg.py --layout foodseg103 --output data/synthetic   # also ade20k-150, folder

The mseg layout needs the MSeg taxonomy files (env MSEG_ROOT or the mseg/ submodule) for the real relabeled ids.
"""
from __future__ import annotations

import argparse
import sys

from lseg.cli import cli_main, non_negative_int
from lseg.data.paths import SUPPORTED_DATASETS
from lseg.data.synthetic import LAYOUTS, make_synthetic


@cli_main()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder to use as data.root")
    p.add_argument("--layout", default="mseg", choices=LAYOUTS,
                   help="mseg: relabeled COCOPanoptic + ADE20K; or a dataset's own release layout")
    p.add_argument("--num-train", type=non_negative_int, default=48, help="training images per dataset")
    p.add_argument("--num-val", type=non_negative_int, default=16, help="validation images per dataset")
    p.add_argument("--size", type=int, nargs=2, default=[120, 160], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=non_negative_int, default=24,
                   help="classes drawn from (mseg: universal classes shared by both datasets); 0 = all")
    p.add_argument("--datasets", nargs="+", default=None, choices=SUPPORTED_DATASETS, help="mseg layout only")
    p.add_argument("--mseg-root", default=None, help="mseg-api checkout (default: env MSEG_ROOT, else mseg/)")
    args = p.parse_args(argv)  # no config here, so no key=value overrides: argparse refuses them
    if min(args.size) < 8:
        p.error(f"--size: both sides must be >= 8, got {args.size[0]} {args.size[1]}")
    if args.datasets and args.layout != "mseg":
        p.error("--datasets: only with --layout mseg")
    counts = make_synthetic(args.output, args.layout, args.num_train, args.num_val, tuple(args.size), args.seed,
                            args.num_classes, args.datasets, args.mseg_root)
    for ds, splits in counts.items():
        print(f"{ds}: " + ", ".join(f"{n} {s}" for s, n in splits.items()))
    print(f"wrote {args.output} (use data.root={args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
