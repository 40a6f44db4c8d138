"""Data layer: sampler resume/sharding, transforms, bad samples, loaders on synthetic MSeg data."""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lseg.config import load_config
from lseg.data import (
    DataError,
    EvalTransform,
    ResumableSampler,
    TrainTransform,
    benchmark_loader,
    build_train_loader,
    build_train_set,
    build_val_loader,
    check_bad_fraction,
    epoch_order,
    epoch_position,
    load_taxonomy,
    samples_per_epoch_per_rank,
    to_tensors,
)
from lseg.data.datasets import SegmentationSet, open_dataset
from lseg.data.paths import resolve_lists_root
from lseg.data.sampler import mixture_counts
from lseg.data.synthetic import class_colour, make_synthetic_mseg

from helpers import REPO  # noqa: E402
ADE, COCO = "ade20k-150-relabeled", "coco-panoptic-133-relabeled"
NUM_TRAIN, NUM_VAL = 24, 6


@pytest.fixture(scope="module")
def syn(tmp_path_factory, mseg_root) -> Path:
    out = tmp_path_factory.mktemp("syn")
    make_synthetic_mseg(out, NUM_TRAIN, NUM_VAL, size=(60, 80), seed=3, num_classes=12, mseg_root=mseg_root)
    return out


def smoke_cfg(root: Path, mseg_root: str, *overrides: str):
    return load_config(REPO / "configs/smoke.yaml",
                       [f"data.root={root}", f"data.mseg_root={mseg_root}", "train.batch_size=4",
                        "data.num_workers=0", *overrides])


def batches(loader) -> list[dict]:
    return [b for b in loader]


# ------------------------------------------------------------------------------------ sampler


def test_samples_per_rank_and_disjoint_shards():
    sizes, ws, bs = [37, 23], 3, 4
    per_rank = (60 // 3) // 4 * 4
    assert per_rank == 20
    seen_positions, seen_indices = [], []
    for rank in range(ws):
        s = ResumableSampler(sizes, None, seed=5, epoch=2, rank=rank, world_size=ws, batch_size=bs)
        assert s.samples_per_rank == 20 and len(s) == 20
        seen_positions += s.positions().tolist()
        seen_indices += [i for i, _ in s]
    assert len(set(seen_positions)) == 60 == len(seen_positions)
    assert len(set(seen_indices)) == 60  # a permutation of the concatenation: no duplicates
    assert sorted(seen_indices) == list(range(60))


def test_sampler_exact_resume_mid_epoch():
    for ratios in (None, [1.0, 3.0]):
        full = list(ResumableSampler([37, 23], ratios, seed=1, epoch=4, rank=1, world_size=2, batch_size=4))
        assert len(full) == 28
        for start in (0, 4, 12, 27, 28):
            resumed = list(ResumableSampler([37, 23], ratios, seed=1, epoch=4, rank=1, world_size=2,
                                            batch_size=4, start=start))
            assert resumed == full[start:]


def test_sampler_deterministic_per_seed_and_epoch():
    a = list(ResumableSampler([50], None, seed=0, epoch=0, batch_size=5))
    assert a == list(ResumableSampler([50], None, seed=0, epoch=0, batch_size=5))
    assert a != list(ResumableSampler([50], None, seed=0, epoch=1, batch_size=5))
    assert a != list(ResumableSampler([50], None, seed=1, epoch=0, batch_size=5))
    seeds = [s for _, s in a]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**62 for s in seeds)


def test_mixture_ratios():
    assert mixture_counts([100, 10], None) == [100, 10]
    assert mixture_counts([100, 10], [1, 1]) == [55, 55]
    assert mixture_counts([3, 4], [1, 2]) == [2, 5]
    idx, seeds = epoch_order([100, 10], [1, 1], seed=0, epoch=0)
    assert len(idx) == len(seeds) == 110
    small = idx[idx >= 100]
    assert len(small) == 55
    counts = torch.bincount(small - 100, minlength=10)
    assert counts.min() == 5 and counts.max() == 6  # whole permutations first: balanced repeats
    big = idx[idx < 100]
    assert len(big) == 55 and len(set(big.tolist())) == 55  # subsampled without repeats
    with pytest.raises(DataError):
        mixture_counts([3, 4], [1])


