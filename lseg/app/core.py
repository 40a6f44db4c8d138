"""What one demo request does, without the web page: checks, inference, pictures, shares.

Why apart from the page: every limit and message here is plain Python, so the API, the browser
and the tests see exactly the same behaviour, and the page module only wires components. The
model and the pictures come from :mod:`lseg.predict` and :mod:`lseg.visualize` (the renderer
``tools/predict.py`` and the TensorBoard panels use), so the demo's mask for an image equals the
command line's.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lseg.data.errors import DataError
from lseg.data.names import CLASS_NAMES_FILE, read_class_names, readable, universal_class_names
from lseg.data.paths import resolve_mseg_root
from lseg.data.synthetic import FOODSEG103_CLASSES
from lseg.data.taxonomy import read_names
from lseg.inference import OFFICIAL_SCALES
from lseg.predict import PredictError, Predictor, load_image, parse_labels
from lseg.visualize import label_shares, render

#: Distinct label lists whose text embeddings may stay cached before the cache is emptied: the
#: model keeps every list it has seen, and a public demo sees an unbounded number of them.
TEXT_CACHE_LISTS = 256
#: Heat map colours from low to high similarity (dark blue -> teal -> yellow).
HEAT_STOPS = np.array([[20, 20, 80], [40, 90, 170], [40, 170, 150], [170, 210, 70], [255, 235, 40]], float)


class InputError(ValueError):
    """A request the demo refuses (bad image, labels, limits); the message is shown in the page."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger images are downscaled, the rest is refused."""

    max_pixels: int = 1_000_000
    max_labels: int = 200
    max_upload_mb: float = 20.0


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """Everything a demo server needs to start (also what a cluster job carries)."""

    checkpoint: str
    device: str = "auto"
    precision: str = "fp32"
    use_ema: bool = False
    host: str = "127.0.0.1"
    port: int | None = None  # None: the first free port from 7860
    limits: Limits = Limits()


@dataclasses.dataclass
class Result:
    """One answered request: pictures for the page and numbers for the API."""

    ids: np.ndarray  # (H, W) index into labels
    mask: Image.Image
    overlay: Image.Image
    heat: Image.Image
    shares: dict[str, float]  # label -> % of the pixels, in the order typed
    seconds: float  # inference alone (model + protocol), not decoding or drawing
    notes: list[str]  # what the user should notice: a downscaled image, a replaced heat map label
    heat_label: str
    heat_range: tuple[float, float]  # min, max cosine similarity in the heat map


def heat_image(image: Image.Image, similarity: torch.Tensor, alpha: float = 0.65) -> Image.Image:
    """A (H, W) similarity map stretched to its own range, coloured and laid over ``image``."""
    sim = similarity.float().numpy()
    lo, hi = float(sim.min()), float(sim.max())
    t = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)
    pos = t * (len(HEAT_STOPS) - 1)
    k = np.minimum(pos.astype(int), len(HEAT_STOPS) - 2)
    frac = (pos - k)[..., None]
    rgb = HEAT_STOPS[k] * (1 - frac) + HEAT_STOPS[k + 1] * frac
    return Image.blend(image.convert("RGB"), Image.fromarray(rgb.round().astype(np.uint8)), alpha)


def label_presets(checkpoint: str | Path) -> dict[str, list[str]]:
    """Label lists the page offers, named with their size; only those whose files are found here.

    The run's own list is ``RUN/class_names.txt`` next to ``RUN/checkpoints/<file>.pt`` (what the
    trainer fed the text encoder); the MSeg universal and ADE20K-150 lists come from the taxonomy
    files (``MSEG_ROOT`` or the ``mseg/`` submodule).
    """
    presets: dict[str, list[str]] = {}
    run_names = Path(checkpoint).resolve().parent.parent / CLASS_NAMES_FILE
    if run_names.is_file():
        presets["this run's classes"] = read_class_names(run_names)
    try:
        root = resolve_mseg_root()
        presets["MSeg universal"] = universal_class_names(root)
        presets["ADE20K-150"] = [readable(n) for n in read_names(root, "ade20k-150")]
    except DataError:
        pass
    presets["FoodSeg103"] = list(FOODSEG103_CLASSES)  # the release's class list, carried in the package
    return {f"{name} ({len(labels)})": labels for name, labels in presets.items()}


