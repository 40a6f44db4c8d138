#!/usr/bin/env python
"""Segment images with free-form labels: colour mask + overlay with a legend per image.

    python tools/predict.py --checkpoint RUN/checkpoints/last.pt --image street.jpg \\
        --labels "car,road,tree,sky,other" --output preds/
    python tools/predict.py --checkpoint lseg_demo.pt --image a.jpg b.jpg --labels-file labels.txt \\
        --scales 0.75 1.0 1.25 --flip --device cuda --output preds/

Writes, per image ``NAME``: ``NAME_mask.png`` (one colour per label), ``NAME_overlay.png`` (image
blended with the mask, legend underneath with each label's share of the pixels) and
``NAME_ids.png`` (8-bit label indices, 0 = first label, for scripts). Labels are bare text queries,
as in the official demo ("other" is just another query). Inference is lseg/inference.py: one
sliding-window pass at ``--base-size`` by default, or the official multi-scale sum with
``--scales`` (and ``--flip``). Any lseg-hpc checkpoint works: training, averaged, or converted
from the official release with tools/convert_langseg.py.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from lseg.checkpoint_io import load_checkpoint  # noqa: E402
from lseg.cli import cli_main  # noqa: E402
from lseg.inference import Protocol, infer, logits_fn, official_protocol, single_protocol, whole_protocol  # noqa: E402


class PredictError(ValueError):
    """Bad labels, images or options; printed as one line."""


def parse_labels(text: str | None, file: str | None) -> list[str]:
    """Comma-separated ``--labels`` or a file (one label per line, commas also split)."""
    if (text is None) == (file is None):
        raise PredictError("give exactly one of --labels and --labels-file")
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8").replace("\n", ",")
        except FileNotFoundError:
            raise PredictError(f"labels file not found: {file}") from None
    labels = [" ".join(x.split()) for x in str(text).split(",")]
    labels = [x for x in labels if x]
    if not labels:
        raise PredictError("no labels given")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise PredictError(f"duplicate labels: {', '.join(dupes)}")
    return labels


def colours(n: int) -> np.ndarray:
    """``n`` well-separated RGB colours (golden-ratio hue steps), stable for a given index."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        h = (0.07 + i * 0.6180339887) % 1.0
        s = 0.75 if i % 2 == 0 else 0.55
        v = 0.95 if (i // 2) % 2 == 0 else 0.75
        out[i] = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def load_image(path: str | Path) -> Image.Image:
    try:
        img = Image.open(path)
        img = ImageOps.exif_transpose(img)  # phone photos: honour the orientation tag
        return img.convert("RGB")
    except FileNotFoundError:
        raise PredictError(f"image not found: {path}") from None
    except OSError as exc:
        raise PredictError(f"cannot read image {path}: {exc}") from None


def to_input(img: Image.Image) -> torch.Tensor:
    """(1,3,H,W) float32 normalised with mean = std = 0.5 (what the model expects)."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return (arr / 127.5 - 1.0).unsqueeze(0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def legend(width: int, labels: Sequence[str], palette: np.ndarray, shares: Sequence[float],
           max_entries: int = 40) -> Image.Image:
    """A white strip listing labels (largest share first) with colour swatches and percentages.

    All labels are listed when there are few; with many, only those present in the prediction.
    """
    order = sorted(range(len(labels)), key=lambda i: -shares[i])
    if len(labels) > 12:
        order = [i for i in order if shares[i] > 0]
    order = order[:max_entries]
    size = max(11, min(18, width // 40))
    font = _font(size)
    row_h, pad = size + 8, 6
    entries = [f"{labels[i]} ({100 * shares[i]:.1f}%)" for i in order]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_w = max([int(probe.textlength(t, font=font)) for t in entries] + [40]) + row_h + 2 * pad
    cols = max(1, width // col_w)
    rows = max(1, -(-len(order) // cols))
    strip = Image.new("RGB", (width, rows * row_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, (i, text) in enumerate(zip(order, entries)):
        x, y = pad + (k % cols) * col_w, pad + (k // cols) * row_h
        sw = row_h - 6
        draw.rectangle([x, y + 2, x + sw, y + 2 + sw], fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
        draw.text((x + sw + 6, y + 2), text, fill=(0, 0, 0), font=font)
    return strip


def render(img: Image.Image, pred: np.ndarray, labels: Sequence[str], alpha: float) -> tuple[Image.Image, Image.Image]:
    """(colour mask, overlay with legend) for a (H,W) array of label indices."""
    palette = colours(len(labels))
    mask = Image.fromarray(palette[pred])
    blended = Image.blend(img, mask, alpha)
    counts = np.bincount(pred.ravel(), minlength=len(labels))
    shares = (counts / max(pred.size, 1)).tolist()
    strip = legend(img.width, labels, palette, shares)
    overlay = Image.new("RGB", (img.width, img.height + strip.height), (255, 255, 255))
    overlay.paste(blended, (0, 0))
    overlay.paste(strip, (0, img.height))
    return mask, overlay


def checkpoint_sizes(path: str | Path) -> tuple[int, int]:
    """(base size, crop size) the checkpoint was trained with (defaults 520/480 if absent)."""
    cfg = load_checkpoint(path).get("config") or {}
    data = cfg.get("data") or {}
    return int(data.get("base_size", 520)), int(data.get("crop_size", 480))


def build_protocol(args: argparse.Namespace) -> Protocol:
    if args.whole:
        return whole_protocol(scales=tuple(args.scales or (1.0,)), flip=args.flip)
    base, crop = args.base_size, args.crop_size
    if base is None or crop is None:
        b, c = checkpoint_sizes(args.checkpoint)
        base, crop = base or b, crop or c
    if args.scales:
        return official_protocol(base, crop, args.stride, scales=tuple(args.scales), flip=args.flip)
    return dataclasses.replace(single_protocol(base, crop, args.stride), flip=args.flip)


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}_{k}"
    used.add(stem)
    return stem


def predict(args: argparse.Namespace) -> list[Path]:
    from lseg.models import load_model

    labels = parse_labels(args.labels, args.labels_file)
    if len(labels) > 255 and args.ids:
        raise PredictError("more than 255 labels do not fit an 8-bit id PNG; use --no-ids")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PredictError("--device cuda but no CUDA device is visible")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    images = [(p, load_image(p)) for p in args.image]  # fail on a bad path before loading the model
    protocol = build_protocol(args)
    model = load_model(args.checkpoint, device=device, use_ema=args.ema)
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    fn = logits_fn(model, labels, autocast)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for path, img in images:
        with torch.no_grad():
            scores = infer(fn, to_input(img).to(device), protocol)
        pred = scores.argmax(1)[0].cpu().numpy().astype(np.int64)
        mask, overlay = render(img, pred, labels, args.alpha)
        stem = _unique_stem(Path(path), used)
        mask.save(out_dir / f"{stem}_mask.png")
        overlay.save(out_dir / f"{stem}_overlay.png")
        written += [out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"]
        if args.ids:
            Image.fromarray(pred.astype(np.uint8), mode="L").save(out_dir / f"{stem}_ids.png")
            written.append(out_dir / f"{stem}_ids.png")
        present = [labels[i] for i in np.unique(pred)]
        print(f"{path}: {img.width}x{img.height} -> {out_dir / (stem + '_overlay.png')} ({', '.join(present)})")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="lseg-hpc checkpoint (training, averaged or converted)")
    p.add_argument("--image", nargs="+", required=True, metavar="IMG", help="input image file(s)")
    p.add_argument("--labels", default=None, help='comma-separated text labels, e.g. "dog,grass,other"')
    p.add_argument("--labels-file", default=None, help="file with one label per line")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="multi-scale inference (official: 0.5 0.75 1 1.25 1.5 1.75); default one scale")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="add flipped inference")
    p.add_argument("--base-size", type=int, default=None, help="long side at scale 1 (default: the checkpoint's)")
    p.add_argument("--crop-size", type=int, default=None, help="sliding window (default: the checkpoint's)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default 2/3 of the crop)")
    p.add_argument("--whole", action="store_true", help="no resizing or windows: the image as is (padded to 16)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    p.add_argument("--ids", action=argparse.BooleanOptionalAction, default=True, help="also write NAME_ids.png")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


@cli_main(PredictError, ValueError)  # ValueError: invalid protocol flags (stride, scales)
def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if not 0.0 <= args.alpha <= 1.0:
        raise PredictError("--alpha must be in [0, 1]")
    predict(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