def test_too_small_training_set_is_an_error():
    with pytest.raises(DataError, match="smaller than world_size x batch_size = 4 x 8"):
        ResumableSampler([20], None, 0, 0, rank=0, world_size=4, batch_size=8)


# ------------------------------------------------------------------------------------ transforms


def test_normalisation_values():
    img = Image.fromarray(np.array([[[0, 128, 255]]], dtype=np.uint8).repeat(2, 0))
    x, y = to_tensors(img, Image.new("L", (1, 2), 7))
    assert x.shape == (3, 2, 1) and x.dtype == torch.float32
    assert x[0, 0, 0].item() == -1.0 and x[2, 0, 0].item() == 1.0
    assert x[1, 0, 0].item() == np.float32(0.5 / 127.5)
    assert y.dtype == torch.uint8 and y.tolist() == [[7], [7]]


def test_train_transform_pads_with_ignore_and_zero():
    # 80x60 image, long side fixed at 64 -> 64x48, padded right/bottom to the 96 crop
    image = Image.new("RGB", (80, 60), (200, 100, 0))
    label = Image.new("L", (80, 60), 3)
    t = TrainTransform(base_size=64, crop_size=96, scale_range=(1.0, 1.0), hflip=False)
    img, lab = t(image, label, seed=123)
    x, y = to_tensors(img, lab)
    assert x.shape == (3, 96, 96) and y.shape == (96, 96)
    assert (y[:48, :64] == 3).all()
    assert (y[48:, :] == 255).all() and (y[:, 64:] == 255).all()
    assert (x[:, 48:, :] == -1.0).all() and (x[:, :, 64:] == -1.0).all()
    assert x[0, 0, 0].item() == np.float32((200 - 127.5) / 127.5)
    assert x[2, 10, 10].item() == -1.0  # blue channel 0


def _reference_train(image, label, t: TrainTransform, seed: int):
    """Recipe written the slow way: flip, full resize, pad, crop (same random draws)."""
    rng = random.Random(seed)
    flip = t.hflip and rng.random() < 0.5
    long_side = rng.randint(int(t.base_size * t.scale_range[0]), int(t.base_size * t.scale_range[1]))
    w, h = image.size
    ow, oh = (long_side, int(h * long_side / w + 0.5)) if w >= h else (int(w * long_side / h + 0.5), long_side)
    img = image.resize((ow, oh), Image.Resampling.BILINEAR)
    lab = label.resize((ow, oh), Image.Resampling.NEAREST)
    pw, ph = max(ow, t.crop_size), max(oh, t.crop_size)
    cx, cy = rng.randint(0, pw - t.crop_size), rng.randint(0, ph - t.crop_size)
    canvas, lab_canvas = Image.new("RGB", (pw, ph)), Image.new("L", (pw, ph), 255)
    canvas.paste(img, (0, 0))
    lab_canvas.paste(lab, (0, 0))
    box = (cx, cy, cx + t.crop_size, cy + t.crop_size)
    img, lab = canvas.crop(box), lab_canvas.crop(box)
    if flip:  # flipping the kept window's content keeps the padding at right/bottom
        real_w, real_h = min(ow - cx, t.crop_size), min(oh - cy, t.crop_size)
        win = (0, 0, real_w, real_h)
        img.paste(img.crop(win).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0, 0))
        lab.paste(lab.crop(win).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0, 0))
    return img, lab, flip


def test_train_transform_matches_full_resize_then_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    label = Image.fromarray(rng.integers(0, 20, (90, 120), dtype=np.uint8))
    t = TrainTransform(base_size=104, crop_size=96, scale_range=(0.5, 2.0), hflip=True)
    flips = set()
    for seed in range(12):
        img, lab = t(image, label, seed)
        ref_img, ref_lab, flip = _reference_train(image, label, t, seed)
        flips.add(flip)
        assert img.size == lab.size == (96, 96)
        assert np.array_equal(np.asarray(lab), np.asarray(ref_lab)), seed
        diff = np.abs(np.asarray(img, dtype=np.int16) - np.asarray(ref_img, dtype=np.int16))
        assert diff.max() <= 1, seed  # same filter and pixel centres; rounding only
    assert flips == {True, False}


