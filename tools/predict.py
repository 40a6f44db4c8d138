#!/usr/bin/env python
"""Segment images with free-form labels: colour mask + overlay with a legend per image.

    python tools/predict.py --checkpoint RUN/checkpoints/last.pt --image street.jpg \\
        --labels "car,road,tree,sky,other" --output preds/
    python tools/predict.py --checkpoint lseg_demo.pt --image a.jpg b.jpg --labels-file labels.txt \\
        --scales 0.75 1.0 1.25 --flip --device cuda --output preds/

Writes, per image ``NAME``: ``NAME_mask.png`` (one colour per label), ``NAME_overlay.png`` (image
blended with the mask, legend underneath with each label's share of the pixels) and
``NAME_ids.png`` (8-bit label indices, 0 = first label, for scripts). Labels are bare text queries,
as in the official demo ("other" is just another query). One sliding-window pass at the
checkpoint's base size by default, or the official multi-scale sum with ``--scales`` (and
``--flip``). Any lseg-hpc checkpoint works: training, averaged, or converted from the official
release with tools/convert_langseg.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable

from lseg.cli import cli_main, parse_args, positive_float, positive_int
from lseg.inference import ProtocolError
from lseg.predict import PredictError, PredictSettings, predict_files
from lseg.runtime import DEVICES, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="lseg-hpc checkpoint (training, averaged or converted)")
    p.add_argument("--image", nargs="+", required=True, metavar="IMG", help="input image file(s)")
    p.add_argument("--labels", default=None, help='comma-separated text labels, e.g. "dog,grass,other"')
    p.add_argument("--labels-file", default=None, help="file with one label per line")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--scales", type=positive_float, nargs="+", default=None,
                   help="multi-scale inference (official: 0.5 0.75 1 1.25 1.5 1.75); default one scale")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="add flipped inference")
    p.add_argument("--base-size", type=positive_int, default=None,
                   help="long side at scale 1 (default: the checkpoint's)")
    p.add_argument("--crop-size", type=positive_int, default=None, help="sliding window (default: the checkpoint's)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="window stride, at most the crop size (default 2/3 of the crop)")
    p.add_argument("--whole", action="store_true", help="no resizing or windows: the image as is (padded to 16)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay, 0..1")
    p.add_argument("--ids", action=argparse.BooleanOptionalAction, default=True, help="also write NAME_ids.png")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    return p


@cli_main(PredictError, ProtocolError)
def main(argv: Iterable[str] | None = None) -> int:
    a = parse_args(build_parser(), None if argv is None else list(argv))
    if a.overrides:
        raise PredictError(f"predict.py takes no config overrides (the checkpoint holds the config): {a.overrides[0]}")
    predict_files(PredictSettings(
        checkpoint=a.checkpoint, images=a.image, output=a.output, labels=a.labels, labels_file=a.labels_file,
        scales=a.scales, flip=a.flip, whole=a.whole, base_size=a.base_size, crop_size=a.crop_size,
        stride=a.stride, alpha=a.alpha, write_ids=a.ids, use_ema=a.ema, precision=a.precision, device=a.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
