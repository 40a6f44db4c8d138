"""Issue 8: bad input, untrusted files and faults, tried against the real entry points.

Each user error must come out as one line naming what and where (exit 2), never a traceback and
never silent damage; files are only ever read as data; kill -9, a full disk and a dead DDP rank
must not lose more than the steps since the last checkpoint or leave anything hanging.
docs/reliability.md maps every case to its test. Fast cases call the CLIs' ``main`` in-process
(same code as the console command, without paying interpreter start-up per case); cases that need
a process of their own (rlimits, kill -9, DDP) are subprocesses, the long ones marked slow.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lseg.checkpoint_io import FORMAT, CheckpointError, load_checkpoint, save_atomic
from lseg.config import load_config, to_dict
from lseg.engine.checkpoint import CheckpointManager
from conftest import load_tool
from test_train import base_overrides, train_cmd

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
ADE = "ade20k-150-relabeled"
ADE_DIR = "ADE20K/ADEChallengeData2016"


@pytest.fixture(scope="module")
def tools():
    return {n: load_tool(n) for n in ("average_checkpoints", "eval_sweep", "predict", "convert_langseg",
                                      "make_synthetic_mseg", "submit")}


def one_error_line(capsys, prefix: str = "error: ") -> str:
    """The error line of a failed CLI call: exactly one, the last line of stderr, no traceback.

    (eval_sweep prints a progress line such as "3 cell(s): 0 done, 3 to run" before it works.)
    """
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_launcher_benchmark_and_weights_tools_output_not_writable(tools, files, capsys):
    """Before any work: submit.py's run dir, benchmark.py's --json-out, prepare_weights.py's cache dir."""
    out = files["unwritable"]
    rc = tools["submit"].main(["--config", str(SMOKE), "--output-dir", str(out), "--local", "--gpus-per-node", "0"])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: {out}")
    rc = load_tool("benchmark").main(["train-step", "--config", str(SMOKE), "--json-out", str(out / "b.jsonl")])
    assert rc == 2 and one_error_line(capsys) == f"error: {out}: Not a directory"
    rc = load_tool("prepare_weights").main(["--config", str(SMOKE), "--cache-dir", str(out)])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: {out}")


# ------------------------------------------------------------------------------------------ fixtures