def test_eval_transform_short_side_and_centre_crop():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    label = Image.fromarray(rng.integers(0, 20, (120, 160), dtype=np.uint8))
    img, lab = EvalTransform(96)(image, label)
    assert img.size == lab.size == (96, 96)
    ref = label.resize((128, 96), Image.Resampling.NEAREST).crop((16, 0, 112, 96))
    assert np.array_equal(np.asarray(lab), np.asarray(ref))
    ref_img = image.resize((128, 96), Image.Resampling.BILINEAR).crop((16, 0, 112, 96))
    assert np.abs(np.asarray(img, dtype=np.int16) - np.asarray(ref_img, dtype=np.int16)).max() <= 1


# ------------------------------------------------------------------------------------ synthetic data


def test_synthetic_layout_and_list_format(syn, mseg_root):
    ade_list = (syn / "dataset_lists" / ADE / "list" / "train.txt").read_text().splitlines()
    coco_list = (syn / "dataset_lists" / COCO / "list" / "val.txt").read_text().splitlines()
    assert len(ade_list) == NUM_TRAIN and len(coco_list) == NUM_VAL
    assert ade_list[0] == ("images/training/ADE_train_00000001.jpg "
                           "annotations_semseg150_relabeled/training/ADE_train_00000001.png")
    assert coco_list[0] == "images/val2017/000000000001.jpg semantic_relabeled133/val2017/000000000001.png"
    img = Image.open(syn / "COCOPanoptic/images/val2017/000000000001.jpg")
    lab = Image.open(syn / "COCOPanoptic/semantic_relabeled133/val2017/000000000001.png")
    assert img.format == "JPEG" and img.mode == "RGB" and lab.format == "PNG" and lab.mode == "L"
    assert img.size == lab.size == (80, 60)
    tax = load_taxonomy(mseg_root)
    for ds, root in ((ADE, syn / "ADE20K/ADEChallengeData2016"), (COCO, syn / "COCOPanoptic")):
        n = len(tax.dataset_classes[ds])
        for line in (syn / "dataset_lists" / ds / "list" / "train.txt").read_text().splitlines():
            ids = np.unique(np.asarray(Image.open(root / line.split()[1])))
            assert ((ids < n) | (ids == 255)).all()  # raw labels are relabeled-taxonomy ids


def test_class_colours_distinct():
    assert len({class_colour(u) for u in range(194)}) == 194


def test_lists_root_resolution(syn, mseg_root, tmp_path):
    assert resolve_lists_root(syn, None, mseg_root) == syn / "dataset_lists"
    assert resolve_lists_root(tmp_path, None, mseg_root) == Path(mseg_root).resolve() / "mseg/dataset_lists"
    assert resolve_lists_root(syn, tmp_path, mseg_root) == tmp_path


def test_train_loader_end_to_end(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root)
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0, start=0)
    assert loader.samples_per_epoch_per_rank == 48 and loader.steps_per_epoch == 12
    assert samples_per_epoch_per_rank(cfg, 1) == 48 and samples_per_epoch_per_rank(cfg, 5) == 8
    out = batches(loader)
    assert len(out) == 12
    tax = load_taxonomy(mseg_root)
    allowed = set(tax.table(ADE)[:141].tolist()) | set(tax.table(COCO)[:155].tolist()) | {255}
    indices = []
    for b in out:
        assert b["image"].shape == (4, 3, 96, 96) and b["image"].dtype == torch.float32
        assert b["label"].shape == (4, 96, 96) and b["label"].dtype == torch.int64
        assert b["index"].dtype == torch.int64 and b["num_bad"].tolist() == [0, 0, 0, 0]
        assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
        assert set(b["label"].unique().tolist()) <= allowed
        indices += b["index"].tolist()
    assert sorted(indices) == list(range(48))


