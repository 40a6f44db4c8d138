"""tools/eval_zeroshot.py on bad input: one line on stderr, exit 2, no traceback (docs/reliability.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lseg.checkpoint_io import save_atomic
from lseg.checkpoints.payload import checkpoint_payload
from lseg.config import load_config, to_dict
from lseg.zeroshot.splits import label_names

from helpers import SMOKE, load_tool, one_error_line

zs = load_tool("eval_zeroshot")


@pytest.fixture(scope="module")
def pascal(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic PASCAL-5i root (fold 0, the first episode's image) and a tiny random checkpoint."""
    from lseg.models import build_model
    from lseg.zeroshot.synthetic import write_synthetic

    tmp = tmp_path_factory.mktemp("zs_fail")
    write_synthetic(tmp / "data", ("pascal-5i",), folds=(0,), episodes=1, train_images=0, size=16)
    cfg = load_config(SMOKE, ["model.text.layers=1"])
    save_atomic(checkpoint_payload(build_model(cfg.model).state_dict(), to_dict(cfg)), tmp / "tiny.pt")
    return tmp / "data", tmp / "tiny.pt"


def _argv(root, ckpt, out, *extra, bench="pascal-5i"):
    return ["--benchmark", bench, "--checkpoint", str(ckpt), "--data-root", str(root), "--output-dir", str(out),
            "--device", "cpu", "--image-size", "32", "--max-episodes", "1", *extra]


def test_fold_outside_0_3_and_fss_folds(pascal, tmp_path, capsys):
    root, ckpt = pascal
    assert zs.main(_argv(root, ckpt, tmp_path / "o", "--folds", "0", "4")) == 2
    assert one_error_line(capsys) == "error: fold 4 is outside 0-3 (pascal-5i has folds 0, 1, 2, 3)"
    assert zs.main(_argv(root, ckpt, tmp_path / "o", "--folds", "1", bench="fss-1000")) == 2
    assert one_error_line(capsys) == ("error: fold 1: fss-1000 has no folds (its 240 test classes are one set); "
                                      "use --folds 0 or leave --folds out")
    assert not (tmp_path / "o").exists()


def test_missing_benchmark_folder_names_the_first_missing_path(pascal, tmp_path, capsys):
    _, ckpt = pascal
    (tmp_path / "root/VOC2012/JPEGImages").mkdir(parents=True)
    assert zs.main(_argv(tmp_path / "root", ckpt, tmp_path / "o")) == 2
    assert one_error_line(capsys) == (
        f"error: {tmp_path}/root/VOC2012/SegmentationClassAug: not found; pascal-5i expects the HSNet layout "
        "ROOT/VOC2012/JPEGImages/<id>.jpg and ROOT/VOC2012/SegmentationClassAug/<id>.png")
    assert zs.main(_argv(tmp_path / "root", ckpt, tmp_path / "o", bench="coco-20i")) == 2
    assert one_error_line(capsys).startswith(f"error: {tmp_path}/root/COCO2014: not found; coco-20i expects")


def test_mask_value_outside_the_classes(pascal, tmp_path, capsys):
    import shutil

    root, ckpt = pascal
    bad = tmp_path / "data"
    shutil.copytree(root, bad)
    mask = bad / "VOC2012/SegmentationClassAug/2007_000033.png"
    arr = np.array(Image.open(mask))
    arr[0, 0] = 21
    Image.fromarray(arr).save(mask)
    assert zs.main(_argv(bad, ckpt, tmp_path / "o", "--folds", "0")) == 2
    assert one_error_line(capsys) == f"error: {mask}: mask value 21 is outside pascal-5i's classes (0..20 and 255)"


def test_coco_with_the_pascal_label_file(pascal, tmp_path, capsys):
    root, ckpt = pascal
    labels = tmp_path / "fewshot_pascal.txt"
    labels.write_text("\n".join(label_names("fewshot_pascal.txt")))
    assert zs.main(_argv(root, ckpt, tmp_path / "o", "--label-file", str(labels), bench="coco-20i")) == 2
    assert one_error_line(capsys) == (
        f"error: --label-file {labels} has 20 class names but coco-20i needs 80 (it looks like PASCAL's "
        "fewshot_pascal.txt); leave --label-file out to use the official list")


def test_missing_checkpoint_and_bad_flags(pascal, tmp_path, capsys):
    root, _ = pascal
    assert zs.main(_argv(root, tmp_path / "nope.pt", tmp_path / "o")) == 2
    assert one_error_line(capsys) == f"error: checkpoint not found: {tmp_path}/nope.pt"
    assert zs.main(_argv(root, tmp_path / "f{fold}.pt", tmp_path / "o", "--folds", "0", "1")) == 2
    assert one_error_line(capsys) == f"error: checkpoint not found: {tmp_path}/f0.pt"  # the first fold's file
    assert zs.main(_argv(root, tmp_path / "nope.pt", tmp_path / "o", "--image-size", "40")) == 2
    assert one_error_line(capsys) == "error: --image-size 40 must be a multiple of 32 (official: 480)"
    for flags in (["--protocol", "best"], ["--folds", "-1"], ["--image-size", "0"], ["--benchmark", "voc"]):
        with pytest.raises(SystemExit) as exc:
            zs.main(_argv(root, tmp_path / "c.pt", tmp_path / "o", *flags))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            "tools/eval_zeroshot.py: error: argument --"), err
