"""The three benchmarks: class lists, folds, novel classes, on-disk folders and mask rules.

Why one table: every other module (readers, episodes, protocols, reports, synthetic data) asks
the same questions - which classes does fold f test, which label file names them, where do its
images live, which mask values are legal - and must get the same answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.splits import fss_categories, label_names

NUM_FOLDS = 4
#: The official image side: images and masks are resized to IMAGE_SIZE x IMAGE_SIZE.
IMAGE_SIZE = 480
#: The first FSS-1000 test class id (ids 0..519 trn, 520..759 val, 760..999 test).
FSS_TEST_OFFSET = 760


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``folder``: its folder under the data root; ``label_file``: the packed
    ``labels/`` file whose lines are the class texts; ``folds``: the valid ``--folds`` values."""

    name: str
    folder: str
    label_file: str
    num_classes: int
    folds: tuple[int, ...]
    mask_rule: str  # pascal: class c+1, 255 ignored | coco: class c+1, other values background | fss: >= 128

    @property
    def class_names(self) -> tuple[str, ...]:
        return label_names(self.label_file)

    def novel_classes(self, fold: int) -> list[int]:
        """The 0-based class ids a fold tests (the classes its model must never have trained on)."""
        check_fold(self, fold)
        if self.name == "pascal-5i":
            return list(range(5 * fold, 5 * fold + 5))
        if self.name == "coco-20i":
            return [fold + NUM_FOLDS * v for v in range(20)]
        return list(range(FSS_TEST_OFFSET, FSS_TEST_OFFSET + len(fss_categories("test"))))

    def base_classes(self, fold: int) -> list[int]:
        """Training classes of a fold (FSS: the 520 trn categories)."""
        if self.name == "fss-1000":
            return list(range(len(fss_categories("trn"))))
        novel = set(self.novel_classes(fold))
        return [c for c in range(self.num_classes) if c not in novel]

    def max_mask_value(self) -> int | None:
        """Largest legal class value in a mask (255 is always legal); None: any value (FSS)."""
        return None if self.mask_rule == "fss" else self.num_classes


BENCHMARKS = {
    "pascal-5i": Benchmark("pascal-5i", "VOC2012", "fewshot_pascal.txt", 20, (0, 1, 2, 3), "pascal"),
    "coco-20i": Benchmark("coco-20i", "COCO2014", "fewshot_coco.txt", 80, (0, 1, 2, 3), "coco"),
    "fss-1000": Benchmark("fss-1000", "FSS-1000", "fewshot_fss.txt", 1000, (0,), "fss"),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ZeroShotError(f"unknown benchmark '{name}' ({', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def check_fold(bench: Benchmark, fold: int) -> int:
    """A fold the benchmark has; FSS-1000 has no folds and accepts only 0."""
    if fold in bench.folds:
        return fold
    if bench.name == "fss-1000":
        raise ZeroShotError(f"fold {fold}: fss-1000 has no folds (its 240 test classes are one set); "
                            "use --folds 0 or leave --folds out")
    raise ZeroShotError(f"fold {fold} is outside 0-3 ({bench.name} has folds 0, 1, 2, 3)")


def check_folds(bench: Benchmark, folds: Sequence[int] | None) -> list[int]:
    """The requested folds in order without repeats (None: all of the benchmark's folds)."""
    if not folds:
        return list(bench.folds)
    return [check_fold(bench, f) for f in dict.fromkeys(folds)]


def check_label_names(bench: Benchmark, names: Sequence[str], source: str) -> tuple[str, ...]:
    """A user-given class-text list must have the benchmark's class count (a PASCAL file has 20,
    COCO's 80, FSS-1000's 1000): a wrong file would silently score other classes."""
    if len(names) != bench.num_classes:
        guess = {20: "PASCAL's fewshot_pascal.txt", 80: "COCO's fewshot_coco.txt",
                 1000: "FSS-1000's fewshot_fss.txt"}.get(len(names))
        hint = f" (it looks like {guess})" if guess else ""
        raise ZeroShotError(f"{source} has {len(names)} class names but {bench.name} needs {bench.num_classes}"
                            f"{hint}; leave --label-file out to use the official list")
    if any(not n for n in names):
        raise ZeroShotError(f"{source}: line {[bool(n) for n in names].index(False) + 1} is empty")
    return tuple(names)
