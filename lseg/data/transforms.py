"""Training and evaluation transforms (official LSeg recipe), seeded per sample.

Recipe (lang-seg / PyTorch-Encoding ``base.py``): random horizontal flip; random long side in
``[scale_range[0], scale_range[1]] * base_size`` with the aspect kept (bilinear image, nearest
label); pad right/bottom to at least ``crop_size`` (image 0 before normalisation, label 255);
random ``crop_size``² crop; normalise with mean = std = 0.5. Evaluation: short side -> ``eval_size``,
centre crop ``eval_size``².

Why the image crop is resampled directly: PIL's ``resize(box=...)`` resamples only the source
rectangle that lands inside the crop, with the same filter footprint and pixel centres as resizing
the whole image and then cropping (PIL clamps filters to the full image, not the box). For a 2x
upscale of a 640x480 JPEG that is a quarter of the bilinear work, the dominant per-sample cost.

Why an explicit seed: all randomness comes from ``random.Random(seed)`` where the sampler supplies
the seed for each (run seed, epoch, position). Augmentation is then identical whatever the number
of workers, ranks or resumptions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IGNORE_INDEX = 255
IMAGE_PAD = 0  # raw pixel value of padding, i.e. -1.0 after normalisation

_BILINEAR = Image.Resampling.BILINEAR
_NEAREST = Image.Resampling.NEAREST
_FLIP = Image.Transpose.FLIP_LEFT_RIGHT


def _resize_region(image: Image.Image, label: Image.Image, ow: int, oh: int,
                   x0: int, y0: int, x1: int, y1: int) -> tuple[Image.Image, Image.Image]:
    """Pixels [x0, x1) x [y0, y1) of the pair resized to (ow, oh), without resizing the rest.

    The image resamples only its source box (bilinear, same pixel centres as a full resize; at
    most 1 grey level of rounding apart). The label is resized whole and then cropped: nearest
    neighbour is cheap, and a box's rounded coordinates could move a tie by one source pixel.
    """
    w, h = image.size
    box = (x0 * w / ow, y0 * h / oh, x1 * w / ow, y1 * h / oh)
    img = image.resize((x1 - x0, y1 - y0), _BILINEAR, box=box)
    lab = label.resize((ow, oh), _NEAREST).crop((x0, y0, x1, y1))
    return img, lab


@dataclass(frozen=True)
class TrainTransform:
    """Random scale / flip / pad / crop of a (RGB image, L label) pair; returns PIL images."""

    base_size: int
    crop_size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True

    def __call__(self, image: Image.Image, label: Image.Image, seed: int) -> tuple[Image.Image, Image.Image]:
        rng = random.Random(seed)
        flip = self.hflip and rng.random() < 0.5
        long_side = rng.randint(int(self.base_size * self.scale_range[0]),
                                int(self.base_size * self.scale_range[1]))
        w, h = image.size
        if h > w:
            oh, ow = long_side, max(1, int(w * long_side / h + 0.5))
        else:
            ow, oh = long_side, max(1, int(h * long_side / w + 0.5))
        crop = self.crop_size
        cx = rng.randint(0, max(ow, crop) - crop)
        cy = rng.randint(0, max(oh, crop) - crop)
        x1, y1 = min(cx + crop, ow), min(cy + crop, oh)
        img, lab = _resize_region(image, label, ow, oh, cx, cy, x1, y1)
        if flip:  # flipping the kept region == flipping first then cropping (same distribution)
            img, lab = img.transpose(_FLIP), lab.transpose(_FLIP)
        if img.size != (crop, crop):  # pad right/bottom, as the official recipe does
            canvas = Image.new("RGB", (crop, crop), (IMAGE_PAD,) * 3)
            canvas.paste(img, (0, 0))
            lab_canvas = Image.new("L", (crop, crop), IGNORE_INDEX)
            lab_canvas.paste(lab, (0, 0))
            img, lab = canvas, lab_canvas
        return img, lab


@dataclass(frozen=True)
class EvalTransform:
    """Short side -> ``size`` (aspect kept), centre crop ``size``²; deterministic."""

    size: int

    def __call__(self, image: Image.Image, label: Image.Image, seed: int = 0) -> tuple[Image.Image, Image.Image]:
        w, h = image.size
        s = self.size
        if w > h:
            oh, ow = s, max(s, int(w * s / h + 0.5))
        else:
            ow, oh = s, max(s, int(h * s / w + 0.5))
        x0, y0 = int(round((ow - s) / 2.0)), int(round((oh - s) / 2.0))
        return _resize_region(image, label, ow, oh, x0, y0, x0 + s, y0 + s)


def to_tensors(image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,H,W) float32 normalised with mean = std = 0.5, and (H,W) uint8 label.

    Done in numpy: single-threaded and several times faster than torch's elementwise ops when
    torch's intra-op threads compete for a loaded CPU. ``(v - 127.5) / 127.5`` equals
    ``(v / 255 - 0.5) / 0.5`` with a single rounding (0 -> -1.0, 255 -> 1.0 exactly).
    """
    w, h = image.size
    x = np.empty((3, h, w), dtype=np.float32)
    for c, band in enumerate(image.split()):  # contiguous planes: faster than a strided transpose
        np.subtract(np.asarray(band), np.float32(127.5), out=x[c], casting="unsafe")
    x /= np.float32(127.5)
    y = np.array(label, dtype=np.uint8, copy=True)
    return torch.from_numpy(x), torch.from_numpy(y)


def build_train_transform(data_cfg) -> TrainTransform:
    return TrainTransform(data_cfg.base_size, data_cfg.crop_size, tuple(data_cfg.scale_range), data_cfg.hflip)


def build_eval_transform(data_cfg) -> EvalTransform:
    return EvalTransform(data_cfg.eval_size)