class _Evil:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "model": {"w": _Evil(marker)}, "config": {}, "step": 9}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real tiny model checkpoint plus the kinds of bad checkpoint files users hand to tools."""
    from lseg.models import build_model

    d = tmp_path_factory.mktemp("ckpts")
    cfg = load_config(SMOKE, ["model.text.layers=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    good = d / "good.pt"
    save_atomic({"format": FORMAT, "model": model.state_dict(), "config": to_dict(cfg), "step": 1}, good)
    other_cfg = load_config(SMOKE, ["model.text.layers=1", "model.features=48"])
    other = d / "other_arch.pt"
    save_atomic({"format": FORMAT, "model": build_model(other_cfg.model).state_dict(), "config": to_dict(other_cfg),
                 "step": 1}, other)
    trunc = d / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpeg = d / "photo.jpg"
    Image.new("RGB", (40, 32), (200, 30, 30)).save(jpeg)
    not_ckpt = d / "not_a_checkpoint.pt"
    shutil.copy(jpeg, not_ckpt)
    plain = d / "plain_state_dict.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a torch file, but not an lseg-hpc checkpoint
    blocker = d / "regular_file"
    blocker.write_text("a file, so nothing can be created under it\n")
    return {"good": good, "other": other, "trunc": trunc, "not_ckpt": not_ckpt, "plain": plain, "jpeg": jpeg,
            "unwritable": blocker / "out", "dir": d}


def broken_copy(src: Path, dst: Path) -> Path:
    """A copy of the synthetic data root (ADE20K only is broken by the callers)."""
    shutil.copytree(src, dst)
    return dst


def ade_files(root: Path, kind: str) -> list[Path]:
    sub = "images/training" if kind == "image" else "annotations_semseg150_relabeled/training"
    return sorted((root / ADE_DIR / sub).iterdir())


# ------------------------------------------------------------------------------------------ lseg.train


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


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


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


def test_train_output_dir_not_writable(tmp_path, synthetic_root, capsys, files):
    out = files["unwritable"]
    rc, err = train_main(capsys, out, synthetic_root)
    assert_one_line(rc, err, f"error (rank 0): train.output_dir: cannot write to {out} (Not a directory)")


def _trainer(out: Path, data_root: Path, *overrides: str):
    from lseg.distributed import DistInfo
    from lseg.engine.trainer import Trainer

    cfg = load_config(SMOKE, [*base_overrides(data_root), f"train.output_dir={out}", *overrides])
    return Trainer(cfg, DistInfo())


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


# ------------------------------------------------------------------------------------------ tools: checkpoints


def test_tools_refuse_bad_checkpoint_files_in_one_line(tools, files, synthetic_root, tmp_path, capsys):
    avg, sweep, pred = tools["average_checkpoints"], tools["eval_sweep"], tools["predict"]
    cases = [("trunc", "truncated or corrupt checkpoint"), ("not_ckpt", "not a checkpoint file (starts with"),
             ("plain", "not an lseg-hpc checkpoint")]
    for key, msg in cases:
        path = files[key]
        if key != "plain":  # average_checkpoints reads any torch file; the model check is its own
            assert avg.main(["--checkpoints", str(path), str(files["good"]), "--output", str(tmp_path / "a.pt")]) == 2
            assert msg in one_error_line(capsys)
        assert pred.main(["--checkpoint", str(path), "--image", str(files["jpeg"]), "--labels", "a,b",
                          "--output", str(tmp_path / "p"), "--whole"]) == 2
        assert str(path) in one_error_line(capsys)
        assert sweep.main(["--checkpoints", str(path), "--config", str(SMOKE), "--output-dir", str(tmp_path / "s"),
                           f"data.root={synthetic_root}", "data.num_workers=0", "--max-samples", "1",
                           "--datasets", ADE, "--protocols", "whole"]) == 2
        line = one_error_line(capsys)
        assert str(path) in line and msg in line, line
    assert avg.main(["--checkpoints", str(files["plain"]), "--output", str(tmp_path / "a.pt")]) == 2
    assert "no 'model' state dict" in one_error_line(capsys)
    # a checkpoint of another architecture: predict / eval_sweep rebuild from its own config, so it
    # loads; mixing it with another network is refused by name
    assert avg.main(["--checkpoints", str(files["good"]), str(files["other"]), "--output", str(tmp_path / "a.pt")]) == 2
    assert "shape mismatch for 'image." in one_error_line(capsys)


def test_pickle_that_would_run_code_is_refused_by_every_reader(tools, files, synthetic_root, tmp_path, capsys):
    from lseg.models import load_model

    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_model(evil)
    rc = tools["average_checkpoints"].main(["--checkpoints", str(evil), "--output", str(tmp_path / "a.pt")])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["predict"].main(["--checkpoint", str(evil), "--image", str(files["jpeg"]), "--labels", "a",
                                "--output", str(tmp_path / "p")])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["eval_sweep"].main(["--checkpoints", str(evil), "--output-dir", str(tmp_path / "s"),
                                   f"data.root={synthetic_root}"])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["eval_sweep"].main(["--checkpoints", str(evil), "--config", str(SMOKE), "--output-dir",
                                   str(tmp_path / "s2"), f"data.root={synthetic_root}", "data.num_workers=0",
                                   "--max-samples", "1", "--datasets", ADE, "--protocols", "whole"])
    assert rc == 2 and "refused to unpickle" in one_error_line(capsys)
    rc = tools["convert_langseg"].main([str(evil), str(tmp_path / "c.pt")])
    assert rc == 2 and "re-run with --trust-pickle if you trust this file" in one_error_line(capsys)
    assert not marker.exists()


def test_reliability_table_cites_only_tests_that_exist():
    """docs/reliability.md's proof column stays true: every cited test is defined in its file."""
    table = (REPO / "docs" / "reliability.md").read_text()
    cited = [(REPO / "tests" / ("test_reliability.py" if f == "R" else f), name)
             for f, name in re.findall(r"`(R|test_\w+\.py)::(test_\w+)`", table)]
    assert len(cited) > 40
    defined = {path: {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
               for path in {path for path, _ in cited}}
    missing = [f"{path.name}::{name}" for path, name in cited if name not in defined[path]]
    assert not missing, missing


def test_every_torch_load_is_weights_only_and_every_yaml_load_is_safe():
    """Source scan: torch.load only in lseg/checkpoint_io.py (the documented --trust-pickle opt-in)
    or with a literal weights_only=True; YAML only through yaml.safe_load."""
    sources = [p for d in ("lseg", "tools", "tests") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 30
    torch_loads, unsafe = [], []
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                literal_true = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if path != REPO / "lseg/checkpoint_io.py" and not literal_true:
                    unsafe.append(f"{where}: torch.load without weights_only=True")
                torch_loads.append(where)
            if owner == "yaml" and node.func.attr in ("load", "load_all", "unsafe_load", "full_load",
                                                       "unsafe_load_all", "full_load_all"):
                unsafe.append(f"{where}: yaml.{node.func.attr}")
            if owner == "pickle" and node.func.attr in ("load", "loads") and "tests" not in path.parts:
                unsafe.append(f"{where}: pickle.{node.func.attr}")
    assert not unsafe, unsafe
    assert any(w.startswith("lseg/checkpoint_io.py") for w in torch_loads)
    # the one opt-in: weights_only is only ever off when a caller passes trust_pickle=True
    text = (REPO / "lseg/checkpoint_io.py").read_text()
    assert "weights_only=not trust_pickle" in text and "trust_pickle: bool = False" in text
    callers = [p for p in sources if "trust_pickle=" in p.read_text() and p.name != "checkpoint_io.py"
               and "tests" not in p.parts]
    assert [p.name for p in callers] == ["convert_langseg.py"]


# ------------------------------------------------------------------------------------------ tools: other input


def test_tools_output_dir_not_writable(tools, files, synthetic_root, tmp_path, capsys):
    out = files["unwritable"]
    rc = tools["average_checkpoints"].main(["--checkpoints", str(files["good"]), "--output", str(out / "a.pt")])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: could not save {out / 'a.pt'}: Not a directory")
    rc = tools["predict"].main(["--checkpoint", str(files["good"]), "--image", str(files["jpeg"]), "--labels",
                                "a,b", "--output", str(out), "--whole"])
    assert rc == 2 and one_error_line(capsys) == f"error: {out}: Not a directory"
    rc = tools["eval_sweep"].main(["--checkpoints", str(files["good"]), "--config", str(SMOKE), "--output-dir",
                                   str(out), f"data.root={synthetic_root}", "data.num_workers=0", "--max-samples",
                                   "1", "--datasets", ADE, "--protocols", "whole"])
    assert rc == 2 and one_error_line(capsys) == f"error: {out}: Not a directory"
    rc = tools["make_synthetic_mseg"].main(["--output", str(out), "--num-train", "1", "--num-val", "1"])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: {out}")


def test_predict_bad_labels_and_images(tools, files, tmp_path, capsys):
    pred = tools["predict"]
    common = ["--checkpoint", str(files["good"]), "--output", str(tmp_path / "p"), "--whole"]
    img = ["--image", str(files["jpeg"])]
    assert pred.main([*common, *img, "--labels", " , ,"]) == 2
    assert one_error_line(capsys) == "error: no labels given"
    assert pred.main([*common, *img, "--labels", "dog," + "word " * 80]) == 2
    assert one_error_line(capsys).startswith("error: labels[1]: 'word word")
    empty = tmp_path / "labels.txt"
    empty.write_text("\n\n")
    assert pred.main([*common, *img, "--labels-file", str(empty)]) == 2
    assert one_error_line(capsys) == "error: no labels given"
    trunc = tmp_path / "half.jpg"
    trunc.write_bytes(files["jpeg"].read_bytes()[:300])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for bad in (trunc, corrupt, tmp_path / "missing.jpg"):
        assert pred.main([*common, "--image", str(bad), "--labels", "a,b"]) == 2
        assert str(bad) in one_error_line(capsys)
    assert not (tmp_path / "p").exists()  # nothing written for a failed call


def test_eval_sweep_bad_label_sets_and_config(tools, files, synthetic_root, tmp_path, capsys):
    sweep = tools["eval_sweep"]
    base = ["--checkpoints", str(files["good"]), "--config", str(SMOKE), "--output-dir", str(tmp_path / "s"),
            f"data.root={synthetic_root}", "--datasets", ADE]
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_set.yaml"
    evil.write_text(f"substitutions: !!python/object/apply:os.system ['touch {marker}']\n")
    assert sweep.main([*base, "--label-sets", str(evil)]) == 2
    assert f"malformed YAML in label set {evil}" in one_error_line(capsys)
    assert not marker.exists()
    long_set = tmp_path / "long.txt"
    long_set.write_text("\n".join(["x"] * 193 + ["word " * 80]) + "\n")
    assert sweep.main([*base, "data.num_workers=0", "--max-samples", "1", "--protocols", "whole",
                       "--label-sets", str(long_set)]) == 2
    assert "labels[193]:" in one_error_line(capsys)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data: [unclosed\n")
    assert sweep.main([*base[:2], "--config", str(bad_yaml), "--output-dir", str(tmp_path / "s")]) == 2
    assert f"malformed YAML in {bad_yaml}" in one_error_line(capsys)
    assert sweep.main([*base, "data.root=/nonexistent/mseg", "--protocols", "whole"]) == 2
    assert "data.root not found: /nonexistent/mseg" in one_error_line(capsys)


def test_convert_and_synthetic_bad_input(tools, files, tmp_path, capsys, monkeypatch):
    conv = tools["convert_langseg"]
    assert conv.main([str(files["trunc"]), str(tmp_path / "c.pt")]) == 2
    assert "truncated or corrupt checkpoint" in one_error_line(capsys)
    assert conv.main([str(files["not_ckpt"]), str(tmp_path / "c.pt")]) == 2
    assert "not a checkpoint file" in one_error_line(capsys)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: {features: [\n")
    assert conv.main([str(files["good"]), str(tmp_path / "c.pt"), "--config", str(bad_yaml)]) == 2
    assert f"malformed YAML in {bad_yaml}" in one_error_line(capsys)
    monkeypatch.setenv("MSEG_ROOT", str(tmp_path / "no_mseg"))
    assert tools["make_synthetic_mseg"].main(["--output", str(tmp_path / "syn")]) == 2
    assert "MSeg taxonomy files not found (MSEG_ROOT" in one_error_line(capsys)


def test_submit_validates_the_config_before_submitting(tools, tmp_path, capsys):
    submit = tools["submit"]
    run = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    assert submit.main(["--config", str(bad), "--output-dir", str(run), "--dry-run"]) == 2
    assert f"malformed YAML in {bad}" in one_error_line(capsys)
    marker = tmp_path / "pwned"
    bad.write_text(f"optim: !!python/object/apply:os.system ['touch {marker}']\n")
    assert submit.main(["--config", str(bad), "--output-dir", str(run), "--dry-run"]) == 2
    assert "could not determine a constructor" in one_error_line(capsys)
    assert submit.main(["--config", str(SMOKE), "--output-dir", str(run), "--dry-run", "dist.timeout_s=0"]) == 2
    assert one_error_line(capsys) == "error: dist.timeout_s: must be > 0, got 0"
    assert submit.main(["--config", str(SMOKE), "--output-dir", str(run), "--dry-run", "train.ema_decay=lots"]) == 2
    assert one_error_line(capsys) == "error: train.ema_decay: expected a number, got 'lots'"
    assert not marker.exists() and not run.exists()


# ------------------------------------------------------------------------------------------ disk full


def _limit_file_size(max_bytes: int):
    """preexec_fn: writes past ``max_bytes`` fail with EFBIG (SIGXFSZ ignored), as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_disk_full_while_averaging_keeps_the_previous_output(files, tmp_path):
    out = tmp_path / "avg.pt"
    save_atomic({"format": FORMAT, "model": {"w": torch.zeros(3)}, "previous": True}, out)
    size = files["good"].stat().st_size
    proc = subprocess.run([sys.executable, str(REPO / "tools/average_checkpoints.py"), "--checkpoints",
                           str(files["good"]), "--output", str(out)], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(size // 3))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: could not save {out}: File too large; the previous file is unchanged"]
    assert load_checkpoint(out)["previous"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt"]


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
                          text=True, timeout=600, preexec_fn=_limit_file_size(size // 2))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error (rank 0): could not save {ckpts / 'step_00000004.pt'}: File too large; newest checkpoint still "
        f"intact: {ckpts / 'step_00000002.pt'}"]
    assert "resumed from" in proc.stdout and "step 4/4" in proc.stdout  # it trained, then failed to save
    assert load_checkpoint(ckpts / "step_00000002.pt")["step"] == 2
    assert load_checkpoint(ckpts / "last.pt")["step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "index.json", "last.pt", "step_00000002.pt"]
    assert CheckpointManager(out).latest_valid()[1]["step"] == 2


# ------------------------------------------------------------------------------------------ kill -9


def _steps_logged(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\] step (\d+)/", text)]


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
            assert newest_step == 0 and not [s for s in _steps_logged(text) if s > 1], text[-2000:]
            continue
        step = int(found[1]["step"])
        assert step >= newest_step  # a kill never destroys a finished checkpoint's successor chain
        reached = max(_steps_logged(text), default=newest_step)
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


# ------------------------------------------------------------------------------------------ DDP failures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(out: Path, data_root: Path, timeout_s: int, extra_env: dict[str, str] | None = None):
    """Two trainer processes wired by hand (no torchrun: its agent would stop the survivors itself)."""
    port = _free_port()
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


def test_benchmark_rejects_a_bad_config_in_one_line(tmp_path, capsys):
    bench = load_tool("benchmark")
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    assert bench.main(["train-step", "--config", str(bad)]) == 2
    assert f"malformed YAML in {bad}" in one_error_line(capsys)
    assert bench.main(["train-step", "--config", str(SMOKE), "train.max_stpes=3"]) == 2
    assert one_error_line(capsys) == "error: unknown config key 'train.max_stpes' (did you mean 'train.max_steps'?)"
    assert not marker.exists()
