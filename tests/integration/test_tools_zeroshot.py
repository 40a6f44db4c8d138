"""tools/eval_zeroshot.py end to end on synthetic HSNet data with a tiny random model: both protocols,
every benchmark, 2 gloo ranks against 1, and the job-array path (dry run and a real local submitit run)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lseg.checkpoint_io import save_atomic
from lseg.checkpoints.payload import checkpoint_payload
from lseg.config import load_config, to_dict

from helpers import REPO, SMOKE, load_tool

zs = load_tool("eval_zeroshot")
TOOL = str(REPO / "tools" / "eval_zeroshot.py")
FAST = ["--max-episodes", "3", "--image-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def fewshot_root(tmp_path_factory) -> Path:
    from lseg.zeroshot.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("fewshot")
    write_synthetic(root, folds=(0, 1), episodes=5, train_images=0, fss_images=1, size=24)
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from lseg.models import build_model

    cfg = load_config(SMOKE, ["model.text.layers=1"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_atomic(checkpoint_payload(build_model(cfg.model).state_dict(), to_dict(cfg)), path)
    return path


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _records(out: Path) -> dict[tuple, dict]:
    recs = [json.loads(p.read_text()) for p in (out / "folds").glob("*.json")]
    return {(r["benchmark"], r["protocol"], r["fold"]): r for r in recs}


@pytest.mark.slow
@pytest.mark.parametrize("bench,folds", [("pascal-5i", [0, 1]), ("coco-20i", [1]), ("fss-1000", None)])
def test_both_protocols_end_to_end(bench, folds, fewshot_root, tiny_ckpt, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    argv = ["--benchmark", bench, "--checkpoint", str(tiny_ckpt), "--data-root", str(fewshot_root),
            "--output-dir", str(out), *FAST] + (["--folds", *map(str, folds)] if folds else [])
    assert zs.main(argv) == 0
    folds = folds or [0]
    recs = _records(out)
    assert sorted(recs) == sorted((bench, p, f) for p in ("official", "fair") for f in folds)
    for r in recs.values():
        assert 0.0 <= r["mIoU"] <= 1.0 and 0.0 < r["FB_IoU"] <= 1.0 and r["episodes"] == 3
        assert len(r["per_class_iou"]) == {"pascal-5i": 5, "coco-20i": 20, "fss-1000": 240}[bench]
    rows = _rows(out)
    assert [(r["protocol"], r["fold"]) for r in rows] == \
        [(p, str(f)) for p in ("official", "fair") for f in folds + (["mean"] if len(folds) > 1 else [])]
    if len(folds) > 1:
        mean = next(r for r in rows if r["fold"] == "mean" and r["protocol"] == "official")
        assert float(mean["mIoU"]) == pytest.approx((recs[(bench, "official", 0)]["mIoU"] +
                                                     recs[(bench, "official", 1)]["mIoU"]) / 2, rel=1e-5)
    md = (out / "results.md").read_text()
    assert f"| {bench} | official | {folds[0]} | 3 |" in md and f"| {bench} | fair |" in md
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(f"{bench}/official/mIoU")
    assert [e.step for e in events] == folds
    assert events[0].value == pytest.approx(100 * recs[(bench, "official", folds[0])]["mIoU"], rel=1e-6)
    assert "results: " in capsys.readouterr().out


def _run(argv: list[str], torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun \
        else [sys.executable]
    proc = subprocess.run(head + [TOOL] + argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_gloo_ranks_give_the_numbers_of_one(fewshot_root, tiny_ckpt, tmp_path):
    common = ["--benchmark", "pascal-5i", "--checkpoint", str(tiny_ckpt), "--data-root", str(fewshot_root),
              "--folds", "0", "--max-episodes", "5", "--image-size", "32", "--device", "cpu"]
    _run(common + ["--output-dir", str(tmp_path / "one")])
    _run(common + ["--output-dir", str(tmp_path / "two")], torchrun=True)
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert sorted(one) == sorted(two) == [("pascal-5i", "fair", 0), ("pascal-5i", "official", 0)]
    for key in one:
        assert (two[key]["world_size"], one[key]["world_size"]) == (2, 1)
        for k in ("mIoU", "FB_IoU", "per_class_iou", "episodes"):
            assert two[key][k] == one[key][k], (key, k)


def _minimal_pascal(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    (root / "VOC2012/JPEGImages").mkdir(parents=True)
    (root / "VOC2012/SegmentationClassAug").mkdir(parents=True)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")  # --dry-run never opens it
    return root, ckpt


def test_submit_dry_run_prints_one_task_per_fold(tmp_path, capsys):
    root, ckpt = _minimal_pascal(tmp_path)
    out = tmp_path / "out"
    argv = ["--benchmark", "pascal-5i", "--checkpoint", str(ckpt), "--data-root", str(root), "--output-dir", str(out),
            "--folds", "0", "2", "--protocol", "official", "--submit", "--dry-run", "--partition", "gpu",
            "dist.timeout_s=600"]
    assert zs.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 fold(s) of pascal-5i -> job array" in text and "#SBATCH --partition=gpu" in text
    tasks = [ln for ln in text.splitlines() if ln.startswith("  would run: ")]
    assert [t.rsplit(" ", 2)[-2:] for t in tasks] == [["--folds", "0"], ["--folds", "2"]]
    assert all(t.startswith(f"  would run: {sys.executable} {TOOL}") and "--submit" not in t and "--dry-run" not in t
               and "dist.timeout_s=600" in t for t in tasks)
    assert not out.exists()


def test_scheduler_flags_and_defaults():
    from lseg.cli import parse_args

    a = parse_args(zs.build_parser(), ["--benchmark", "fss-1000", "--checkpoint", "c", "--data-root", "d",
                                       "--output-dir", "o"])
    assert (a.gpus_per_node, a.timeout, a.protocol, a.folds, a.image_size) == (1, 240, ["official", "fair"], None, 480)


@pytest.mark.slow
def test_submit_local_runs_one_task_per_fold(fewshot_root, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    proc = _run(["--benchmark", "pascal-5i", "--checkpoint", str(tiny_ckpt), "--data-root", str(fewshot_root),
                 "--output-dir", str(out), "--folds", "0", "1", "--protocol", "official", *FAST,
                 "--submit", "--local", "--gpus-per-node", "0", "--cpus-per-task", "1"])
    assert "2 fold(s) of pascal-5i -> job array" in proc.stdout
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "folds").glob("*.json")) if (out / "folds").is_dir() else []) < 2:
        time.sleep(2)
    assert sorted(_records(out)) == [("pascal-5i", "official", 0), ("pascal-5i", "official", 1)]
    time.sleep(1)  # the second task's table rebuild
    assert [r["fold"] for r in _rows(out)] == ["0", "1", "mean"]


@pytest.mark.slow
def test_one_checkpoint_per_fold(fewshot_root, tiny_ckpt, tmp_path):
    """``{fold}`` in --checkpoint: each fold scores its own model (the zoo has one per PASCAL/COCO fold)."""
    import shutil

    from lseg.models import build_model

    ckpts = tmp_path / "zoo"
    ckpts.mkdir()
    shutil.copy(tiny_ckpt, ckpts / "pascal_fold0.pt")
    cfg = load_config(SMOKE, ["model.text.layers=1"])
    torch.manual_seed(1)
    save_atomic(checkpoint_payload(build_model(cfg.model).state_dict(), to_dict(cfg)), ckpts / "pascal_fold1.pt")
    common = ["--benchmark", "pascal-5i", "--data-root", str(fewshot_root), "--protocol", "official", *FAST]
    assert zs.main(common + ["--checkpoint", str(ckpts / "pascal_fold{fold}.pt"), "--folds", "0", "1",
                             "--output-dir", str(tmp_path / "zoo_out")]) == 0
    assert zs.main(common + ["--checkpoint", str(ckpts / "pascal_fold1.pt"), "--folds", "1",
                             "--output-dir", str(tmp_path / "one")]) == 0
    recs = _records(tmp_path / "zoo_out")
    assert [recs[("pascal-5i", "official", f)]["checkpoint_path"] for f in (0, 1)] == \
        [str(ckpts / "pascal_fold0.pt"), str(ckpts / "pascal_fold1.pt")]
    assert recs[("pascal-5i", "official", 1)]["mIoU"] == _records(tmp_path / "one")[("pascal-5i", "official", 1)]["mIoU"]
    rows = _rows(tmp_path / "zoo_out")
    assert [(r["checkpoint"], r["fold"]) for r in rows] == [("zoo/pascal_fold{fold}", f) for f in ("0", "1", "mean")]
