"""lseg.zeroshot.readers and benchmarks: folds, classes, layouts, mask encodings and their errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.zeroshot import ZeroShotError
from lseg.zeroshot.benchmarks import check_folds, check_label_names, get_benchmark
from lseg.zeroshot.episodes import Episode
from lseg.zeroshot.readers import binary_target, check_layout, paths, read_mask, resize_mask
from lseg.zeroshot.splits import fss_categories

PASCAL, COCO, FSS = (get_benchmark(n) for n in ("pascal-5i", "coco-20i", "fss-1000"))


def test_fold_classes():
    assert PASCAL.novel_classes(2) == [10, 11, 12, 13, 14] and len(PASCAL.base_classes(2)) == 15
    assert [PASCAL.class_names[c] for c in PASCAL.novel_classes(3)] == \
        ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert COCO.novel_classes(1) == list(range(1, 80, 4))
    assert [COCO.class_names[c] for c in COCO.novel_classes(0)][:6] == \
        ["person", "aeroplane", "boat", "parkingmeter", "dog", "elephant"]
    assert FSS.novel_classes(0) == list(range(760, 1000)) and FSS.class_names[760] == fss_categories("test")[0]
    assert FSS.base_classes(0) == list(range(520))


def test_fold_errors():
    assert check_folds(PASCAL, None) == [0, 1, 2, 3] and check_folds(FSS, None) == [0]
    assert check_folds(COCO, [2, 0, 2]) == [2, 0]
    with pytest.raises(ZeroShotError, match=r"^fold 4 is outside 0-3 \(pascal-5i has folds 0, 1, 2, 3\)$"):
        check_folds(PASCAL, [0, 4])
    with pytest.raises(ZeroShotError, match="fold 1: fss-1000 has no folds .* use --folds 0 or leave --folds out"):
        check_folds(FSS, [1])


def test_label_file_with_the_wrong_class_count_is_named():
    with pytest.raises(ZeroShotError, match=r"has 20 class names but coco-20i needs 80 \(it looks like PASCAL's"):
        check_label_names(COCO, PASCAL.class_names, "--label-file fewshot_pascal.txt")
    assert check_label_names(COCO, COCO.class_names, "x") == COCO.class_names


def test_layout_errors_name_the_first_missing_folder(tmp_path):
    with pytest.raises(ZeroShotError, match=rf"^{tmp_path / 'nope'}: not found; pascal-5i expects the HSNet layout"):
        check_layout(PASCAL, tmp_path / "nope")
    (tmp_path / "VOC2012/JPEGImages").mkdir(parents=True)
    with pytest.raises(ZeroShotError, match=r"VOC2012/SegmentationClassAug: not found; .*JPEGImages/<id>.jpg"):
        check_layout(PASCAL, tmp_path)
    (tmp_path / "COCO2014/val2014").mkdir(parents=True)
    with pytest.raises(ZeroShotError, match=r"COCO2014/annotations/val2014: not found"):
        check_layout(COCO, tmp_path)
    cats = fss_categories("test")
    for c in cats[:5]:
        (tmp_path / "FSS-1000" / c).mkdir(parents=True)
    with pytest.raises(ZeroShotError, match=rf"FSS-1000/{cats[5]}: not found"):
        check_layout(FSS, tmp_path)


def test_episode_paths(tmp_path):
    assert paths(PASCAL, tmp_path, Episode(0, "2007_000033")) == (
        tmp_path / "VOC2012/JPEGImages/2007_000033.jpg", tmp_path / "VOC2012/SegmentationClassAug/2007_000033.png")
    assert paths(COCO, tmp_path, Episode(4, "val2014/COCO_val2014_000000000042.jpg"))[1] == \
        tmp_path / "COCO2014/annotations/val2014/COCO_val2014_000000000042.png"
    assert paths(FSS, tmp_path, Episode(760, "ab/10.jpg"))[1] == tmp_path / "FSS-1000/ab/10.png"


def _png(path, arr, mode=None):
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode=mode).save(path)
    return path


def test_mask_values_are_checked_per_encoding(tmp_path):
    ok = _png(tmp_path / "ok.png", [[0, 20], [255, 3]])
    assert read_mask(PASCAL, ok).tolist() == [[0, 20], [255, 3]]
    with pytest.raises(ZeroShotError, match=r"bad.png: mask value 21 is outside pascal-5i's classes \(0..20 and 255\)"):
        read_mask(PASCAL, _png(tmp_path / "bad.png", [[0, 21]]))
    assert read_mask(COCO, _png(tmp_path / "c.png", [[80, 255]])).tolist() == [[80, 255]]
    with pytest.raises(ZeroShotError, match=r"mask value 200 is outside coco-20i's classes \(0..80 and 255\)"):
        read_mask(COCO, _png(tmp_path / "c2.png", [[200, 1]]))
    with pytest.raises(ZeroShotError, match=r"rgb.png: mode RGB mask; pascal-5i needs single-channel class-index PNGs"):
        read_mask(PASCAL, _png(tmp_path / "rgb.png", np.zeros((2, 2, 3))))
    # FSS: any gray level (colour masks are converted to 8-bit gray, as the official reader does)
    assert read_mask(FSS, _png(tmp_path / "f.png", np.full((2, 2, 3), 200))).tolist() == [[200, 200], [200, 200]]


def test_binary_targets():
    m = np.array([[0, 3, 255], [4, 3, 21 - 1]], dtype=np.uint8)
    assert binary_target(PASCAL, m, 2).tolist() == [[0, 1, 255], [0, 1, 0]]
    assert binary_target(COCO, m, 2).tolist() == [[0, 1, 0], [0, 1, 0]]  # 255 is background for COCO
    assert binary_target(FSS, np.array([[127, 128, 255]], dtype=np.uint8), 760).tolist() == [[0, 1, 1]]


def test_mask_resize_is_pytorch_nearest_not_pil():
    h, w = 375, 500
    mask = (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
    out = resize_mask(mask, 480)
    rows = np.minimum(np.floor(np.arange(480, dtype=np.float32) * np.float32(h / 480)), h - 1).astype(int)
    cols = np.minimum(np.floor(np.arange(480, dtype=np.float32) * np.float32(w / 480)), w - 1).astype(int)
    assert np.array_equal(out, mask[rows][:, cols])
    pil = np.asarray(Image.fromarray(mask).resize((480, 480), Image.Resampling.NEAREST))
    assert not np.array_equal(out, pil)  # PIL samples pixel centres: a different rule
    assert torch.equal(torch.from_numpy(out), torch.from_numpy(mask[rows][:, cols]))
