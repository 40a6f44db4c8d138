"""Sliding-window, multi-scale and flip inference (the official LSeg evaluation protocol).

Why this is its own module: the trainer's in-loop eval, the evaluation sweep and prediction must
score images the same way, and the official protocol has several easy-to-get-wrong details that
deserve one tested place:

* per scale ``s`` the image is resized (bilinear, ``align_corners=True``) so that its long side is
  ``ceil(base_size * s)``, the short side ``int(short * long_new / long + 0.5)`` (aspect kept);
* if the resized long side fits in one window the image is padded to ``crop × crop`` and run once;
  otherwise windows of ``crop × crop`` start every ``stride`` pixels (official: ``int(2/3 · crop)``),
  each window is padded to ``crop × crop`` (the last row/column of windows may stick out), and the
  overlapping logits are averaged with a per-pixel count map;
* padding uses the value of a black pixel after normalisation, ``(0 - mean) / std`` = −1 for
  mean = std = 0.5, on the right/bottom only, and padded outputs are cut away before they are summed;
* one "inference" is ``f(x) + hflip(f(hflip(x)))`` when flipping is on;
* the per-scale logits are resized back to the original size (bilinear, ``align_corners=True``) and
  the **raw logits are summed** over scales (no softmax), as the official code does.

The model is given as a plain callable ``images (B,3,h,w) -> logits (B,N,h,w)`` so that tests can
use stand-ins with known outputs; :func:`logits_fn` builds one from an LSeg model and a label list
(text features are encoded once, not per window).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from lseg import runtime

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

OFFICIAL_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: ``(0 - 0.5) / 0.5``: a black pixel after the mean = std = 0.5 normalisation the model expects.
PAD_VALUE: float = -1.0


class ProtocolError(ValueError):
    """Impossible protocol settings (scales, window, stride); a user error printed as one line."""


@dataclass(frozen=True)
class Protocol:
    """How one image is scored.

    ``base_size=None`` keeps the image's own size at scale 1 (the scale then multiplies it);
    ``crop_size=None`` runs whole images, padded up to a multiple of ``size_divisor`` (the ViT needs
    multiples of its patch size). ``stride=None`` means the official ``int(crop_size * 2 / 3)``.
    """

    name: str = "single"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    base_size: int | None = 520
    crop_size: int | None = 480
    stride: int | None = None
    pad_value: float = PAD_VALUE
    size_divisor: int = 16
    window_batch: int = 8  # windows per forward call (memory knob, does not change results)

    def __post_init__(self) -> None:
        if not self.scales or any(not (0 < s < math.inf) for s in self.scales):
            raise ProtocolError(f"protocol {self.name}: scales must be positive, got {list(self.scales)}")
        if self.base_size is not None and self.base_size <= 0:
            raise ProtocolError(f"protocol {self.name}: base size must be > 0, got {self.base_size}")
        if self.crop_size is not None and self.crop_size <= 0:
            raise ProtocolError(f"protocol {self.name}: crop size must be > 0, got {self.crop_size}")
        if self.crop_size is not None and not 0 < self.effective_stride <= self.crop_size:
            raise ProtocolError(f"protocol {self.name}: stride must be in (0, crop size {self.crop_size}], "
                                f"got {self.effective_stride}")
        if self.window_batch < 1:
            raise ProtocolError(f"protocol {self.name}: window batch must be >= 1, got {self.window_batch}")

    @property
    def effective_stride(self) -> int:
        if self.crop_size is None:
            return 0
        return self.stride if self.stride is not None else int(self.crop_size * 2 / 3)

    def describe(self) -> dict:
        """Flat, CSV/TensorBoard-friendly description."""
        return {
            "protocol": self.name,
            "scales": ",".join(f"{s:g}" for s in self.scales),
            "flip": self.flip,
            "base_size": self.base_size if self.base_size is not None else "orig",
            "crop_size": self.crop_size if self.crop_size is not None else "whole",
            "stride": self.effective_stride if self.crop_size is not None else "-",
        }


def single_protocol(base_size: int = 520, crop_size: int | None = 480, stride: int | None = None,
                    **kw) -> Protocol:
    """The official protocol restricted to scale 1.0 without flip (one sliding pass)."""
    return Protocol(name="single", scales=(1.0,), flip=False, base_size=base_size,
                    crop_size=crop_size, stride=stride, **kw)


def official_protocol(base_size: int = 520, crop_size: int = 480, stride: int | None = None,
                      scales: Sequence[float] = OFFICIAL_SCALES, flip: bool = True, **kw) -> Protocol:
    """Scales 0.5…1.75 of a 520 long side, flip, 480² windows with stride 320 (official)."""
    return Protocol(name="official", scales=tuple(scales), flip=flip, base_size=base_size,
                    crop_size=crop_size, stride=stride, **kw)


def whole_protocol(scales: Sequence[float] = (1.0,), flip: bool = False, **kw) -> Protocol:
    """Whole image at its own resolution (padded to a multiple of 16), no windows."""
    return Protocol(name="whole", scales=tuple(scales), flip=flip, base_size=None, crop_size=None, **kw)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` (official); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def pad_to(x: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    """Pad right/bottom up to at least ``height × width`` with a constant."""
    ph, pw = max(height - x.shape[-2], 0), max(width - x.shape[-1], 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=value)


def scaled_size(height: int, width: int, scale: float, base_size: int | None) -> tuple[int, int]:
    """Image size at one scale: long side ``ceil(base*scale)``, short side rounded half up."""
    if base_size is None:
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    long_side = int(math.ceil(base_size * scale))
    if height > width:
        return long_side, int(width * long_side / height + 0.5)
    return int(height * long_side / width + 0.5), long_side


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis of a (padded) length ≥ crop: 0, stride, … until covered."""
    n = int(math.ceil(max(length - crop, 0) / stride)) + 1
    return [i * stride for i in range(n)]