class Segmenter:
    """A loaded model plus the demo's limits; :meth:`run` answers one request.

    Requests run one at a time (a lock around the model): the page's queue already serialises
    them, the lock keeps any other caller from interleaving with the text-embedding cache.
    """

    def __init__(self, predictor: Predictor, limits: Limits = Limits()) -> None:
        self.predictor = predictor
        self.limits = limits
        self._lock = threading.Lock()
        self._label_lists: set[tuple[str, ...]] = set()

    def labels(self, text: str | None) -> list[str]:
        """The typed labels, checked against the cap and the tokenizer."""
        if not (text or "").replace(",", " ").strip():
            raise InputError('no labels: type them separated by commas, e.g. "sky, road, other"')
        try:
            labels = parse_labels(text)
        except PredictError as exc:  # duplicates
            raise InputError(str(exc)) from None
        if len(labels) > self.limits.max_labels:
            raise InputError(f"{len(labels)} labels is more than this demo takes ({self.limits.max_labels})")
        for i, label in enumerate(labels):
            try:
                self.predictor.model.text.tokenize([label])
            except ValueError as exc:  # LabelError: longer than the text encoder's context
                reason = str(exc).split(": ", 1)[-1]
                raise InputError(f"label {i + 1} is too long: {reason}") from None
        return labels

    def image(self, path: str | Path | None) -> tuple[Image.Image, list[str]]:
        """The uploaded file as RGB, downscaled to the pixel budget (with a note saying so)."""
        if not path:
            raise InputError("no image: upload one or pick an example")
        try:
            img = load_image(path)
        except PredictError as exc:  # not an image, truncated, or too many pixels to decode safely
            raise InputError(str(exc).replace(str(path), Path(path).name)) from None
        w, h = img.size
        if w * h <= self.limits.max_pixels:
            return img, []
        scale = (self.limits.max_pixels / (w * h)) ** 0.5
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        note = (f"downscaled from {w}×{h} to {size[0]}×{size[1]} "
                f"(pixel budget {self.limits.max_pixels:,}; server flag --max-pixels)")
        return img.resize(size, Image.Resampling.LANCZOS), [note]

    def run(self, path: str | Path | None, labels_text: str | None, multiscale: bool = False,
            heat_label: str | None = None) -> Result:
        """Segment one uploaded image with the typed labels (single pass or multi-scale + flip)."""
        labels = self.labels(labels_text)
        image, notes = self.image(path)
        if heat_label and heat_label not in labels:
            notes.append(f"heat map label {heat_label!r} is not among the labels; showing {labels[0]!r}")
        k = labels.index(heat_label) if heat_label in labels else 0
        p = self.predictor
        protocol = p.protocol(scales=OFFICIAL_SCALES, flip=True) if multiscale else p.protocol()
        with self._lock:
            self._bound_text_cache(labels)
            start = time.perf_counter()
            try:
                scores = p.scores(image, labels, protocol)
            except torch.OutOfMemoryError:
                raise InputError("out of memory: try a smaller image, fewer labels or the single pass") from None
            seconds = time.perf_counter() - start
        ids = scores.argmax(0).numpy().astype(np.int64)  # what Predictor.predict returns
        similarity = p.similarity(scores[k:k + 1], protocol)[0]
        mask, overlay = render(image, ids, labels)
        shares = {label: round(100 * s, 2) for label, s in zip(labels, label_shares(ids, len(labels)))}
        return Result(ids, mask, overlay, heat_image(image, similarity), shares, seconds, notes, labels[k],
                      (float(similarity.min()), float(similarity.max())))

    def _bound_text_cache(self, labels: Sequence[str]) -> None:
        key = tuple(labels)
        if key not in self._label_lists and len(self._label_lists) >= TEXT_CACHE_LISTS:
            self.predictor.model.text.clear_cache()
            self._label_lists.clear()
        self._label_lists.add(key)