def test_labels_are_universal_ids_of_the_drawn_colour(syn, mseg_root):
    """Each labelled pixel's colour is its universal class's colour: remap really happened."""
    cfg = smoke_cfg(syn, mseg_root, "data.scale_range=[1.0,1.0]")
    ds = build_train_set(cfg)
    sample = ds[(3, 0)]
    x, y = sample["image"], sample["label"]
    rgb = ((x + 1) * 127.5).round().permute(1, 2, 0).numpy()
    palette = np.array([class_colour(u) for u in range(194)], dtype=np.float64)
    uids = [u for u in y.unique().tolist() if u != 255]
    assert len(uids) >= 2
    for uid in uids:
        median = np.median(rgb[(y == uid).numpy()], axis=0)  # robust to JPEG/bilinear edges
        assert int(np.argmin(np.abs(palette - median).sum(1))) == uid


def test_train_loader_resume_gives_exact_batches(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root)
    full = batches(build_train_loader(cfg, 1, 2, epoch=3, start=0))
    resumed = batches(build_train_loader(cfg, 1, 2, epoch=3, start=8))
    assert len(full) == 6 and len(resumed) == 4
    for a, b in zip(full[2:], resumed):
        for key in ("image", "label", "index", "num_bad"):
            assert torch.equal(a[key], b[key])
    assert epoch_position(cfg, 2, 7) == (1, 4)  # 7 micro-steps x 4 = 28 = 24 + 4


def test_loader_independent_of_num_workers(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root)
    a = batches(build_train_loader(cfg, 0, 1, epoch=1, start=4, num_workers=0))
    b = batches(build_train_loader(cfg, 0, 1, epoch=1, start=4, num_workers=2))
    assert len(a) == len(b) == 11
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in ("image", "label", "index", "num_bad"))


def test_train_ratios_in_loader(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root, "data.train_ratios=[1,3]")
    idx = torch.cat([b["index"] for b in batches(build_train_loader(cfg, 0, 1, 0, 0))])
    assert len(idx) == 48
    # data.train_datasets is [coco, ade]: global indices < 24 are COCO (ratio 1), the rest ADE (ratio 3)
    assert int((idx < NUM_TRAIN).sum()) == 12 and int((idx >= NUM_TRAIN).sum()) == 36


def test_val_loader_shards_cover_without_duplicates(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root, "eval.batch_size=2")
    got = []
    for rank in range(4):
        loader = build_val_loader(cfg, ADE, rank, 4, max_samples=None)
        for b in loader:
            assert b["image"].shape[1:] == (3, 96, 96)
            got += b["index"].tolist()
    assert sorted(got) == list(range(NUM_VAL))
    limited = [i for b in build_val_loader(cfg, COCO, 0, 1, max_samples=4) for i in b["index"].tolist()]
    assert limited == [0, 1, 2, 3]
    again = [i for b in build_val_loader(cfg, COCO, 0, 1, max_samples=4) for i in b["index"].tolist()]
    assert again == limited


# ------------------------------------------------------------------------------------ bad samples


