"""What `python -m lseg.train` does with bad input, bad files, full disks, kill -9 and failing ranks."""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from lseg.checkpoint_io import load_checkpoint
from lseg.config import load_config
from lseg.checkpoints.manager import CheckpointManager

from helpers import SMOKE, ADE, ADE_DIR, base_overrides, train_cmd, evil_checkpoint, broken_copy, ade_files, assert_one_line, limit_file_size, free_port, steps_logged


def train_main(capsys, out: Path, data_root: Path, *overrides: str, config: Path = SMOKE) -> tuple[int, str]:
    """``python -m lseg.train`` in-process; returns (exit code, stderr)."""
    from lseg.train import main

    argv = ["--config", str(config), "--output-dir", str(out), *base_overrides(data_root), *overrides]
    logger = logging.getLogger("lseg")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        rc = main(argv)
    finally:  # the trainer configures the "lseg" logger for a process; give it back as it was
        for h in logger.handlers:
            if h not in saved[0]:
                h.close()
        logger.handlers[:], logger.propagate, logger.level = saved
    return rc, capsys.readouterr().err


def _trainer(out: Path, data_root: Path, *overrides: str):
    from lseg.distributed import DistInfo
    from lseg.engine.trainer import Trainer

    cfg = load_config(SMOKE, [*base_overrides(data_root), f"train.output_dir={out}", *overrides])
    return Trainer(cfg, DistInfo())


def test_train_malformed_yaml_and_python_tag(tmp_path, synthetic_root, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 10\n  batch_size: [1, 2\n")
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, config=bad)
    assert_one_line(rc, err, f"error (rank ?): malformed YAML in {bad} line 4")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, config=evil)
    assert_one_line(rc, err, f"malformed YAML in {evil}", "could not determine a constructor for the tag")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_train_unknown_key_in_config_file(tmp_path, synthetic_root, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_stpes: 10\n")
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, config=f)
    assert_one_line(rc, err, "error (rank ?): unknown config key 'train.max_stpes' (did you mean 'train.max_steps'?)")


def test_train_missing_or_unreadable_data(tmp_path, synthetic_root, capsys):
    rc, err = train_main(capsys, tmp_path / "r1", tmp_path / "no_such_root")
    assert_one_line(rc, err, f"error (rank 0): data.root not found: {tmp_path / 'no_such_root'}")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, err = train_main(capsys, tmp_path / "r2", a_file)
    assert_one_line(rc, err, f"data.root is not a directory: {a_file}")
    rc, err = train_main(capsys, tmp_path / "r3", synthetic_root, "data.train_split=trian")
    assert_one_line(rc, err, "split list not found: ", "trian.txt")

    root = broken_copy(synthetic_root, tmp_path / "data")
    lst = root / "dataset_lists" / ADE / "list" / "train.txt"
    lst.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe binary junk")
    rc, err = train_main(capsys, tmp_path / "r4", root)
    assert_one_line(rc, err, f"split list {lst} is not UTF-8 text")
    lst.write_text("\n")
    rc, err = train_main(capsys, tmp_path / "r5", root)
    assert_one_line(rc, err, f"split list is empty: {lst}")


