"""Segment images with free-form labels: the model behind ``tools/predict.py`` and the web demo.

Why a class: a checkpoint is read once and the model stays on its device while any number of
images and label lists go through it (the text tower caches each label list's embeddings), which
is what an interactive demo needs and what a batch of images on the command line needs too.
Labels are bare text queries as in the official demo ("other" is just another query).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import IO, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from lseg import runtime
from lseg.checkpoint_io import load_checkpoint
from lseg.inference import Protocol, infer, logits_fn, official_protocol, single_protocol, whole_protocol
from lseg.visualize import render

#: An 8-bit id PNG holds label indices 0..255.
MAX_ID_PNG_LABELS = 256


class PredictError(ValueError):
    """Bad labels, images or options; printed as one line."""


def parse_labels(text: str | None, file: str | Path | None = None) -> list[str]:
    """Labels from comma-separated ``text`` or a ``file`` (one per line; commas also split).

    Exactly one of the two; whitespace is collapsed, empty entries dropped, duplicates refused
    (two identical queries would split one region between them at random).
    """
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


def load_image(source: str | Path | IO[bytes]) -> Image.Image:
    """RGB image from a path or an open binary file; anything unreadable is a one-line PredictError.

    The EXIF orientation is applied, so phone photos are segmented the way they are displayed.
    """
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "uploaded image")
    try:
        with Image.open(source) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise PredictError(f"image not found: {name}") from None
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise PredictError(f"cannot read image {name}: {' '.join(str(exc).split())}") from None


def to_input(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 normalised with mean = std = 0.5, what the model expects."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return (arr / 127.5 - 1.0).unsqueeze(0)


class Predictor:
    """One model from one checkpoint, ready for ``predict(image, labels, protocol)``.

    ``device``: auto | cpu | cuda, ``precision``: fp32 | bf16 | fp16 (autocast; logits stay fp32),
    ``use_ema``: the checkpoint's EMA weights. ``base_size`` / ``crop_size`` are the sizes the
    checkpoint was trained with, the defaults of :meth:`protocol`.
    """

    def __init__(self, checkpoint_path: str | Path, device: str = "auto", precision: str = "fp32",
                 use_ema: bool = False) -> None:
        from lseg.models import load_model

        runtime.autocast_dtype(precision)  # an unknown precision fails before the file is read
        self.device = runtime.pick_device(device)
        self.precision = precision
        checkpoint = load_checkpoint(checkpoint_path)
        self.model = load_model(checkpoint_path, device=self.device, use_ema=use_ema, checkpoint=checkpoint)
        data = (checkpoint.get("config") or {}).get("data") or {}
        self.base_size = int(data.get("base_size", 520))
        self.crop_size = int(data.get("crop_size", 480))

    def protocol(self, scales: Sequence[float] | None = None, flip: bool = False, whole: bool = False,
                 base_size: int | None = None, crop_size: int | None = None,
                 stride: int | None = None) -> Protocol:
        """The inference protocol for the usual switches.

        Default: one sliding-window pass at the checkpoint's base size. ``scales``: the official
        multi-scale sum (with ``flip``, the official protocol). ``whole``: the image as is (padded
        to a multiple of 16), at each of ``scales``. Invalid combinations raise ProtocolError.
        """
        if whole:
            return whole_protocol(scales=tuple(scales or (1.0,)), flip=flip)
        base, crop = base_size or self.base_size, crop_size or self.crop_size
        if scales:
            return official_protocol(base, crop, stride, scales=tuple(scales), flip=flip)
        return dataclasses.replace(single_protocol(base, crop, stride), flip=flip)

    def encode(self, labels: Sequence[str]) -> torch.Tensor:
        """(N, D) label embeddings (cached per label list); a label the tokenizer cannot take fails here."""
        with torch.no_grad():
            return self.model.text.encode(list(labels))

    def scores(self, image: Image.Image, labels: Sequence[str], protocol: Protocol) -> torch.Tensor:
        """(N, H, W) float32 on the CPU: per-label logits at the image's size, summed over the protocol's passes."""
        fn = logits_fn(self.model, list(labels), self.precision)
        with torch.no_grad():
            return infer(fn, to_input(image).to(self.device), protocol)[0].cpu()

    def similarity(self, scores: torch.Tensor, protocol: Protocol) -> torch.Tensor:
        """(N, H, W) mean cosine similarity per label (in [-1, 1]) from :meth:`scores` of ``protocol``.

        A heat map comparable across images and protocols: the scores are ``logit_scale · cos``
        summed over scales (and flips), and this divides both out without running the model again.
        With the optional spatial block (``model.arch_option`` 1 or 2) it is the block's output in
        the same units.
        """
        passes = len(protocol.scales) * (2 if protocol.flip else 1)
        return scores / (float(self.model.image.logit_scale.detach()) * passes)

    def predict(self, image: Image.Image, labels: Sequence[str], protocol: Protocol) -> np.ndarray:
        """(H, W) int64 index into ``labels`` of the best-scoring label per pixel."""
        return self.scores(image, labels, protocol).argmax(0).numpy().astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    """What ``tools/predict.py`` asks for (labels as typed: ``labels`` text or ``labels_file``)."""

    checkpoint: str
    images: Sequence[str]
    output: str
    labels: str | None = None
    labels_file: str | None = None
    scales: Sequence[float] | None = None
    flip: bool = False
    whole: bool = False
    base_size: int | None = None
    crop_size: int | None = None
    stride: int | None = None
    alpha: float = 0.5
    write_ids: bool = True
    use_ema: bool = False
    precision: str = "fp32"
    device: str = "auto"


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}_{k}"
    used.add(stem)
    return stem


def predict_files(s: PredictSettings) -> list[Path]:
    """Write ``NAME_mask.png``, ``NAME_overlay.png`` (and ``NAME_ids.png``) per image; return the paths.

    Every input is checked (labels, images, checkpoint, protocol) before the output folder is
    created, so a failed call leaves nothing behind.
    """
    labels = parse_labels(s.labels, s.labels_file)
    if len(labels) > MAX_ID_PNG_LABELS and s.write_ids:
        raise PredictError("more than 256 labels do not fit an 8-bit id PNG; use --no-ids")
    if not 0.0 <= s.alpha <= 1.0:
        raise PredictError(f"--alpha must be in [0, 1], got {s.alpha:g}")
    images = [(Path(p), load_image(p)) for p in s.images]
    predictor = Predictor(s.checkpoint, s.device, s.precision, s.use_ema)
    protocol = predictor.protocol(s.scales, s.flip, s.whole, s.base_size, s.crop_size, s.stride)
    predictor.encode(labels)
    out_dir = Path(s.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for path, img in images:
        ids = predictor.predict(img, labels, protocol)
        mask, overlay = render(img, ids, labels, s.alpha)
        stem = _unique_stem(path, used)
        outputs = {"mask": mask, "overlay": overlay}
        if s.write_ids:
            outputs["ids"] = Image.fromarray(ids.astype(np.uint8))  # 8-bit grey
        for kind, picture in outputs.items():
            picture.save(out_dir / f"{stem}_{kind}.png")
            written.append(out_dir / f"{stem}_{kind}.png")
        present = [labels[i] for i in np.unique(ids)]
        print(f"{path}: {img.width}x{img.height} -> {out_dir / (stem + '_overlay.png')} ({', '.join(present)})")
    return written
