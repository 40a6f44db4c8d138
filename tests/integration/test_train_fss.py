"""FSS-1000 training end to end (train.label_set=per_sample): a few steps on the trn categories with
in-loop evaluation on baseval, exact resume, then the chosen checkpoint scored by tools/eval_zeroshot.py."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lseg import faults

from helpers import REPO, assert_same_weights, final_model, metrics, run_train, train_cmd

FSS = ["data.label_space=fss-1000", "data.train_datasets=[fss-1000]", "data.val_datasets=[fss-1000]",
       "data.train_split=train", "data.val_split=baseval", "train.label_set=per_sample", "eval.max_samples=6"]


@pytest.fixture(scope="module")
def fss_root(tmp_path_factory) -> Path:
    """2 images per trn / val category (1,040 trn jpgs: 104 baseval), 1 per test category, 16 px."""
    from lseg.zeroshot.synthetic import write_fss

    root = tmp_path_factory.mktemp("fss") / "Datasets_HSN"
    write_fss(root, images_per_class=1, train_images=2, size=16, seed=0)
    return root


@pytest.mark.slow
def test_fss_trains_per_sample_selects_on_baseval_and_is_scored_zero_shot(tmp_path, fss_root):
    run = tmp_path / "run"
    run_train(run, fss_root.parent, *FSS, "train.max_steps=2", "train.ckpt_every=1", "eval.every=1")
    evals = [r for r in metrics(run) if "eval/mIoU" in r]
    assert [r["step"] for r in evals] == [1, 2]
    for r in evals:  # 6 baseval images (every 10th trn image: 6 distinct classes), 2-way each
        assert r["eval/images"] == 6 and r["eval/classes"] == 6 and 0 <= r["eval/FB-IoU"] <= 1
    index = json.loads((run / "checkpoints/index.json").read_text())
    best = max(evals, key=lambda r: r["eval/mIoU"])  # first on ties
    assert index["best"]["metric"] == "eval/mIoU" and index["best"]["value"] == best["eval/mIoU"]
    assert index["best"]["step"] == best["step"]

    # exact resume: a crash before step 2, then resume == 2 steps straight (class ids follow the sampler)
    split = tmp_path / "split"
    steps = [*FSS, "train.max_steps=2", "train.ckpt_every=1", "eval.every=1"]
    crash = subprocess.run(train_cmd(split, fss_root.parent, *steps), capture_output=True, text=True, timeout=600,
                           env={**os.environ, faults.ENV: "raise:rank=0:step=2"})
    assert crash.returncode != 0 and "injected failure" in crash.stderr
    run_train(split, fss_root.parent, *steps)
    assert "resumed from" in (split / "log.txt").read_text()
    assert_same_weights(final_model(split), final_model(run))

    out = tmp_path / "zs"
    proc = subprocess.run([sys.executable, str(REPO / "tools/eval_zeroshot.py"), "--benchmark", "fss-1000",
                           "--checkpoint", str(run / "checkpoints/best.pt"), "--data-root", str(fss_root),
                           "--output-dir", str(out), "--max-episodes", "4", "--image-size", "32",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] == "0"]
    assert {r["protocol"] for r in rows} == {"official", "fair"}
    assert all(0.0 <= float(r["mIoU"]) <= 100.0 for r in rows)