@pytest.mark.parametrize("damage, reason", [
    ("missing_image", "missing image file"),
    ("missing_label", "missing label file"),
    ("corrupt_jpeg", "cannot decode image"),
    ("truncated_jpeg", "cannot decode image: image file is truncated"),
    ("truncated_png", "cannot decode label"),
    ("label_out_of_taxonomy", "outside the ade20k-150-relabeled taxonomy (0..140, 255)"),
    ("size_mismatch", "size mismatch: image 80x64, label 40x30"),
])
def test_train_bad_sample_with_error_policy_names_file_and_policy(tmp_path, synthetic_root, capsys, damage, reason):
    """Every ADE20K training pair is damaged the same way, so the very first read fails."""
    root = broken_copy(synthetic_root, tmp_path / "data")
    for img, lab in zip(ade_files(root, "image"), ade_files(root, "label")):
        if damage == "missing_image":
            img.unlink()
        elif damage == "missing_label":
            lab.unlink()
        elif damage == "corrupt_jpeg":
            img.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG body")
        elif damage == "truncated_jpeg":
            img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
        elif damage == "truncated_png":
            lab.write_bytes(lab.read_bytes()[: lab.stat().st_size // 2])
        elif damage == "label_out_of_taxonomy":
            Image.new("L", Image.open(img).size, 200).save(lab)
        elif damage == "size_mismatch":
            Image.new("L", (40, 30), 1).save(lab)
    rc, err = train_main(capsys, tmp_path / "run", root, "data.on_bad_sample=error",
                         f"data.train_datasets=[{ADE}]", "train.max_steps=2")
    line = assert_one_line(rc, err, "error (rank 0): bad sample ", str(root / ADE_DIR), reason,
                           "(data.on_bad_sample=skip skips such samples)")
    assert re.search(r"ADE_train_\d+\.(jpg|png)", line)


@pytest.mark.slow
def test_train_skip_policy_logs_each_bad_file_once(tmp_path, synthetic_root, capsys):
    """Two epochs over a set with one truncated image: trained to the end, the file logged once."""
    root = broken_copy(synthetic_root, tmp_path / "data")
    bad = ade_files(root, "image")[0]
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "run"
    rc, err = train_main(capsys, out, root, f"data.train_datasets=[{ADE}]", f"data.val_datasets=[{ADE}]",
                         "train.max_steps=8", "train.ckpt_every=8", "eval.every=0", "data.max_bad_fraction=0.5")
    assert rc == 0, err
    log = (out / "log.txt").read_text()
    assert log.count(f"skipping bad sample {bad}: cannot decode image") == 1, log
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "train/bad_samples" in r][-1]["train/bad_samples"] >= 1


def test_train_skip_policy_stops_when_every_file_is_bad(tmp_path, synthetic_root, capsys):
    root = broken_copy(synthetic_root, tmp_path / "data")
    for img in ade_files(root, "image"):
        img.write_bytes(b"junk")
    rc, err = train_main(capsys, tmp_path / "run2", root, f"data.train_datasets=[{ADE}]", "train.max_steps=2")
    assert_one_line(rc, err, "error (rank 0): 64 bad samples in a row in ade20k-150-relabeled")


def test_train_unsupported_backbone_lists_the_supported_ones(tmp_path, synthetic_root, capsys):
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, "model.backbone=resnet50")
    assert_one_line(rc, err, "error (rank 0): model.backbone: 'resnet50' is not supported; supported: "
                    "vit_large_patch16_384 (official clip_vitl16_384), vit_base_patch32_384 (official clip_vitb32_384), "
                    "resnet101 (official clip_resnet101), vit_tiny_patch16_224")
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, "model.backbone=resnet101", "model.hooks=[1,2,3,4]")
    assert_one_line(rc, err, "error (rank 0): model.hooks: resnet101 has none (its four stages feed the decoder); "
                    "set model.hooks=null")
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, "model.backbone=vit_base_patch32_384",
                         "data.crop_size=48", "data.eval_size=64")
    assert_one_line(rc, err, "error (rank 0): data.crop_size: 48 is not a multiple of 32, the patch size of "
                    "vit_base_patch32_384")


def test_train_class_names_empty_or_too_long_for_the_tokenizer(tmp_path, synthetic_root, capsys):
    names = tmp_path / "names.yaml"
    names.write_text("pier_wharf: " + "very " * 80 + "long pier\n")
    rc, err = train_main(capsys, tmp_path / "r1", synthetic_root, f"data.class_names_file={names}")
    assert_one_line(rc, err, f"error (rank 0): data.class_names_file={names}: labels[",
                    "tokens, the text encoder takes at most")
    names.write_text("pier_wharf: '   '\n")
    rc, err = train_main(capsys, tmp_path / "r2", synthetic_root, f"data.class_names_file={names}")
    assert_one_line(rc, err, f"data.class_names_file {names}: empty name for 'pier_wharf'")
    marker = tmp_path / "pwned"
    names.write_text(f"pier_wharf: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, err = train_main(capsys, tmp_path / "r3", synthetic_root, f"data.class_names_file={names}")
    assert_one_line(rc, err, f"malformed YAML in data.class_names_file {names}")
    assert not marker.exists()


def test_train_holdout_class_not_in_the_label_space_suggests_the_closest(tmp_path, synthetic_root, capsys):
    rc, err = train_main(capsys, tmp_path / "run", synthetic_root, "data.holdout_classes=[sky, road_barier]")
    assert_one_line(rc, err, "error (rank 0): data.holdout_classes: 'road_barier' is not a class of the label space "
                             "'universal' (did you mean 'road barrier'?)")
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_train_output_dir_not_writable(tmp_path, synthetic_root, capsys, files):
    out = files["unwritable"]
    rc, err = train_main(capsys, out, synthetic_root)
    assert_one_line(rc, err, f"error (rank 0): train.output_dir: cannot write to {out} (Not a directory)")


def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path, synthetic_root, capsys, files):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    state = load_checkpoint(files["other"])
    shutil.copy(files["other"], out / "checkpoints" / "step_00000005.pt")
    assert state["model"]  # a real, loadable checkpoint, only of another network
    rc, err = train_main(capsys, out, synthetic_root, "train.max_steps=6")
    assert_one_line(rc, err, "error (rank 0): ", "step_00000005.pt does not fit this run's model",
                    "has shape", "use a new --output-dir, or train.resume=false")


