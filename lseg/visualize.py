"""Colour masks, overlays with a legend, and TensorBoard panels: one look everywhere.

Why one module: predictions written by ``tools/predict.py``, the image panels the trainer logs to
TensorBoard and the web demo should show a label in the same colour and explain the colours the
same way, so a user can compare them side by side. Everything here works on plain label-index
arrays (``ids``: label ``i`` of the list given, anything outside the list, e.g. the ignore index
255, is drawn black and left out of the shares).
"""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: Colour of pixels that carry no label (ignore index, ids outside the label list).
UNLABELLED_RGB = (0, 0, 0)
#: With more labels than this, a legend lists only the labels that occur.
_LIST_ALL_UP_TO = 12


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours, (n, 3) uint8; colour ``i`` does not depend on ``n``.

    Golden-ratio hue steps keep neighbouring ids far apart on the colour wheel, and alternating
    saturation / value separates ids whose hues come close again.
    """
    out = np.zeros((max(n, 0), 3), dtype=np.uint8)
    for i in range(max(n, 0)):
        h = (0.07 + i * 0.6180339887) % 1.0
        s = 0.75 if i % 2 == 0 else 0.55
        v = 0.95 if (i // 2) % 2 == 0 else 0.75
        out[i] = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def colorize(ids: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) uint8; ids outside ``[0, len(colours))`` are black."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(colours))
    out = np.zeros((*ids.shape, 3), dtype=np.uint8)
    out[inside] = colours[ids[inside]]
    out[~inside] = UNLABELLED_RGB
    return out


def label_shares(ids: np.ndarray, num_labels: int) -> list[float]:
    """Fraction of the labelled pixels (ids in ``[0, num_labels)``) that carry each label.

    The shares sum to 1 whenever any pixel is labelled (all zeros otherwise).
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    ids = ids[(ids >= 0) & (ids < num_labels)]
    counts = np.bincount(ids, minlength=num_labels)[:num_labels]
    return (counts / max(int(counts.sum()), 1)).tolist()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def legend(width: int, labels: Sequence[str], colours: np.ndarray, shares: Sequence[float] | None = None,
           max_entries: int = 40) -> Image.Image:
    """A white strip of colour swatches and label names, ``width`` pixels wide.

    With ``shares`` each entry shows its percentage and the largest share comes first; with many
    labels only those that occur are listed. Without shares the labels are listed in order.
    """
    order = list(range(len(labels)))
    if shares is not None:
        order.sort(key=lambda i: -shares[i])
        if len(labels) > _LIST_ALL_UP_TO:
            order = [i for i in order if shares[i] > 0]
    order = order[:max_entries]
    entries = [labels[i] if shares is None else f"{labels[i]} ({100 * shares[i]:.1f}%)" for i in order]
    size = max(11, min(18, width // 40))
    font = _font(size)
    row_h, pad = size + 8, 6
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_w = max([int(probe.textlength(t, font=font)) for t in entries] + [40]) + row_h + 2 * pad
    cols = max(1, width // col_w)
    rows = max(1, -(-len(order) // cols))
    strip = Image.new("RGB", (width, rows * row_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    swatch = row_h - 6
    for k, (i, text) in enumerate(zip(order, entries)):
        x, y = pad + (k % cols) * col_w, pad + (k // cols) * row_h
        draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=tuple(int(c) for c in colours[i]),
                       outline=(0, 0, 0))
        draw.text((x + swatch + 6, y + 2), text, fill=(0, 0, 0), font=font)
    return strip


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (top.width, top.height + bottom.height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def render(image: Image.Image, ids: np.ndarray, labels: Sequence[str],
           alpha: float = 0.5) -> tuple[Image.Image, Image.Image]:
    """(colour mask, overlay) for an (H, W) array of indices into ``labels``.

    The overlay blends ``image`` with the mask (``alpha`` = mask opacity, 0..1) and adds a legend
    underneath with each label's share of the pixels.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = palette(len(labels))
    mask = Image.fromarray(colorize(ids, colours))
    blended = Image.blend(image.convert("RGB"), mask, alpha)
    strip = legend(image.width, labels, colours, label_shares(ids, len(labels)))
    return mask, _stack(blended, strip)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) model input (mean = std = 0.5) back to (H, W, 3) uint8."""
    return ((image.float().cpu().permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)


def panel(image: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, names: Sequence[str]) -> np.ndarray:
    """input | ground truth | prediction side by side, legend of the classes shown (HWC uint8)."""
    colours = palette(len(names))
    gt, pr = np.asarray(target.cpu()), np.asarray(pred.cpu())
    row = np.concatenate([denormalize(image), colorize(gt, colours), colorize(pr, colours)], axis=1)
    shown = [int(i) for i in np.unique(np.concatenate([gt.ravel(), pr.ravel()])) if 0 <= i < len(names)]
    strip = legend(row.shape[1], [names[i] for i in shown], colours[shown])
    return np.asarray(_stack(Image.fromarray(row), strip))
