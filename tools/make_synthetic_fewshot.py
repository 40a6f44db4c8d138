#!/usr/bin/env python
"""Tiny PASCAL-5i / COCO-20i / FSS-1000 benchmarks in the HSNet layout (real class lists and split files).

    python tools/make_synthetic_fewshot.py --output data/fewshot            # all three, every fold
    python tools/make_synthetic_fewshot.py --output /tmp/fs --benchmarks coco-20i --folds 0 --episodes 8

Writes the images of the first --episodes official episodes and fair pairs of each fold (1000 =
the whole official lists), --train-images entries of each training list, and --fss-images images
per FSS-1000 test category. Then: tools/eval_zeroshot.py --data-root DIR ...
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable

from lseg.cli import cli_main, non_negative_int, positive_int
from lseg.zeroshot.benchmarks import BENCHMARKS, check_folds, get_benchmark
from lseg.zeroshot.synthetic import write_synthetic


@cli_main()
def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/make_synthetic_fewshot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--folds", type=non_negative_int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--episodes", type=positive_int, default=1000, help="images for the first N episodes per fold")
    p.add_argument("--train-images", type=non_negative_int, default=2, help="entries per training list")
    p.add_argument("--fss-images", type=positive_int, default=2, help="images per FSS-1000 test category")
    p.add_argument("--size", type=positive_int, default=32, help="image height (width = 1.25 x)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    a = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    folds = check_folds(get_benchmark("pascal-5i"), a.folds)
    counts = write_synthetic(a.output, a.benchmarks, folds, a.episodes, a.train_images, a.fss_images, a.size, a.seed)
    print(", ".join(f"{name}: {n} images" for name, n in counts.items()) + f" -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