def test_resume_never_runs_a_pickled_payload_and_skips_bad_files(tmp_path, synthetic_root, caplog, files):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    marker = tmp_path / "pwned"
    evil_checkpoint(ckpts / "step_00000009.pt", marker)
    shutil.copy(files["trunc"], ckpts / "step_00000008.pt")
    shutil.copy(files["not_ckpt"], ckpts / "step_00000007.pt")
    (ckpts / ".step_00000010.pt.abc123.tmp").write_bytes(b"half a save")  # a kill -9 mid-write
    trainer = _trainer(out, synthetic_root)
    logging.getLogger("lseg").addHandler(caplog.handler)
    try:
        trainer.resume()
    finally:
        logging.getLogger("lseg").removeHandler(caplog.handler)
    assert not marker.exists()
    assert trainer.step == 0  # nothing usable: a fresh start, not a crash
    text = caplog.text
    assert "step_00000009.pt: refused to unpickle objects that could run code" in text
    assert "step_00000008.pt: truncated or corrupt checkpoint" in text
    assert "step_00000007.pt" in text
    assert not list(ckpts.glob(".*.tmp"))


def test_init_from_bad_sources_stop_start_up_with_one_line(tmp_path, synthetic_root, capsys, files):
    from reference_lseg import make_reference, save_lightning

    official = save_lightning(make_reference(), tmp_path / "demo_e200.ckpt")
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    cases = [
        (files["other"], [], ["does not fit this run's model: key '", "has shape [48,", "but [32,",
                              "model.features=48 in the source, 32 here", "train.init_exclude"]),
        (official, [], [f"{official} is an official lang-seg checkpoint", "tools/convert_langseg.py"]),
        (files["plain"], [], ["is not an lseg-hpc checkpoint", "tools/convert_langseg.py"]),
        (evil, [], ["evil.pt: refused to unpickle objects that could run code", "--trust-pickle"]),
        (files["good"], ["train.init_ema=true"], ["train.init_ema=true but", "has no EMA weights"]),
        (files["good"], ["train.init_exclude=['(']"], ["error (rank ?): train.init_exclude[0]: '(' is not a valid regex"]),
    ]
    for i, (src, extra, needles) in enumerate(cases):
        rc, err = train_main(capsys, tmp_path / f"run{i}", synthetic_root, f"train.init_from={src}", *extra)
        assert_one_line(rc, err, *needles)
        assert not list((tmp_path / f"run{i}").glob("checkpoints/*.pt"))  # stopped before any training
    assert not marker.exists()


