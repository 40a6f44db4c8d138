"""A fold model end to end: train on PASCAL-5i fold 0's base classes (novel classes held out), select on the
base-class validation split, then score the chosen checkpoint with tools/eval_zeroshot.py."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lseg.zeroshot.benchmarks import get_benchmark

from helpers import REPO, metrics, run_train


@pytest.fixture(scope="module")
def hsnet_root(tmp_path_factory) -> Path:
    """Every image of the PASCAL training lists (the fold's sampler may draw any of them), tiny."""
    from lseg.zeroshot.synthetic import write_pascal

    root = tmp_path_factory.mktemp("hsnet") / "Datasets_HSN"
    write_pascal(root, [0], episodes=4, train_images=10**6, size=16, seed=0)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("label_as", [None, "others"])
def test_pascal_fold0_trains_on_base_classes_and_is_scored_zero_shot(tmp_path, hsnet_root, label_as):
    novel = [get_benchmark("pascal-5i").class_names[c] for c in range(5)]
    run = tmp_path / "run"
    extra = [f"data.holdout_label_as={label_as}"] if label_as else []
    run_train(run, hsnet_root.parent, "data.label_space=pascal-5i", "data.train_datasets=[pascal-5i]",
              "data.val_datasets=[pascal-5i]", "data.train_split=train_fold0", "data.val_split=baseval_fold0",
              f"data.holdout_classes=[{', '.join(novel)}]", "train.max_steps=2", "train.ckpt_every=1",
              "eval.every=1", *extra)
    evals = [r for r in metrics(run) if "eval/mIoU" in r]
    assert [r["step"] for r in evals] == [1, 2]
    for r in evals:
        assert {"eval/mIoU_seen", "eval/mIoU_unseen", "eval/hIoU"} <= r.keys()
    index = json.loads((run / "checkpoints/index.json").read_text())
    best = max(evals, key=lambda r: r["eval/mIoU_seen"])  # chosen on the base classes, first on ties
    assert index["best"]["metric"] == "eval/mIoU_seen" and index["best"]["value"] == best["eval/mIoU_seen"]
    lines = (run / "log.txt").read_text()
    assert "held out 5 class(es)" in lines
    out = tmp_path / "zs"
    proc = subprocess.run([sys.executable, str(REPO / "tools/eval_zeroshot.py"), "--benchmark", "pascal-5i",
                           "--checkpoint", str(run / "checkpoints/best.pt"), "--data-root", str(hsnet_root),
                           "--output-dir", str(out), "--folds", "0", "--max-episodes", "4", "--image-size", "32",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] == "0"]
    assert {r["protocol"] for r in rows} == {"official", "fair"}
    assert all(0.0 <= float(r["mIoU"]) <= 100.0 for r in rows)