@pytest.fixture()
def broken(syn, tmp_path):
    """A copy of the synthetic ADE20K with four kinds of bad samples (list indices 0..3)."""
    root = tmp_path / "data"
    shutil.copytree(syn / "ADE20K", root / "ADE20K")
    shutil.copytree(syn / "dataset_lists", root / "dataset_lists")
    base = root / "ADE20K/ADEChallengeData2016"
    (base / "images/training/ADE_train_00000001.jpg").unlink()  # missing file
    (base / "images/training/ADE_train_00000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # undecodable
    Image.new("L", (40, 30), 1).save(base / "annotations_semseg150_relabeled/training/ADE_train_00000003.png")
    Image.new("L", (80, 60), 200).save(base / "annotations_semseg150_relabeled/training/ADE_train_00000004.png")
    return root


REASONS = ["missing image file", "cannot decode image", "size mismatch: image 80x60, label 40x30",
           "label values [200] outside the ade20k-150-relabeled taxonomy"]


def _ade_set(root, mseg_root, policy, cfg_overrides=()):
    cfg = smoke_cfg(root, mseg_root, f"data.on_bad_sample={policy}", "data.train_datasets=[ade20k-150-relabeled]",
                    *cfg_overrides)
    return cfg, build_train_set(cfg)


def test_bad_sample_error_policy(broken, mseg_root):
    _, ds = _ade_set(broken, mseg_root, "error")
    names = ["images/training/ADE_train_00000001.jpg", "images/training/ADE_train_00000002.jpg",
             "annotations_semseg150_relabeled/training/ADE_train_00000003.png",
             "annotations_semseg150_relabeled/training/ADE_train_00000004.png"]
    for i, (name, reason) in enumerate(zip(names, REASONS)):
        with pytest.raises(DataError) as exc:
            ds[(i, 0)]
        msg = str(exc.value)
        assert "\n" not in msg and name in msg and reason in msg, msg
    assert ds[(4, 0)]["num_bad"] == 0


def test_bad_sample_skip_policy(broken, mseg_root, caplog):
    _, ds = _ade_set(broken, mseg_root, "skip")
    with caplog.at_level(logging.WARNING, logger="lseg.data"):
        for i in range(4):
            a, b = ds[(i, 77)], ds[(i, 77)]
            assert a["num_bad"] >= 1 and a["index"] != i and 0 <= a["index"] < NUM_TRAIN
            assert a["index"] == b["index"] and torch.equal(a["image"], b["image"])  # deterministic
            assert a["image"].shape == (3, 96, 96)
    logged = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(logged) == 4  # each bad file once, though each was read twice
    for reason in REASONS:
        assert any(reason in m for m in logged)


def test_skip_policy_keeps_batch_size_and_counts(broken, mseg_root):
    cfg = smoke_cfg(broken, mseg_root, "data.train_datasets=[ade20k-150-relabeled]")
    out = batches(build_train_loader(cfg, 0, 1, epoch=0, start=0))
    assert len(out) == 6 and all(b["image"].shape[0] == 4 for b in out)
    total_bad = sum(int(b["num_bad"].sum()) for b in out)
    assert total_bad >= 4  # each of the 4 bad files is drawn once per epoch (replacements may be bad too)
    with pytest.raises(DataError, match="max_bad_fraction"):
        check_bad_fraction(total_bad, 24, cfg, min_samples=0)


def test_val_loader_blanks_bad_samples(broken, mseg_root, tmp_path):
    shutil.copy(broken / "dataset_lists" / ADE / "list" / "train.txt",
                broken / "dataset_lists" / ADE / "list" / "val.txt")  # the broken files, as a val split
    cfg = smoke_cfg(broken, mseg_root, "eval.batch_size=4")
    (b, *_rest) = batches(build_val_loader(cfg, ADE, 0, 1, max_samples=8))
    assert b["num_bad"].tolist() == [1, 1, 1, 1] and b["index"].tolist() == [0, 1, 2, 3]
    assert (b["label"] == 255).all() and b["image"].shape == (4, 3, 96, 96)


def test_check_bad_fraction():
    cfg = load_config(None, ["data.max_bad_fraction=0.01"])
    check_bad_fraction(0, 0, cfg)
    check_bad_fraction(5, 995, cfg)  # 0.5 %
    check_bad_fraction(3, 7, cfg)  # 30 % but only 10 read: below min_samples
    with pytest.raises(DataError) as exc:
        check_bad_fraction(20, 980, cfg)  # 2 %
    assert str(exc.value).startswith("20 of 1000 samples read were bad (2.00% > data.max_bad_fraction=0.01)")
    with pytest.raises(DataError):
        check_bad_fraction(5, 0, cfg)  # nothing good at all
    check_bad_fraction(20, 980, load_config(None, ["data.max_bad_fraction=0.05"]).data)


# ------------------------------------------------------------------------------------ start-up errors


def test_missing_data_root_names_the_path(mseg_root, tmp_path):
    cfg = smoke_cfg(tmp_path / "typo_root", mseg_root)
    with pytest.raises(DataError) as exc:
        build_train_loader(cfg, 0, 1, 0, 0)
    msg = str(exc.value)
    assert msg.startswith(f"data.root not found: {tmp_path / 'typo_root'}") and "\n" not in msg


def test_empty_or_missing_split_list_names_the_path(syn, mseg_root, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(syn / "COCOPanoptic", root / "COCOPanoptic")
    lists = root / "dataset_lists" / COCO / "list"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n")
    cfg = smoke_cfg(root, mseg_root, "data.train_datasets=[coco-panoptic-133-relabeled]")
    with pytest.raises(DataError, match=f"split list is empty: {lists / 'train.txt'}"):
        build_train_loader(cfg, 0, 1, 0, 0)
    with pytest.raises(DataError, match=f"split list not found: {lists / 'val.txt'}"):
        build_val_loader(cfg, COCO, 0, 1)
    with pytest.raises(DataError, match="dataset folder not found: .*ADEChallengeData2016"):
        build_train_loader(smoke_cfg(root, mseg_root, "data.train_datasets=[ade20k-150-relabeled]"), 0, 1, 0, 0)


def test_unknown_dataset_name(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root, "data.train_datasets=[ade20k-15O]")
    with pytest.raises(DataError, match="unknown dataset 'ade20k-15O' \\(did you mean 'ade20k-150'\\?\\): supported are"):
        build_train_loader(cfg, 0, 1, 0, 0)


def test_real_mseg_lists_parse(mseg_root, tmp_path):
    """Real ADE20K split lists from the snapshot: 20,210 train / 2,000 val pairs in MSeg's layout."""
    (tmp_path / "ADE20K/ADEChallengeData2016").mkdir(parents=True)
    lists = Path(mseg_root) / "mseg/dataset_lists"
    d = smoke_cfg(tmp_path, mseg_root, f"data.lists_root={lists}").data
    train, val = open_dataset(d, ADE, "train"), open_dataset(d, ADE, "val")
    assert len(train) == 20210 and len(val) == 2000
    assert train.paths(0) == (tmp_path / "ADE20K/ADEChallengeData2016/images/training/ADE_train_00000001.jpg",
                              tmp_path / "ADE20K/ADEChallengeData2016/annotations_semseg150_relabeled/training/"
                                         "ADE_train_00000001.png")
    # files are absent here: reading is a bad sample, not a crash
    s = SegmentationSet([val], EvalTransform(96), "skip", replace="blank")[(5, 0)]
    assert s["num_bad"] == 1 and (s["label"] == 255).all()


def test_benchmark_loader_reports_rates(syn, mseg_root):
    cfg = smoke_cfg(syn, mseg_root)
    res = benchmark_loader(cfg, num_workers=0, num_batches=3, warmup_batches=1, batch_size=4)
    assert res["num_images"] == 12 and res["num_workers"] == 0 and res["crop_size"] == 96
    assert res["images_per_s"] > 0 and res["images_per_s_per_worker"] == res["images_per_s"]


_SIGNALLED_LOADER = r"""
import sys
from lseg.config import load_config
from lseg.data import build_train_loader
from lseg.engine.preemption import PreemptionFlag

cfg = load_config(sys.argv[1], [f"data.root={sys.argv[2]}", "data.num_workers=2", "train.batch_size=4",
                                "data.crop_size=32", "data.base_size=36"])
flag = PreemptionFlag()
batches = 0
for epoch in range(6):
    it = iter(build_train_loader(cfg, 0, 1, epoch=epoch))
    print("workers started", flush=True)
    batches += sum(1 for _ in it)
print(f"batches {batches} stop {flag.stop_signal} requeue {flag.requeue_signal}", flush=True)
"""


def test_loader_workers_outlive_stop_signals_sent_as_they_start(syn):
    """Slurm signals every process of a job; a worker must not die of it, even one that is just
    starting (each epoch starts new workers). The signals reach the trainer's flag instead."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _SIGNALLED_LOADER, str(REPO / "configs/smoke.yaml"), str(syn)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for epoch, line in enumerate(proc.stdout):
            if line.startswith("workers started"):  # send from here: not the workers' parent
                os.killpg(proc.pid, signal.SIGTERM if epoch % 2 else signal.SIGUSR2)
            else:
                last = line.strip()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert last == f"batches {6 * (2 * NUM_TRAIN // 4)} stop SIGTERM requeue SIGUSR2", (last, stderr)