@pytest.mark.slow
def test_disk_full_while_training_reports_the_save_and_keeps_the_last_checkpoint(tmp_path, synthetic_root):
    out = tmp_path / "run"
    common = ["train.ckpt_every=2", "eval.every=0"]
    first = subprocess.run(train_cmd(out, synthetic_root, "train.max_steps=2", *common), capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    ckpts = out / "checkpoints"
    size = (ckpts / "step_00000002.pt").stat().st_size
    proc = subprocess.run(train_cmd(out, synthetic_root, "train.max_steps=4", *common), capture_output=True,
                          text=True, timeout=600, preexec_fn=limit_file_size(size // 2))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error (rank 0): could not save {ckpts / 'step_00000004.pt'}: File too large; newest checkpoint still "
        f"intact: {ckpts / 'step_00000002.pt'}"]
    assert "resumed from" in proc.stdout and "step 4/4" in proc.stdout  # it trained, then failed to save
    assert load_checkpoint(ckpts / "step_00000002.pt")["step"] == 2
    assert load_checkpoint(ckpts / "last.pt")["step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "index.json", "last.pt", "step_00000002.pt"]
    assert CheckpointManager(out).latest_valid()[1]["step"] == 2


@pytest.mark.slow
def test_kill9_at_random_points_never_leaves_an_unloadable_latest(tmp_path, synthetic_root):
    """20 kill -9 of the trainer (half of them while a checkpoint is being written) in one run dir.

    After each kill: the newest valid checkpoint loads, never goes backwards, last.pt (if any)
    loads, and the next start resumes exactly there, having lost at most ckpt_every steps.
    """
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    cmd = train_cmd(out, synthetic_root, "train.max_steps=100000", "train.ckpt_every=1", "train.keep_last=2",
                    "eval.every=0")
    rng = random.Random(8)
    newest_step, mid_save_kills, resumes_checked = 0, 0, 0
    deadline = time.time() + 1200
    for cycle in range(20):
        log = tmp_path / f"stdout_{cycle}.txt"
        leftovers = set(ckpts.glob(".step_*.tmp"))  # from the previous kill; removed by this start
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})  # every line on disk before a kill
        try:
            if cycle % 2:  # wait for a save in progress, then kill inside it
                t0 = time.time()
                while time.time() - t0 < 60 and not set(ckpts.glob(".step_*.tmp")) - leftovers:
                    assert proc.poll() is None, log.read_text()[-2000:]
                    time.sleep(0.005)
            else:
                time.sleep(rng.uniform(1.0, 12.0))
            assert proc.poll() is None, log.read_text()[-2000:]
            mid_save = bool(set(ckpts.glob(".step_*.tmp")) - leftovers)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            mid_save_kills += mid_save
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        resumed = re.search(r"resumed from \S+ at step (\d+)", text)
        if newest_step:
            # this start resumed from exactly what was the newest valid checkpoint after the last kill
            if resumed is not None:
                assert int(resumed.group(1)) == newest_step, text[-2000:]
                resumes_checked += 1
        found = CheckpointManager(out).latest_valid()
        if found is None:
            assert newest_step == 0 and not [s for s in steps_logged(text) if s > 1], text[-2000:]
            continue
        step = int(found[1]["step"])
        assert step >= newest_step  # a kill never destroys a finished checkpoint's successor chain
        reached = max(steps_logged(text), default=newest_step)
        assert reached - step <= 1, (reached, step)  # lost at most the steps since the last checkpoint
        newest_step = step
        if (ckpts / "last.pt").exists():
            assert int(load_checkpoint(ckpts / "last.pt")["step"]) <= step
        assert time.time() < deadline, "kill/resume cycles took too long"
    assert mid_save_kills >= 5, mid_save_kills
    assert resumes_checked >= 8, resumes_checked
    assert newest_step > 0
    # a final start resumes at the newest step and clears every temp file the kills left behind
    final = subprocess.run(cmd[:-4] + ["train.max_steps=" + str(newest_step + 1), "train.ckpt_every=1",
                                       "train.keep_last=2", "eval.every=0"],
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"at step {newest_step} " in final.stdout
    assert not list(ckpts.glob(".*.tmp"))


def _start_ranks(out: Path, data_root: Path, timeout_s: int, extra_env: dict[str, str] | None = None):
    """Two trainer processes wired by hand (no torchrun: its agent would stop the survivors itself)."""
    port = free_port()
    cmd = train_cmd(out, data_root, "train.max_steps=200", "train.ckpt_every=1000", "eval.every=0",
                    "train.batch_size=1", f"dist.timeout_s={timeout_s}", "dist.backend=gloo")
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               # DDP on CPU warns about grad strides once per run; it is unrelated to what is tested
               "PYTHONWARNINGS": "ignore::UserWarning", **(extra_env or {})}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_for_log(path: Path, needle: str, procs, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and needle in path.read_text():
            return
        for p in procs:
            assert p.poll() is None, p.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path}")


@pytest.mark.slow
def test_ddp_dead_rank_stops_the_others_within_the_timeout(tmp_path, synthetic_root):
    timeout_s = 30
    out = tmp_path / "run"
    rank0, rank1 = _start_ranks(out, synthetic_root, timeout_s)
    try:
        _wait_for_log(out / "log.txt", "] step 2/", [rank0, rank1])
        os.kill(rank1.pid, signal.SIGKILL)
        t0 = time.time()
        _, err = rank0.communicate(timeout=timeout_s + 60)
        elapsed = time.time() - t0
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
    assert rank0.returncode == 1 and elapsed < timeout_s + 30, (rank0.returncode, elapsed, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("rank 0: stopping because another rank failed ("), lines[0]


@pytest.mark.slow
def test_ddp_rank_that_raises_shows_one_traceback_and_the_other_one_line(tmp_path, synthetic_root):
    out = tmp_path / "run"
    procs = _start_ranks(out, synthetic_root, 60, {"LSEG_FAULT_INJECT": "raise:rank=1:step=3"})
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (out0, err0), (out1, err1) = results
    assert [p.returncode for p in procs] == [1, 1], (err0, err1)
    assert err1.count("Traceback") == 1 and err1.startswith("rank 1 failed:\nTraceback"), err1
    assert "InjectedFault: LSEG_FAULT_INJECT: injected failure on rank 1 at step 3" in err1
    lines0 = [ln for ln in err0.splitlines() if ln.strip()]
    assert len(lines0) == 1 and "Traceback" not in err0, err0
    assert lines0[0].startswith("rank 0: stopping because another rank failed ("), lines0[0]
    assert "step 2/200" in out0 and "step 3/200" not in out0


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    from lseg.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("layouts")
    for layout in ("ade20k-150", "foodseg103", "folder"):
        make_synthetic(out, layout, 4, 2, size=(48, 64), seed=4, num_classes=6)
    return out


def _damage(root: Path, damage: str) -> tuple[str, Path]:
    """Break one thing in a copy of the layouts; returns (dataset, the file (or the folder of the
    damaged masks, read in sampler order) the message must name)."""
    food, ade = root / "FoodSeg103", root / "ADEChallengeData2016"
    if damage == "rgb_mask":
        for mask in (food / "Images/ann_dir/train").iterdir():
            Image.open(mask).convert("RGB").save(mask)
        return "foodseg103", food / "Images/ann_dir/train"
    if damage == "value_outside_classes":
        for mask in (ade / "annotations/training").iterdir():
            Image.new("L", Image.open(mask).size, 180).save(mask)
        return "ade20k-150", ade / "annotations/training"
    if damage == "image_without_mask":
        for mask in (ade / "annotations/training").iterdir():
            mask.unlink()
        return "ade20k-150", ade / "annotations/training"
    if damage in ("category_id_missing", "category_id_duplicate"):
        cat = food / "category_id.txt"
        if damage.endswith("missing"):
            cat.unlink()
        else:
            cat.write_text(cat.read_text().replace("2\tegg tart", "2\tcandy"))
        return "foodseg103", cat
    classes = root / "classes.txt"
    if damage == "classes_missing":
        classes.unlink()
    else:
        classes.write_text("sky\ngrass\nsky\n")
    return "folder", classes


@pytest.mark.parametrize("damage, needles", [
    ("rgb_mask", ["is a colour image (mode RGB), not an index PNG", "Image.fromarray(ids.astype(np.uint8))"]),
    ("value_outside_classes", ["bad sample", "label values [180] outside the ade20k-150 taxonomy (1..150, 0)"]),
    ("image_without_mask", ["bad sample", "missing label file", "(data.on_bad_sample=skip skips such samples)"]),
    ("category_id_missing", ["FoodSeg103 category_id.txt not found", "lines '<id><TAB><name>', 0 = background"]),
    ("category_id_duplicate", ["class name 'candy' appears twice (lines 2 and 3)"]),
    ("classes_missing", ["classes.txt not found", "one class name per line"]),
    ("classes_duplicate", ["class name 'sky' appears twice (lines 1 and 3)"]),
])
def test_train_bad_dataset_files_name_the_file_and_fix(tmp_path, layouts, capsys, damage, needles):
    root = broken_copy(layouts, tmp_path / "data")
    dataset, path = _damage(root, damage)
    rc, err = train_main(capsys, tmp_path / "run", root, f"data.label_space={dataset}", "train.max_steps=1",
                         f"data.train_datasets=[{dataset}]", f"data.val_datasets=[{dataset}]",
                         "data.on_bad_sample=error")
    assert_one_line(rc, err, "error (rank ", str(path), *needles)


def test_train_dataset_outside_the_label_space_names_the_fix(tmp_path, layouts, capsys):
    rc, err = train_main(capsys, tmp_path / "run", layouts, "data.train_datasets=[foodseg103]",
                         "data.val_datasets=[foodseg103]")
    assert_one_line(rc, err, "error (rank 0): data.train_datasets: foodseg103 has no mapping into "
                             "data.label_space=universal", "set data.label_space=foodseg103")
    assert not (tmp_path / "run" / "checkpoints").exists()
