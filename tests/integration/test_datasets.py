"""Every registered dataset end to end: train a few steps on its synthetic layout, evaluate in the loop
and with the sweep (own names, synonyms, universal names where a mapping exists)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lseg.data.synthetic import LAYOUTS, make_synthetic
from lseg.evaluation.sweep import SweepSettings, run_sweep

from helpers import REPO, metrics, run_train


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, mseg_root) -> Path:
    out = tmp_path_factory.mktemp("layouts")
    for layout in LAYOUTS:
        make_synthetic(out, layout, 4, 2, size=(48, 64), seed=2, num_classes=8, mseg_root=mseg_root)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset, space, label_sets, num_classes", [
    ("ade20k-150", "ade20k-150", ["dataset", "universal"], 150),
    ("foodseg103", "foodseg103", ["dataset", str(REPO / "configs/label_sets/foodseg103_synonyms.yaml")], 104),
    ("folder", "folder", ["dataset"], 12),
    ("ade20k-150", "universal", ["universal", "dataset"], 194),
])
def test_train_and_evaluate_each_dataset(tmp_path, layouts, dataset, space, label_sets, num_classes):
    run = tmp_path / "run"
    run_train(run, layouts, "train.max_steps=2", "train.ckpt_every=2", "eval.every=2", f"data.label_space={space}",
              f"data.train_datasets=[{dataset}]", f"data.val_datasets=[{dataset}]", "eval.max_samples=2")
    assert len((run / "class_names.txt").read_text().splitlines()) == num_classes
    (last,) = [r for r in metrics(run) if "eval/mIoU" in r]
    assert last["step"] == 2 and 0.0 <= last[f"eval/{dataset}/mIoU"] <= 1.0
    out = tmp_path / "sweep"
    assert run_sweep(SweepSettings(output_dir=str(out), run_dir=str(run), datasets=[dataset], label_sets=label_sets,
                                   protocols=["whole"], max_samples=2, device="cpu", num_workers=0)) == 0
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(cells) == len(label_sets)
    for cell in cells:
        assert cell["dataset"] == dataset and cell["num_images"] == 2 and 0.0 <= cell["mIoU"] <= 1.0
    by_set = {c["label_set"]: c for c in cells}
    if "dataset" in by_set and dataset != "folder":
        assert len(by_set["dataset"]["per_class_iou"]) == {"ade20k-150": 150, "foodseg103": 104}[dataset]
    if "foodseg103_synonyms" in by_set:
        assert by_set["foodseg103_synonyms"]["mIoU_sub"] is None or 0 <= by_set["foodseg103_synonyms"]["mIoU_sub"] <= 1
