"""Zero-shot benchmarks in the HSNet layouts: PASCAL-5i, COCO-20i and FSS-1000.

Two protocols score a model on the novel classes of a fold: ``official`` reproduces the lang-seg
zero-shot test exactly (its episode lists, 480x480 resizing, ("others", class) text pairs, 2-way
argmax, per-class IoU from areas summed over episodes, FB-IoU), and ``fair`` scores every
(image, class) pair of the fold once at the image's own resolution. The split and label files
the protocols need are carried inside the package (``packed/``), so nothing outside it is read
except the benchmark images and masks.

Modules: ``splits`` (packed files), ``benchmarks`` (classes and folds), ``readers`` (on-disk
layouts, masks), ``episodes`` (episode lists), ``metrics`` (I/U counts, mIoU, FB-IoU), ``protocol``
(the scoring loop), ``run`` (folds, ranks, reports, job arrays), ``synthetic`` (test data), ``pack``
(building ``packed/`` from the original split files).
"""
from __future__ import annotations

from lseg.data.errors import DataError


class ZeroShotError(DataError):
    """A user-caused problem with a zero-shot benchmark (fold, data root, masks, label file); one line."""
