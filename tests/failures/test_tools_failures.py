"""What each tool does with bad input: one line on stderr, exit 2, before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lseg.checkpoint_io import FORMAT, load_checkpoint, save_atomic

from helpers import REPO, SMOKE, ADE, load_tool, one_error_line, limit_file_size


def test_launcher_benchmark_and_weights_tools_output_not_writable(tools, files, capsys):
    """Before any work: submit.py's run dir, benchmark.py's --json-out, prepare_weights.py's cache dir."""
    out = files["unwritable"]
    rc = tools["submit"].main(["--config", str(SMOKE), "--output-dir", str(out), "--local", "--gpus-per-node", "0"])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: {out}")
    rc = load_tool("benchmark").main(["train-step", "--config", str(SMOKE), "--json-out", str(out / "b.jsonl")])
    assert rc == 2 and one_error_line(capsys) == f"error: {out}: Not a directory"
    rc = load_tool("prepare_weights").main(["--config", str(SMOKE), "--cache-dir", str(out)])
    assert rc == 2 and one_error_line(capsys).startswith(f"error: {out}")


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


def _argparse_error(capsys, main, argv) -> str:
    """A flag argparse refuses: exit 2, usage plus one error line last, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_eval_sweep_validates_every_flag(tools, files, synthetic_root, tmp_path, capsys):
    sweep = tools["eval_sweep"]
    base = ["--checkpoints", str(files["good"]), "--config", str(SMOKE), "--output-dir", str(tmp_path / "s"),
            f"data.root={synthetic_root}", "--datasets", ADE]
    for flags, needle in [(["--protocols", "official", "--scales", "-1"], "argument --scales: must be > 0, got -1"),
                          (["--scales", "0"], "argument --scales: must be > 0, got 0"),
                          (["--scales"], "argument --scales: expected at least one argument"),
                          (["--max-samples", "0"], "argument --max-samples: must be > 0, got 0"),
                          (["--stride", "0"], "argument --stride: must be > 0"),
                          (["--crop-size", "-5"], "argument --crop-size: must be > 0"),
                          (["--base-size", "x"], "argument --base-size: expected an integer, got 'x'"),
                          (["--window-batch", "0"], "argument --window-batch: must be > 0"),
                          (["--num-workers", "-1"], "argument --num-workers: must be >= 0"),
                          (["--last", "0"], "argument --last: must be > 0"),
                          (["--protocols", "multi"], "argument --protocols: invalid choice: 'multi'"),
                          (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
                          (["--device", "tpu"], "argument --device: invalid choice: 'tpu'")]:
        line = _argparse_error(capsys, sweep.main, [*base, *flags])
        assert line.startswith("tools/eval_sweep.py: error: ") and needle in line, line
    assert sweep.main([*base, "--stride", "97", "--protocols", "official", "--scales", "1"]) == 2
    assert one_error_line(capsys) == "error: protocol official: stride must be in (0, crop size 96], got 97"
    assert sweep.main([*base, "--crop-size", "32", "--stride", "40"]) == 2
    assert one_error_line(capsys) == "error: protocol single: stride must be in (0, crop size 32], got 40"
    assert sweep.main([*base, "--last", "2"]) == 2
    assert one_error_line(capsys) == "error: --last needs --run-dir"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000010.pt").write_bytes(files["good"].read_bytes())
    assert sweep.main(["--run-dir", str(run), "--last", "3", *base[2:]]) == 2
    line = one_error_line(capsys)
    assert "cannot select the last 3 checkpoint(s)" in line and "has 1 (steps 10)" in line
    assert sweep.main(["--run-dir", str(tmp_path / "empty"), *base[2:]]) == 2
    assert "no step checkpoints (step_*.pt) found" in one_error_line(capsys)
    line = _argparse_error(capsys, sweep.main, [*base, "--submit", "--nodes", "0"])
    assert "argument --nodes: must be > 0, got 0" in line
    assert sweep.main([*base, "--submit", "--dry-run", "--timeout", "5", "--signal-delay-s", "300"]) == 2
    assert one_error_line(capsys).startswith("error: --signal-delay-s 300 is not shorter than --timeout (5 min)")
    assert not (tmp_path / "s").exists()  # nothing written by a refused command


def test_predict_validates_every_flag(tools, files, tmp_path, capsys):
    pred = tools["predict"]
    base = ["--checkpoint", str(files["good"]), "--image", str(files["jpeg"]), "--labels", "a,b",
            "--output", str(tmp_path / "p")]
    for flags, needle in [(["--scales", "-1"], "argument --scales: must be > 0, got -1"),
                          (["--scales"], "argument --scales: expected at least one argument"),
                          (["--base-size", "0"], "argument --base-size: must be > 0"),
                          (["--crop-size", "0"], "argument --crop-size: must be > 0"),
                          (["--stride", "-3"], "argument --stride: must be > 0"),
                          (["--alpha", "x"], "argument --alpha: invalid float value: 'x'"),
                          (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
                          (["--device", "tpu"], "argument --device: invalid choice: 'tpu'")]:
        line = _argparse_error(capsys, pred.main, [*base, *flags])
        assert line.startswith("tools/predict.py: error: ") and needle in line, line
    for alpha in ("1.5", "-0.1", "nan"):
        assert pred.main([*base, "--alpha", alpha]) == 2
        assert one_error_line(capsys) == f"error: --alpha must be in [0, 1], got {float(alpha):g}"
    assert pred.main([*base, "--stride", "97"]) == 2
    assert one_error_line(capsys) == "error: protocol single: stride must be in (0, crop size 96], got 97"
    assert pred.main([*base, "data.root=/x"]) == 2
    assert one_error_line(capsys).startswith("error: predict.py takes no config overrides")
    assert pred.main([*base, "--labels-file", str(tmp_path / "l.txt")]) == 2
    assert one_error_line(capsys) == "error: give exactly one of --labels and --labels-file"
    assert not (tmp_path / "p").exists()


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


def test_disk_full_while_averaging_keeps_the_previous_output(files, tmp_path):
    out = tmp_path / "avg.pt"
    save_atomic({"format": FORMAT, "model": {"w": torch.zeros(3)}, "previous": True}, out)
    size = files["good"].stat().st_size
    proc = subprocess.run([sys.executable, str(REPO / "tools/average_checkpoints.py"), "--checkpoints",
                           str(files["good"]), "--output", str(out)], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size(size // 3))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: could not save {out}: File too large; the previous file is unchanged"]
    assert load_checkpoint(out)["previous"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt"]


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


def test_synthetic_layout_flags(tools, tmp_path, capsys):
    syn = tools["make_synthetic_mseg"]
    for argv, needle in [(["--layout", "coco"], "argument --layout: invalid choice: 'coco'"),
                         (["--layout", "foodseg103", "--datasets", "ade20k-150-relabeled"],
                          "--datasets: only with --layout mseg")]:
        with pytest.raises(SystemExit) as exc:
            syn.main(["--output", str(tmp_path / "s"), *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    assert syn.main(["--output", str(tmp_path / "f"), "--layout", "folder", "--num-train", "2", "--num-val", "1"]) == 0
    assert (tmp_path / "f" / "val.txt").read_text() == "val_00001\n"