def flip_inference(fn: LogitsFn, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """``f(x)`` or ``f(x) + hflip(f(hflip(x)))``; both halves go through one batched call."""
    if not flip:
        return fn(x)
    out = fn(torch.cat([x, x.flip(-1)], dim=0))
    b = x.shape[0]
    return out[:b] + out[b:].flip(-1)


def _batched(fn: LogitsFn, x: torch.Tensor, flip: bool, chunk: int) -> torch.Tensor:
    return torch.cat([flip_inference(fn, x[i:i + chunk], flip) for i in range(0, x.shape[0], chunk)], 0)


def sliding_window(fn: LogitsFn, image: torch.Tensor, crop: int, stride: int, flip: bool = False,
                   pad_value: float = PAD_VALUE, window_batch: int = 8) -> torch.Tensor:
    """Logits for ``image`` (B,3,h,w) by overlapping ``crop²`` windows, averaged by a count map.

    The image is first padded to at least ``crop`` per side; every window is padded to ``crop²``
    (so the model always sees the training crop size); outputs outside the real window are dropped
    before accumulation, and each pixel is divided by the number of windows that covered it.
    """
    b, _, h, w = image.shape
    padded = pad_to(image, crop, crop, pad_value)
    ph, pw = padded.shape[-2:]
    boxes = [(y, min(y + crop, ph), x, min(x + crop, pw))
             for y in window_starts(ph, crop, stride) for x in window_starts(pw, crop, stride)]
    windows = torch.cat([pad_to(padded[..., y0:y1, x0:x1], crop, crop, pad_value)
                         for y0, y1, x0, x1 in boxes], dim=0)  # (len(boxes)*B, 3, crop, crop)
    logits = _batched(fn, windows, flip, max(1, window_batch) * b)
    total = logits.new_zeros((b, logits.shape[1], ph, pw))
    count = logits.new_zeros((1, 1, ph, pw))
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        total[..., y0:y1, x0:x1] += logits[k * b:(k + 1) * b, :, : y1 - y0, : x1 - x0]
        count[..., y0:y1, x0:x1] += 1
    if bool((count == 0).any()):  # cannot happen with stride <= crop; guard the invariant
        raise RuntimeError("sliding_window: some pixels were covered by no window")
    return (total / count)[..., :h, :w]


def whole_image(fn: LogitsFn, image: torch.Tensor, flip: bool = False, pad_value: float = PAD_VALUE,
                size_divisor: int = 16) -> torch.Tensor:
    """One pass over the image padded up to a multiple of ``size_divisor``; padding cut off after."""
    h, w = image.shape[-2:]
    d = max(1, size_divisor)
    padded = pad_to(image, -(-h // d) * d, -(-w // d) * d, pad_value)
    return flip_inference(fn, padded, flip)[..., :h, :w]


# ------------------------------------------------------------------------------------------------
# The protocol
# ------------------------------------------------------------------------------------------------


def infer(fn: LogitsFn, image: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Summed raw logits (B,N,H,W) at the original size of ``image`` (B,3,H,W), normalised input."""
    if image.dim() != 4:
        raise ValueError(f"infer: expected images (B,3,H,W), got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    scores: torch.Tensor | None = None
    for scale in protocol.scales:
        sh, sw = scaled_size(h, w, scale, protocol.base_size)
        scaled = resize(image, (sh, sw))
        if protocol.crop_size is None:
            out = whole_image(fn, scaled, protocol.flip, protocol.pad_value, protocol.size_divisor)
        else:
            # A window larger than the image degenerates to "pad to crop², run once" (official).
            out = sliding_window(fn, scaled, protocol.crop_size, protocol.effective_stride,
                                 protocol.flip, protocol.pad_value, protocol.window_batch)
        out = resize(out.float(), (h, w))
        scores = out if scores is None else scores + out
    assert scores is not None
    return scores


def logits_fn(model: torch.nn.Module, labels: Sequence[str], precision: str = "fp32") -> LogitsFn:
    """Wrap an LSeg model so that text features are encoded once for ``labels``.

    ``precision`` (fp32 | bf16 | fp16) is the autocast of the image side; the logits are fp32.

    Uses ``model.image(images, text_features)`` when the model exposes the two towers (the
    contract of ``lseg.models``); otherwise falls back to ``model(images, labels)``.
    """
    labels = list(labels)
    text = getattr(model, "text", None)
    image = getattr(model, "image", None)
    with torch.no_grad():
        feats = text.encode(labels) if text is not None and hasattr(text, "encode") else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), runtime.autocast(x.device, precision):
            if feats is not None and image is not None:
                out = image(x, feats.to(x.device))
            else:
                out = model(x, labels)
        return out.float()

    return fn


def reduce_prompts(logits: torch.Tensor, groups: Sequence[int], num_classes: int) -> torch.Tensor:
    """(B,P,H,W) prompt logits -> (B,C,H,W) class logits, max over the prompts of each class.

    Lets a label set give several prompts per class (e.g. synonyms); with one prompt per class in
    class order this is the identity.
    """
    groups = list(groups)
    if groups == list(range(num_classes)):
        return logits
    out = logits.new_full((logits.shape[0], num_classes, *logits.shape[2:]), float("-inf"))
    for p, c in enumerate(groups):
        out[:, c] = torch.maximum(out[:, c], logits[:, p])
    return out


def keep_original(image, label, seed: int = 0):
    """Evaluation transform that keeps the original resolution.

    The multi-scale protocol resizes by itself and must score at the original size, so the dataset
    only decodes (and the dataset layer normalises); signature of ``lseg.data`` transforms.
    """
    return image, label
